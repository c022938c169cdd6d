"""``attend()``: the one entry point to every attention backend.

Every backend follows the same rules, so that switching backends never changes what a call
means:

* Query rows whose keys are all masked give zeros (and zero gradients), never NaN.
* A NaN propagates exactly to the output rows that see it: a NaN in query row i makes output
  row i NaN and no other (unless row i attends to no key: then it is zeros, as above); a NaN in
  a key or value makes NaN the rows that attend to it; a key or value masked out for a row never
  affects that row, whatever it holds (NaN, inf: padding may be garbage). See
  :mod:`attnlab.attention.nonfinite`.
* B = 0 (or Tq = 0, Dv = 0) gives an empty output; Tk = 0 gives zeros.
"""

from __future__ import annotations

from torch import Tensor

from attnlab.attention import dispatch, nonfinite
from attnlab.attention.bias import Bias
from attnlab.attention.call import make_call
from attnlab.attention.masks import Mask


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | Tensor | None = None,
    bias: Bias | Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "auto",
    return_weights: bool = False,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Scaled dot-product attention, softmax(q kᵀ · scale + bias, masked) v.

    Args:
        q: queries (B, H, Tq, D).
        k: keys (B, Hkv, Tk, D); H must be a multiple of Hkv (grouped-query attention,
            multi-query when Hkv = 1).
        v: values (B, Hkv, Tk, Dv).
        mask: a :mod:`attnlab.attention.masks` object (``causal()``, ``padding(lengths)``, ...,
            combined with ``&``/``|``) or a boolean tensor broadcastable to (B, H, Tq, Tk),
            True = attend. Position masks align to the bottom right when Tq < Tk.
        bias: an :mod:`attnlab.attention.bias` object (ALiBi, T5 buckets) or a float tensor
            broadcastable to (B, H, Tq, Tk), added to the scores.
        scale: score multiplier; default 1 / sqrt(D).
        dropout_p: dropout on the attention probabilities (pass 0 at evaluation time).
        backend: a registered backend name ("reference", "sdpa", "flex", "chunked") or "auto"
            for the fastest one that supports the call.
        return_weights: also return the attention weights (B, H, Tq, Tk); only the
            "reference" backend materialises them, so "auto" then picks it.
        softcap: soft-cap the scores, c · tanh(s / c), after scaling and before the bias and
            mask (Gemma 2, c = 50): logits stay within (-c, c).
        sinks: (H,) a learned logit per query head that joins every row's softmax with a zero
            value (gpt-oss's attention sinks; Xiao et al. 2024): rows may attend to "nothing",
            so the weights over the keys sum to less than one.

    Returns:
        The output (B, H, Tq, Dv), or ``(output, weights)`` with ``return_weights=True``.
        Query rows whose keys are all masked give zeros (and zero gradients), never NaN.
        A NaN reaches exactly the output rows that see it: a NaN in query row i makes row i
        NaN only, and a NaN in a key or value affects only the rows that attend to it (a
        masked key or value is ignored, whatever it holds).
    """
    call = make_call(
        q,
        k,
        v,
        mask=mask,
        bias=bias,
        scale=scale,
        dropout_p=dropout_p,
        return_weights=return_weights,
        softcap=softcap,
        sinks=sinks,
    )
    chosen = dispatch.select_backend(call, backend)
    if chosen.capabilities.collective:
        # contain() may re-run a call on this rank alone, leaving the other ranks waiting.
        out, weights = chosen.forward(call)
    else:
        out, weights = nonfinite.contain(call, chosen.forward)
    return (out, weights) if return_weights else out


def explain(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | Tensor | None = None,
    bias: Bias | Tensor | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> dict[str, list[str]]:
    """For the same arguments as :func:`attend`: each backend's reasons to refuse, in the order
    "auto" tries them (an empty list means the backend can run the call), then those of each
    attention kind that is not softmax over a backend (:mod:`attnlab.attention.kinds`:
    "linear", "performer", "linformer"), which honour fewer masks and no bias."""
    call = make_call(
        q,
        k,
        v,
        mask=mask,
        bias=bias,
        scale=scale,
        dropout_p=dropout_p,
        return_weights=return_weights,
        softcap=softcap,
        sinks=sinks,
    )
    from attnlab.attention import kinds  # kinds build on this module's backends

    reasons = dispatch.explain(call)
    for name, kind in kinds.KINDS.items():
        if not kind.scores:
            why = kind.mask_reasons(call.mask)
            for present, what in (
                (call.bias is not None, "score biases"),
                (call.softcap is not None, "score soft-capping"),
                (call.sinks is not None, "attention sinks"),
            ):
                if present:
                    why.append(f"{what} not supported (it has no scores)")
            reasons[name] = why
    return reasons
