"""What a model costs: parameters by module, FLOPs per token, KV-cache bytes per token.

FLOPs are counted from the modules themselves, so they hold for every family and every
configuration: a linear layer (or patch convolution) costs 2 x weights per token it processes,
and one attention layer costs 4 x H x Dh x T per query attending T keys (scores q kᵀ and the
weighted sum of values; masks and softmax not counted). For an encoder-decoder model "a token"
is one source token plus one target token. Training costs about three times the forward pass.

KV-cache bytes count the self-attention layers (keys and values of Hkv heads of Dh channels);
cross-attention caches hold the source once and are reported separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from attnlab.attention import kinds
from attnlab.attention.multihead import MultiHeadAttention


@dataclass
class ModelInfo:
    name: str  # class name and flavour
    params: dict[str, int]  # top-level module -> unique parameters (shared ones counted once)
    total: int  # unique parameters
    embedding: int  # parameters of embedding tables (token, position, segment)
    context: int  # T used for the attention FLOPs
    flops_linear: int  # forward FLOPs per token in projections, MLPs and heads
    flops_attention: int  # forward FLOPs per token in q kᵀ and weights x v at context T
    kv_bytes: dict[str, int]  # dtype -> self-attention KV-cache bytes per token
    cross_kv_bytes: dict[str, int] = field(default_factory=dict)  # per source token
    state_bytes: int = 0  # kernel attention's running state per sequence (fp32), any length

    @property
    def flops_forward(self) -> int:
        return self.flops_linear + self.flops_attention

    def format(self) -> str:
        """A human-readable report."""
        width = max(len(k) for k in self.params) + 2
        lines = [self.name, "", f"{'module':<{width}}{'parameters':>14}"]
        for name, n in self.params.items():
            lines.append(f"{name:<{width}}{n:>14,}")
        lines += [
            f"{'total':<{width}}{self.total:>14,}",
            f"{'non-embedding':<{width}}{self.total - self.embedding:>14,}",
            "",
            f"FLOPs per token (forward, context T={self.context}): {_si(self.flops_forward)}"
            f" = {_si(self.flops_linear)} linear + {_si(self.flops_attention)} attention",
            f"FLOPs per token (training, ~3x forward): {_si(3 * self.flops_forward)}",
        ]
        if self.kv_bytes:
            kv = ", ".join(f"{_bytes(n)} ({d})" for d, n in self.kv_bytes.items())
            lines.append(f"KV cache per token: {kv}")
        if self.state_bytes:
            lines.append(
                f"running state per sequence (kernel attention, whatever the length): "
                f"{_bytes(self.state_bytes)} (fp32)"
            )
        if self.cross_kv_bytes:
            kv = ", ".join(f"{_bytes(n)} ({d})" for d, n in self.cross_kv_bytes.items())
            lines.append(f"cross-attention cache per source token: {kv}")
        return "\n".join(lines)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def model_info(model: nn.Module, context: int | None = None) -> ModelInfo:
    """Cost summary of ``model``; attention FLOPs for a query attending ``context`` keys
    (default: the model's ``config.max_len``, or its number of patches plus one)."""
    config = getattr(model, "config", None)
    if context is None:
        context = getattr(config, "max_len", None) or getattr(config, "n_patches", 0) + 1
    if not isinstance(context, int) or context < 1:
        raise ValueError(f"context: expected a positive int, got {context!r}")

    params: dict[str, int] = {}
    seen: set[int] = set()
    for name, child in model.named_children():
        n = 0
        for p in child.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if isinstance(child, nn.ModuleList):
            name = f"{name} ({len(child)} x)"
        if n or name == "head":
            params[name if n else f"{name} (tied)"] = n
    for pname, p in model.named_parameters(recurse=False):
        params[pname] = p.numel()
        seen.add(id(p))
    total = sum(p.numel() for p in model.parameters())  # parameters() already deduplicates
    embedding = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, nn.Embedding) or type(m).__name__.endswith("PositionalEmbedding")
        for p in m.parameters(recurse=False)
    )

    flops_linear = 0
    flops_attention = 0
    kv_elems = 0
    cross_elems = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            flops_linear += 2 * m.weight.numel()
        elif isinstance(m, MultiHeadAttention):
            flops_attention += 4 * m.n_heads * m.head_dim * _attended(m, context)
    if getattr(model, "mlm_bias", None) is not None:  # BERT's masked-LM decoder is a matmul
        flops_linear += 2 * model.tok.weight.numel()
    state_bytes = 0
    for block in _blocks(model):
        attn = getattr(block, "attn", None)
        if _is_decoder(model, block) and attn is not None:
            if kinds.is_kernel(attn.kernel):  # S (F, Dv) and z (F,) per key/value head
                f = attn.kernel.feature_dim(attn.head_dim)
                state_bytes += 4 * attn.n_kv_heads * f * (attn.head_dim + 1)
            else:
                kv_elems += 2 * attn.n_kv_heads * attn.head_dim
        cross = getattr(block, "cross", None)
        if cross is not None:
            cross_elems += 2 * cross.n_kv_heads * cross.head_dim
    sizes = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}
    return ModelInfo(
        name=_describe(model) + _pruned(model),
        params=params,
        total=total,
        embedding=embedding,
        context=context,
        flops_linear=flops_linear,
        flops_attention=flops_attention,
        kv_bytes={d: kv_elems * s for d, s in sizes.items()} if kv_elems else {},
        cross_kv_bytes={d: cross_elems * s for d, s in sizes.items()} if cross_elems else {},
        state_bytes=state_bytes,
    )


def _attended(m: MultiHeadAttention, context: int) -> int:
    """What one query's q kᵀ and weights x v run over at ``context``: the keys (all, a local
    window's, Linformer's projected rows) or kernel attention's F features."""
    if kinds.is_kernel(m.kernel):
        return m.kernel.feature_dim(m.head_dim)
    if m.args.window is not None and "window" in m.kind.options:
        return min(context, m.args.window)
    return min(context, getattr(m.kernel, "rank", context))


def _blocks(model: nn.Module):
    for name in ("blocks", "decoder"):
        stack = getattr(model, name, None)
        if isinstance(stack, nn.ModuleList):
            yield from stack


def _is_decoder(model: nn.Module, block: nn.Module) -> bool:
    # Decoders cache keys/values: GPT's blocks, and the decoder stack of an encoder-decoder.
    decoder = getattr(model, "decoder", None)
    if isinstance(decoder, nn.ModuleList):
        return any(block is b for b in decoder)
    from attnlab.models.gpt import GPT

    return isinstance(model, GPT)


def _describe(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    from attnlab.models.gpt import GPT

    name = type(model).__name__
    if isinstance(model, GPT):
        flavour = "Llama" if config.position == "rope" and config.mlp == "swiglu" else "GPT-2"
        if config.position == "alibi":
            flavour = "ALiBi"
        heads = f"{config.n_head} heads" + (
            f", {config.n_kv_head} KV heads" if config.n_kv_head != config.n_head else ""
        )
        kind = f", {config.attention} attention" if config.attention != "softmax" else ""
        return f"GPT ({flavour} flavour): {config.n_layer} layers, {config.dim} wide, {heads}{kind}"
    if config is not None and hasattr(config, "n_layer"):
        return f"{name}: {config.n_layer} layers, {config.dim} wide, {config.n_head} heads"
    return name


def _pruned(model: nn.Module) -> str:
    """``"; 30 of 48 attention heads left by pruning"`` for a pruned model, else ``""``."""
    config = getattr(model, "config", None)
    if not getattr(config, "layer_heads", None):
        return ""
    modules = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    left = sum(m.n_heads for m in modules)
    return f"; {left} of {len(modules) * config.n_head} attention heads left by pruning"


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}FLOP"
    return f"{n:.0f} FLOP"


def _bytes(n: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
