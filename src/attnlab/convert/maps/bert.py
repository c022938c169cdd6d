"""BERT (transformers ``BertModel``, ``BertForMaskedLM``, ``BertForNextSentencePrediction``,
``BertForSequenceClassification``, ``BertForTokenClassification``; sentence-transformers'
MiniLM is a ``BertModel``) <-> attnlab ``BERT``. Linear layers map one to one; both directions
read the same tables below."""

from __future__ import annotations

from torch import Tensor

from attnlab.convert.maps.common import ENCODER_KEYS, encoder_fields, label_fields, variant_reasons
from attnlab.convert.maps.common import linear_keys as _linear
from attnlab.models.bert import BERT, BertConfig

NAME = "BERT"
MODEL = BERT

IGNORED_SUFFIXES = ("embeddings.position_ids",)
ARCH_OF = {  # attnlab head -> the transformers class that carries it
    "mlm": "BertForMaskedLM",
    "nsp": "BertForNextSentencePrediction",
    "pretrain": "BertForPreTraining",
    "classify": "BertForSequenceClassification",
    "token": "BertForTokenClassification",
    "none": "BertModel",
}
HEAD_OF = {arch: head for head, arch in ARCH_OF.items()}
# Checkpoints other than BertModel keep the encoder under ``bert.``; heads sit beside it.
ENCODER_PREFIX = "bert."

# attnlab config field -> config.json key (errors about a field name the file's key)
CONFIG_KEYS = {
    **ENCODER_KEYS,
    "vocab_size": "vocab_size",
    "max_len": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size",
    "num_labels": "num_labels",
    "labels": "id2label",
}
# config.json key of a layer count -> tensor names carrying the layer index
LAYERS = {"num_hidden_layers": r"(?:bert\.)?encoder\.layer\.(\d+)\."}


def _either(name: str) -> tuple[str, str]:
    return (ENCODER_PREFIX + name, name)


# (config.json key, tensor names, axis): sizes the tensors must show
SIZES = [
    ("vocab_size", _either("embeddings.word_embeddings.weight"), 0),
    ("hidden_size", _either("embeddings.word_embeddings.weight"), 1),
    ("max_position_embeddings", _either("embeddings.position_embeddings.weight"), 0),
    ("type_vocab_size", _either("embeddings.token_type_embeddings.weight"), 0),
    ("intermediate_size", _either("encoder.layer.0.intermediate.dense.weight"), 0),
]


# attnlab name -> Hugging Face name within the encoder
EMBEDDING_KEYS = {
    "tok.weight": "embeddings.word_embeddings.weight",
    "pos.weight": "embeddings.position_embeddings.weight",
    "seg.weight": "embeddings.token_type_embeddings.weight",
    **_linear("emb_norm", "embeddings.LayerNorm"),
}
# attnlab name within block i -> Hugging Face name within encoder.layer.i
LAYER_KEYS = {
    **_linear("attn.q_proj", "attention.self.query"),
    **_linear("attn.k_proj", "attention.self.key"),
    **_linear("attn.v_proj", "attention.self.value"),
    **_linear("attn.out_proj", "attention.output.dense"),
    **_linear("attn_norm", "attention.output.LayerNorm"),
    **_linear("mlp.up", "intermediate.dense"),
    **_linear("mlp.down", "output.dense"),
    **_linear("mlp_norm", "output.LayerNorm"),
}
POOLER_KEYS = _linear("pooler", "pooler.dense")
# attnlab name -> Hugging Face name, outside the encoder. The masked-LM decoder weight is tied to
# the word embeddings (its bias to cls.predictions.bias), so it is not stored separately.
MLM_KEYS = {
    **_linear("mlm_dense", "cls.predictions.transform.dense"),
    **_linear("mlm_norm", "cls.predictions.transform.LayerNorm"),
    "mlm_bias": "cls.predictions.bias",
}
HEAD_KEYS: dict[str, dict[str, str]] = {
    "mlm": MLM_KEYS,
    "nsp": _linear("classifier", "cls.seq_relationship"),
    "pretrain": {**MLM_KEYS, **_linear("classifier", "cls.seq_relationship")},
    "classify": _linear("classifier", "classifier"),
    "token": _linear("classifier", "classifier"),
    "none": {},
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
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(
            f"config.json: position_embedding_type {hf['position_embedding_type']!r} is not "
            "supported (expected 'absolute')"
        )
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("config.json: is_decoder/add_cross_attention BERT is not supported")
    head = HEAD_OF[arch]
    # Masked-LM and token-classification checkpoints may come without the pooler.
    has_pooler = (
        tensors is None
        or head in ("nsp", "pretrain", "classify")
        or any(k.endswith("pooler.dense.weight") for k in tensors)
    )
    labels = hf.get("id2label")
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
        num_labels=len(labels) if labels else hf.get("num_labels", 2),
        labels=_label_names(labels) if head in ("classify", "token") else None,
        pooler=has_pooler,
    )


def _label_names(id2label: dict | None) -> list[str] | None:
    """Class names by label index from ``id2label`` ({"0": "negative", ...}); None when absent
    or transformers' placeholders LABEL_0, LABEL_1, ... (the classes have no names)."""
    if not id2label:
        return None
    if not isinstance(id2label, dict):
        raise ValueError(f"config.json: id2label: expected an object, got {id2label!r:.80}")
    try:
        by_index = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError):
        raise ValueError(
            f"config.json: id2label: expected integer keys 0..{len(id2label) - 1}, got "
            f"{sorted(id2label)[:5]}"
        ) from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(
            f"config.json: id2label: expected keys 0..{len(by_index) - 1}, got {sorted(by_index)}"
        )
    names = [by_index[i] for i in range(len(by_index))]
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ValueError(f"config.json: id2label: expected distinct names, got {names}")
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def supports(c: BertConfig) -> list[str]:
    """Why ``c`` cannot be written as BERT (empty when it can)."""
    bad = variant_reasons(c, "BERT", "learned")
    if c.head not in ARCH_OF:
        bad.append(f"head={c.head!r} (BERT heads: {', '.join(ARCH_OF)})")
    return bad


def config_to_hf(c: BertConfig) -> dict:
    """``config.json`` contents for the transformers class of ``c.head``."""
    hf = {
        "architectures": [ARCH_OF[c.head]],
        "model_type": "bert",
        "vocab_size": c.vocab_size,
        **encoder_fields(c),
        "max_position_embeddings": c.max_len,
        "type_vocab_size": c.type_vocab_size,
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    if c.head in ("classify", "token") and c.labels is not None:  # names, by label index
        hf["id2label"] = dict(enumerate(c.labels))
        hf["label2id"] = {name: i for i, name in enumerate(c.labels)}
    elif c.head in ("classify", "token"):
        hf.update(label_fields(c.num_labels))
    return hf


def _keys(c: BertConfig) -> tuple[dict[str, str], dict[str, str]]:
    """attnlab name -> Hugging Face name, for the encoder (names without ``bert.``) and for
    the head."""
    keys = dict(EMBEDDING_KEYS)
    for i in range(c.n_layer):
        keys.update({f"blocks.{i}.{o}": f"encoder.layer.{i}.{t}" for o, t in LAYER_KEYS.items()})
    if c.pooler:
        keys.update(POOLER_KEYS)
    return keys, HEAD_KEYS[c.head]


def to_attnlab(sd: dict[str, Tensor], c: BertConfig) -> dict[str, Tensor]:
    """Hugging Face state dict (``bert.`` prefix optional) -> attnlab state dict."""
    sd = {k.removeprefix(ENCODER_PREFIX): v for k, v in sd.items()}
    encoder, head = _keys(c)
    out = {ours: sd.pop(theirs) for ours, theirs in (encoder | head).items()}
    if c.head in ("mlm", "pretrain"):  # copies of the tied decoder
        for key in ("decoder.weight", "decoder.bias"):
            sd.pop(f"cls.predictions.{key}", None)
    out.update(sd)  # leftovers are reported as unexpected by the loader
    return out


def from_attnlab(sd: dict[str, Tensor], c: BertConfig) -> dict[str, Tensor]:
    """attnlab state dict -> Hugging Face state dict of ``ARCH_OF[c.head]``."""
    encoder, head = _keys(c)
    prefix = "" if c.head == "none" else ENCODER_PREFIX
    out = {prefix + theirs: sd[ours] for ours, theirs in encoder.items()}
    out.update({theirs: sd[ours] for ours, theirs in head.items()})
    return out
