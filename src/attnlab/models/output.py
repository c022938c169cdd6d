"""What every model returns, and the loop over blocks that every family shares.

One output object for all families, so code written for one reads the same for another:
``model(inputs, attention_mask, **family_inputs)`` gives ``.logits``, plus ``.hidden_states`` /
``.attentions`` when asked for and ``.loss`` when labels are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import masks


@dataclass
class ModelOutput:
    """Fields (B batch, T tokens, C width, H heads, S attended positions):

    logits: (B, T, V) for language models, (B, L) for sequence classifiers.
    hidden_states: with ``output_hidden_states``: the input of every block and the final
        output, n_layer + 1 tensors (B, T, C).
    attentions: with ``output_attentions``: each block's self-attention weights (B, H, T, S).
    cross_attentions: encoder-decoder only: each decoder block's weights over the source.
    encoder_attentions: encoder-decoder only: each encoder block's self-attention weights.
    nsp_logits: BERT pre-training only: next-sentence logits (B, 2).
    loss: when labels were given.
    """

    logits: Tensor
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    loss: Tensor | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    encoder_attentions: tuple[Tensor, ...] | None = None
    nsp_logits: Tensor | None = None


@dataclass
class StackOutput:
    """The result of :func:`run_blocks`: final activations and what was collected on the way."""

    x: Tensor
    hidden_states: list[Tensor] | None
    attentions: tuple[Tensor, ...] | None
    cross_attentions: tuple[Tensor, ...] | None


def run_blocks(
    blocks: nn.ModuleList,
    x: Tensor,
    *,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    caches=None,
    cross_caches=None,
    **kwargs,
) -> StackOutput:
    """Run ``x`` through every block, passing block i its caches and ``kwargs`` (masks,
    positions, context); collect block inputs and attention weights when asked.

    The weights are read through each attention module's ``pattern`` hook point, recomputed
    from the call's queries and keys: the configured backend runs as it would without them."""
    hidden: list[Tensor] = []
    weights: list[Tensor] = []
    cross: list[Tensor] = []
    handles = []
    if output_attentions:
        for block in blocks:
            handles.append(_collect(block.attn, weights))
            if block.cross is not None:
                handles.append(_collect(block.cross, cross))
    try:
        for i, block in enumerate(blocks):
            if output_hidden_states:
                hidden.append(x)
            if caches is not None:
                kwargs["cache"] = caches[i]
            if cross_caches is not None:
                kwargs["cross_cache"] = cross_caches[i]
            x = block(x, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return StackOutput(
        x,
        hidden if output_hidden_states else None,
        tuple(weights) if output_attentions else None,
        tuple(cross) if output_attentions and cross else None,
    )


def _collect(attn: nn.Module, into: list[Tensor]):
    return attn.hook_pattern.add_source(lambda source, _: into.append(source.weights()), "pattern")


def check_input_ids(input_ids: Tensor) -> None:
    """ValueError unless ``input_ids`` holds integer token ids of shape (B, T)."""
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(
            f"input_ids: expected integer ids (B, T), got dtype {input_ids.dtype} and shape "
            f"{tuple(input_ids.shape)}"
        )


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every attention layer of ``model`` with ``backend`` (a registered name or "auto");
    the config's ``backend`` field follows. Returns the model."""
    from attnlab.attention.backends import get_backend
    from attnlab.attention.multihead import MultiHeadAttention

    if backend != "auto":
        get_backend(backend)  # ValueError listing the known names
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.backend = backend
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "backend"):
        config.backend = backend
    return model


def key_padding_mask(attention_mask: Tensor | None, b: int, t: int):
    """An attention mask (B, T) of 1 = real token as a key-padding mask over (B, H, Tq, T)."""
    if attention_mask is None:
        return None
    if attention_mask.shape != (b, t):
        raise ValueError(
            f"attention_mask: expected shape {(b, t)}, got {tuple(attention_mask.shape)}"
        )
    return masks.from_tensor(attention_mask.bool()[:, None, None, :])


def mean_pool(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Mean of ``hidden`` (B, T, C) over real tokens (mask 1) -> (B, C)."""
    if attention_mask is None:
        return hidden.mean(1)
    w = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of logits (..., L) against labels (...), ignoring -100."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels: expected shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}"
        )
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
