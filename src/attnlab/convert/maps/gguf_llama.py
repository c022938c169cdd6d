"""llama.cpp GGUF, architecture ``llama`` (Llama, SmolLM, Mistral-style dense models) -> attnlab
``GPT`` in its Llama flavour.

llama.cpp's converter permutes the rows of the query and key projections so that its RoPE kernel
can rotate adjacent channel pairs (2j, 2j + 1), the paper's interleaved layout. attnlab rotates
channel j with j + D/2 ("rotate half", like Hugging Face), so :func:`unpermute_rope_rows` undoes
that permutation head by head; transformers' GGUF loader does the same.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.convert.state import in_file_terms
from attnlab.models.gpt import GPT, GPTConfig

MODEL = GPT

ARCHITECTURE = "llama"

# attnlab name -> GGUF name, whole model
TOP_KEYS = {
    "tok.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "head.weight": "output.weight",  # absent when the head is tied to the embedding
}

# attnlab name within block i -> GGUF name within ``blk.{i}``
LAYER_KEYS = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.out_proj.weight": "attn_output.weight",
    "mlp_norm.weight": "ffn_norm.weight",
    "mlp.gate.weight": "ffn_gate.weight",
    "mlp.up.weight": "ffn_up.weight",
    "mlp.down.weight": "ffn_down.weight",
}

# GPTConfig field -> metadata key (after ``llama.``); all required
CONFIG_KEYS = {
    "n_layer": "block_count",
    "dim": "embedding_length",
    "hidden": "feed_forward_length",
    "n_head": "attention.head_count",
}
# GPTConfig field -> full metadata key, for errors
FIELDS = {
    **{field: f"{ARCHITECTURE}.{key}" for field, key in CONFIG_KEYS.items()},
    "max_len": f"{ARCHITECTURE}.context_length",
    "n_kv_head": f"{ARCHITECTURE}.attention.head_count_kv",
    "norm_eps": f"{ARCHITECTURE}.attention.layer_norm_rms_epsilon",
    "rope_base": f"{ARCHITECTURE}.rope.freq_base",
}
# metadata key of a layer count -> tensor names carrying the layer index
LAYERS = {f"{ARCHITECTURE}.block_count": r"blk\.(\d+)\."}
# (metadata key, tensor names, axis in torch order): sizes the tensors must show
SIZES = [
    (f"{ARCHITECTURE}.embedding_length", ("token_embd.weight",), 1),
    (f"{ARCHITECTURE}.feed_forward_length", ("blk.0.ffn_up.weight",), 0),
]


def config_from_gguf(meta: dict, tensors: dict[str, Tensor], source: str) -> GPTConfig:
    """``GPTConfig`` from the ``llama.*`` metadata; the vocabulary size comes from the token list
    or, failing that, from the embedding; the head is tied when ``output.weight`` is absent."""
    prefix = f"{ARCHITECTURE}."

    def get(key: str, default=None):
        value = meta.get(prefix + key, default)
        if value is None:
            raise ValueError(f"{source}: expected metadata key {prefix + key!r}, found none")
        return value

    def integer(key: str, default=None) -> int:
        value = get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{source}: metadata key {prefix + key!r}: expected a positive int, "
                f"got {value!r:.80}"
            )
        return value

    def number(key: str, default: float) -> float:
        value = get(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(
                f"{source}: metadata key {prefix + key!r}: expected a number, got {value!r:.80}"
            )
        return float(value)

    fields = {name: integer(key) for name, key in CONFIG_KEYS.items()}
    n_head = fields["n_head"]
    head_dim = fields["dim"] // n_head
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if prefix + key in meta and int(meta[prefix + key]) != head_dim:
            raise ValueError(
                f"{source}: {prefix + key} = {meta[prefix + key]} is not supported yet "
                f"(expected embedding_length / head_count = {head_dim})"
            )
    if meta.get(prefix + "expert_count", 0):
        raise ValueError(f"{source}: mixture-of-experts Llama models are not supported yet")
    scaling = meta.get(prefix + "rope.scaling.type", "none")
    if scaling != "none" or "rope_freqs.weight" in tensors:
        raise ValueError(f"{source}: RoPE scaling ({scaling}) is not supported yet")
    if "tokenizer.ggml.tokens" in meta:
        vocab = len(meta["tokenizer.ggml.tokens"])
    elif prefix + "vocab_size" in meta:
        vocab = integer("vocab_size")
    elif TOP_KEYS["tok.weight"] in tensors:
        vocab = tensors[TOP_KEYS["tok.weight"]].shape[0]
    else:
        raise ValueError(f"{source}: expected a token list or token_embd.weight, found neither")
    try:
        return GPTConfig(
            vocab_size=vocab,
            max_len=integer("context_length", 2048),
            n_kv_head=integer("attention.head_count_kv", n_head),
            norm="rmsnorm",
            norm_eps=number("attention.layer_norm_rms_epsilon", 1e-5),
            mlp="swiglu",
            position="rope",
            rope_base=number("rope.freq_base", 10000.0),
            bias=False,
            tie_embeddings=TOP_KEYS["head.weight"] not in tensors,
            **fields,
        )
    except ValueError as exc:  # in the file's terms: metadata keys, not GPTConfig fields
        if str(exc).startswith(source):
            raise
        raise ValueError(f"{source}: {in_file_terms(str(exc), FIELDS, meta)}") from None


def unpermute_rope_rows(w: Tensor, n_head: int) -> Tensor:
    """Undo llama.cpp's interleaving of q/k projection rows: (n_head * D, C) -> same shape, rows of
    each head reordered from pairs (2j, 2j + 1) to halves (j, j + D/2)."""
    rows, *rest = w.shape
    d = rows // n_head
    # (H, D/2, 2, ...) -> (H, 2, D/2, ...): the inverse of llama.cpp's reshape(H, 2, D/2).swap(1, 2)
    return w.reshape(n_head, d // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def to_attnlab(sd: dict[str, Tensor], c: GPTConfig) -> dict[str, Tensor]:
    """GGUF tensors (dequantized, numpy/torch dimension order) -> attnlab state dict.
    Raises KeyError with the GGUF name of a missing tensor; leftovers are returned unchanged so
    the loader reports them as unexpected."""
    out = {}
    for ours, theirs in TOP_KEYS.items():
        if ours == "head.weight" and c.tie_embeddings:
            continue
        out[ours] = sd.pop(theirs)
    if c.tie_embeddings:
        out["head.weight"] = out["tok.weight"]
    for i in range(c.n_layer):
        for ours, theirs in LAYER_KEYS.items():
            out[f"blocks.{i}.{ours}"] = sd.pop(f"blk.{i}.{theirs}")
        for name, heads in (("q_proj", c.n_head), ("k_proj", c.n_kv_head)):
            key = f"blocks.{i}.attn.{name}.weight"
            if out[key].shape[0] == heads * c.head_dim:  # else the loader reports the shape
                out[key] = unpermute_rope_rows(out[key], heads)
    out.update(sd)
    return out
