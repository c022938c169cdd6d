"""BERT (transformers ``BertModel``, ``BertForMaskedLM``, ``BertForNextSentencePrediction``,
``BertForSequenceClassification``, ``BertForTokenClassification``; sentence-transformers'
MiniLM is a ``BertModel``) <-> attnlab ``BERT``. Linear layers map one to one."""

from __future__ import annotations

from torch import Tensor

from attnlab.models.bert import BERT, BertConfig

MODEL = BERT

IGNORED_SUFFIXES = ("embeddings.position_ids",)
HEAD_OF = {
    "BertForMaskedLM": "mlm",
    "BertForPreTraining": "mlm",
    "BertForNextSentencePrediction": "nsp",
    "BertForSequenceClassification": "classify",
    "BertForTokenClassification": "token",
    "BertModel": "none",
}
LAYER_KEYS = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.out_proj": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "mlp.up": "intermediate.dense",
    "mlp.down": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
TOP_KEYS = {
    "tok": "embeddings.word_embeddings",
    "pos": "embeddings.position_embeddings",
    "seg": "embeddings.token_type_embeddings",
    "emb_norm": "embeddings.LayerNorm",
}


def config_from_hf(hf: dict, tensors: dict[str, Tensor] | None = None) -> BertConfig:
    arch = (hf.get("architectures") or ["BertModel"])[0]
    if arch not in HEAD_OF:
        raise ValueError(
            f"config.json: BERT architecture {arch!r} is not supported "
            f"(expected one of {', '.join(HEAD_OF)})"
        )
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: hidden_act {hf['hidden_act']!r} is not supported")
    head = HEAD_OF[arch]
    has_pooler = tensors is None or any(k.endswith("pooler.dense.weight") for k in tensors)
    return BertConfig(
        vocab_size=hf["vocab_size"],
        max_len=hf["max_position_embeddings"],
        type_vocab_size=hf.get("type_vocab_size", 2),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        dim=hf["hidden_size"],
        hidden=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        head=head,
        num_labels=len(hf.get("id2label") or {0: 0, 1: 1}),
        pooler=has_pooler,
    )


def to_attnlab(sd: dict[str, Tensor], c: BertConfig) -> dict[str, Tensor]:
    """Hugging Face state dict (``bert.`` prefix optional) -> attnlab state dict."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}

    def move(ours: str, theirs: str, bias: bool = True) -> None:
        out[ours + ".weight"] = sd.pop(theirs + ".weight")
        if bias:
            out[ours + ".bias"] = sd.pop(theirs + ".bias")

    for ours, theirs in TOP_KEYS.items():
        move(ours, theirs, bias=ours == "emb_norm")
    for i in range(c.n_layer):
        for ours, theirs in LAYER_KEYS.items():
            move(f"blocks.{i}.{ours}", f"encoder.layer.{i}.{theirs}")
    if c.pooler:
        move("pooler", "pooler.dense")
    if c.head == "mlm":
        move("mlm_dense", "cls.predictions.transform.dense")
        move("mlm_norm", "cls.predictions.transform.LayerNorm")
        out["mlm_bias"] = sd.pop("cls.predictions.bias")
        # The decoder is tied to the word embeddings; checkpoints may carry copies of both.
        sd.pop("cls.predictions.decoder.weight", None)
        sd.pop("cls.predictions.decoder.bias", None)
    elif c.head == "nsp":
        move("classifier", "cls.seq_relationship")
    elif c.head in ("classify", "token"):
        move("classifier", "classifier")
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out
