"""Kernelised (linear) attention: Katharopoulos et al. 2020 and Performer FAVOR+.

Shapes:
    B    batch
    H    query heads
    Hkv  key/value heads (H is a multiple of Hkv; G = H // Hkv queries share one key/value head)
    G    query heads per key/value head
    Tq   query length, Tk key length (T when they are equal)
    D    query/key head dim, Dv value head dim
    F    feature dim of the feature map phi (F = D for elu + 1, F = m for FAVOR+)
    m    number of random features (FAVOR+)
    C    chunk size of the causal prefix sums

Softmax attention weights query i against key j by exp(q_i·k_j / sqrt(D)). Kernelised attention
replaces that by phi(q_i)·phi(k_j) for a non-negative feature map phi. Then

    out_i = sum_j phi(q_i)·phi(k_j) v_j / sum_j phi(q_i)·phi(k_j)
          = phi(q_i)ᵀ S / phi(q_i)ᵀ z,   S = sum_j phi(k_j) v_jᵀ (F, Dv),   z = sum_j phi(k_j) (F,)

and associativity turns the (Tq, Tk) weight matrix into an (F, Dv) state: O(T) instead of O(T²)
(Katharopoulos et al. 2020, "Transformers are RNNs", arXiv:2006.16236, eq. 4-6). Causal attention
keeps the same form with S and z summed over j <= i: a prefix sum, i.e. an RNN (ibid. §3.4).

Two feature maps:
  * elu(x) + 1 (Katharopoulos et al. §3.2). Exact for its own kernel, but that kernel is not
    softmax: this is a different attention, not an approximation of softmax attention.
  * FAVOR+ positive orthogonal random features (Choromanski et al. 2021, "Rethinking Attention
    with Performers", arXiv:2009.14794). E[phi(q)·phi(k)] = exp(q·k / sqrt(D)): an unbiased
    estimate of softmax attention's numerator and denominator (their ratio is consistent, not
    unbiased), exact only as m -> infinity.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.attention import masks
from attnlab.attention.call import AttentionCall, accumulation_dtype, make_call
from attnlab.attention.masks import Mask
from attnlab.attention.weights import PatternSource

__all__ = [
    "Features",
    "KernelAttention",
    "LinearAttention",
    "LinearState",
    "PerformerAttention",
    "elu_feature_map",
    "favor_features",
    "linear_attention",
    "linear_attention_explicit",
    "orthogonal_gaussian",
]

FeatureMap = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Linear attention on features
# --------------------------------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """phi(x) = elu(x) + 1 > 0 (Katharopoulos et al. 2020 §3.2). Elementwise, so F = D."""
    return F.elu(x) + 1


def _apply_feature_map(feature_map: FeatureMap, x: Tensor, name: str) -> Tensor:
    phi = feature_map(x)
    if not isinstance(phi, Tensor) or phi.shape[:-1] != x.shape[:-1]:
        got = tuple(phi.shape) if isinstance(phi, Tensor) else type(phi).__name__
        raise ValueError(
            f"feature_map must map {name} of shape {tuple(x.shape)} to (..., F) keeping the "
            f"leading dims {tuple(x.shape[:-1])}; got {got}"
        )
    return phi


def _check_features(phi_q: Tensor, phi_k: Tensor) -> None:
    if phi_q.shape[-1] != phi_k.shape[-1]:
        raise ValueError(
            f"feature_map must give queries and keys the same feature dim F: "
            f"got F={phi_q.shape[-1]} for q and F={phi_k.shape[-1]} for k"
        )


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")


class LinearState(NamedTuple):
    """The running sums of causal linear attention over the keys seen so far: its whole memory
    of the past, O(F·Dv) per head whatever the length (a recurrent network's state;
    Katharopoulos et al. §3.4).

    Kernels whose key features are stabilised (FAVOR+, see :class:`Features`) sum them divided
    by exp(c); ``c`` is the largest key scale summed so far, -inf before any key. None: the
    sums are of unscaled features (c = 0)."""

    S: Tensor  # (B, Hkv, F, Dv): sum_j phi(k_j) v_jᵀ
    z: Tensor  # (B, Hkv, F): sum_j phi(k_j)
    c: Tensor | None = None  # (B, Hkv): log of the factor S and z are divided by


class Features(NamedTuple):
    """A kernel's features for one call.

    Exponential features (FAVOR+) overflow or underflow unless divided by a constant. Any
    constant shared by all keys of one head cancels between numerator and denominator, but not
    against eps, and a running sum may later meet larger keys. So a kernel that rescales its key
    features says by how much: each key's own scale (the log of its largest unscaled feature)
    and the constant it divided by; :func:`_align` then puts every key a query sees, this
    call's and a carried state's, on the scale of the largest of them (see
    :class:`PerformerAttention`).
    """

    q: Tensor  # (B, H, Tq, F)
    k: Tensor  # (B, Hkv, Tk, F); zero at keys that are not valid
    key_scale: Tensor | None = None  # (B, Hkv, Tk) detached, -inf at invalid keys; None: unscaled
    divided_by: Tensor | None = None  # (B, Hkv): log of the factor k was divided by


def check_inputs(
    q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None
) -> tuple[AttentionCall, bool, Tensor]:
    """The checks of :func:`attnlab.attention.attend` (same errors), then ``mask`` as (causal,
    valid keys (B, Tk) bool); ValueError when the mask is of another form."""
    call = make_call(q, k, v, mask=mask, bias=None, scale=None, dropout_p=0.0, return_weights=False)
    causal, valid = masks.causal_and_keys(call.mask, call.batch, call.tk, call.device)
    if valid is None:
        valid = torch.ones(call.batch, call.tk, dtype=torch.bool, device=call.device)
    return call, causal, valid


def _attend_features(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    eps: float,
    chunk_size: int,
    state: LinearState | None = None,
) -> tuple[Tensor, LinearState | None]:
    """Linear attention given features; the O(T) path.

    phi_q (B, Hkv, G, Tq, F), phi_k (B, Hkv, Tk, F) and v (B, Hkv, Tk, Dv), padded keys already
    zero in both -> (B, Hkv, G, Tq, Dv) in the accumulation dtype, and for causal calls the
    state after the last key. Causal queries are the last Tq of the Tk positions (bottom-right
    alignment, as every mask): the first Tk - Tq keys are summed into the starting state, which
    is ``state`` (the keys before this call) or zeros.
    """
    if not causal or (state is None and 0 in (phi_q.shape[3], phi_k.shape[2])):
        # Every key for every query. Also a causal call without keys or queries: its (empty or
        # zero) output then stays on the autograd graph as attend()'s does, and the state is
        # the sum over all its keys either way.
        S = torch.einsum("bhtf,bhte->bhfe", phi_k, v)  # (B, Hkv, F, Dv)
        z = phi_k.sum(dim=2)  # (B, Hkv, F)
        num = torch.einsum("bhgtf,bhfe->bhgte", phi_q, S)  # (B, Hkv, G, Tq, Dv)
        den = torch.einsum("bhgtf,bhf->bhgt", phi_q, z)  # (B, Hkv, G, Tq)
        return num / (den.unsqueeze(-1) + eps), LinearState(S, z) if causal else None

    # Causal: chunkwise prefix sums (the "chunked" form of Katharopoulos et al. §3.4 / the
    # Performer's prefix-sum mechanism). Within a chunk, an explicit (C, C) lower-triangular
    # product; across chunks, a carried state (S, z) of the keys in all earlier chunks. Live
    # memory is O(T·(F + Dv) + C²) per head plus one (F, Dv) state, never the O(T·F·Dv) tensor of
    # all prefix states that a plain cumsum would build.
    B, Hkv, G, Tq, Fdim = phi_q.shape
    Tk, Dv = phi_k.shape[2], v.shape[-1]
    if state is None:
        S, z = phi_q.new_zeros(B, Hkv, Fdim, Dv), phi_q.new_zeros(B, Hkv, Fdim)
    else:
        S, z = state.S.to(phi_q.dtype), state.z.to(phi_q.dtype)
    early = Tk - Tq  # keys before the first query's own position
    if early > 0:
        S = S + torch.einsum("bhjf,bhje->bhfe", phi_k[:, :, :early], v[:, :, :early])
        z = z + phi_k[:, :, :early].sum(dim=2)
        phi_k, v = phi_k[:, :, early:], v[:, :, early:]
    skipped = max(0, -early)  # more queries than keys: the first ones see no key at all
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=phi_q.device).tril()
    outs = [phi_q.new_zeros(B, Hkv, G, skipped, Dv)]
    for start in range(skipped, Tq, chunk_size):
        end = min(start + chunk_size, Tq)
        L = end - start
        qc = phi_q[:, :, :, start:end]  # (B, Hkv, G, L, F)
        kc = phi_k[:, :, start - skipped : end - skipped]  # (B, Hkv, L, F)
        vc = v[:, :, start - skipped : end - skipped]  # (B, Hkv, L, Dv)
        A = torch.einsum("bhgif,bhjf->bhgij", qc, kc)  # (B, Hkv, G, L, L)
        A = torch.where(tril[:L, :L], A, 0)  # j <= i inside the chunk
        num = torch.einsum("bhgij,bhje->bhgie", A, vc) + torch.einsum(
            "bhgif,bhfe->bhgie", qc, S
        )  # (B, Hkv, G, L, Dv)
        den = A.sum(dim=-1) + torch.einsum("bhgif,bhf->bhgi", qc, z)  # (B, Hkv, G, L)
        outs.append(num / (den.unsqueeze(-1) + eps))
        # Out of place, so autograd keeps each chunk's state (see linear_attention's cost note).
        S = S + torch.einsum("bhjf,bhje->bhfe", kc, vc)
        z = z + kc.sum(dim=2)
    return torch.cat(outs, dim=3), LinearState(S, z)


def _attend_features_explicit(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, *, causal: bool, eps: float
) -> Tensor:
    """The O(Tq·Tk) form: build the weights, mask them, normalise. Shapes as _attend_features."""
    # phi_k gets the G axis of phi_q: (B, Hkv, 1, Tk, F), so heads pair with their own keys.
    A = explicit_weights(phi_q, phi_k.unsqueeze(2), causal=causal, eps=eps)  # (B, Hkv, G, Tq, Tk)
    return torch.einsum("bhgij,bhje->bhgie", A, v)  # (B, Hkv, G, Tq, Dv)


def explicit_weights(phi_q: Tensor, phi_k: Tensor, *, causal: bool, eps: float) -> Tensor:
    """The (Tq, Tk) attention weights of linear attention: phi(q_i)·phi(k_j) over the row's sum
    (+ eps), zero for future keys when causal (bottom-right aligned) and for padded ones (their
    features must already be zero). phi_q (..., Tq, F), phi_k (..., Tk, F) with the same leading
    dims (or broadcastable ones, aligned from the right) -> (..., Tq, Tk)."""
    A = phi_q @ phi_k.transpose(-2, -1)  # (..., Tq, Tk)
    if causal:
        Tq, Tk = A.shape[-2:]
        A = torch.where(torch.ones(Tq, Tk, dtype=torch.bool, device=A.device).tril(Tk - Tq), A, 0)
    return A / (A.sum(dim=-1, keepdim=True) + eps)


def _features(
    fmap: FeatureMap, q: Tensor, k: Tensor, v: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """phi(q) (B, Hkv, G, Tq, F), phi(k) (B, Hkv, Tk, F) and v in the accumulation dtype, with
    padded keys and values exactly zero."""
    B, H, Tq, _ = q.shape
    Hkv = k.shape[1]
    keep = valid[:, None, :, None]  # (B, 1, Tk, 1)
    # Zero padded keys before the feature map and after it, and padded values: their content
    # (inf, nan) must contribute exactly 0, to values and to gradients.
    acc = accumulation_dtype(q.dtype)
    phi_q = _apply_feature_map(fmap, q, "q").to(acc)  # (B, H, Tq, F)
    phi_k = _apply_feature_map(fmap, torch.where(keep, k, 0), "k").to(acc)  # (B, Hkv, Tk, F)
    _check_features(phi_q, phi_k)
    phi_k = torch.where(keep, phi_k, 0)
    v = torch.where(keep, v, 0).to(acc)
    # GQA without copying k/v: query heads h = kv_head * G + g share kv_head.
    return phi_q.reshape(B, Hkv, H // Hkv, Tq, phi_q.shape[-1]), phi_k, v


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | Tensor | None = None,
    feature_map: FeatureMap | None = None,
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> Tensor:
    """Kernelised attention, out_i = phi(q_i)ᵀ S_i / (phi(q_i)ᵀ z_i + eps) (Katharopoulos 2020).

    S_i = sum_j phi(k_j) v_jᵀ and z_i = sum_j phi(k_j), over all valid keys j (no causal mask)
    or over valid j at or before query i's position (causal). ``eps`` in the denominator
    follows the paper's code.

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H must be a multiple of Hkv (grouped-query attention, done by
            reshaping q to (B, Hkv, G, Tq, D), never by copying k/v).
        v: (B, Hkv, Tk, Dv) values.
        mask: None, ``masks.causal()``, masks of which keys exist (``masks.padding(lengths)``, a
            boolean tensor (B or 1, 1, 1, Tk)), or those combined with ``&``: the masks a running
            sum can honour. Causal queries are the last Tq of the Tk positions, as in
            :func:`attnlab.attention.attend`. Padded keys have no effect at all (even inf/nan).
            Any other mask (a sliding window, a document mask) is refused with the reason.
        feature_map: callable x (..., D) -> phi(x) (..., F) with non-negative output, applied to
            q and k alike; default elu(x) + 1. Non-negativity is not checked (that would force a
            device sync); a map with negative values can make the denominator vanish.
        eps: added to the denominator.
        chunk_size: C, the block length of the causal prefix sums.

    Returns:
        (B, H, Tq, Dv), dtype of q. Half-precision inputs accumulate in fp32. Errors for bad
        q, k, v and masks are those of ``attend``.

    Cost (per batch element and head, F = feature dim):
        non-causal: O((Tq + Tk)·F·Dv) time, O((Tq + Tk)·(F + Dv) + F·Dv) memory.
        causal: O(T·F·Dv + T·C·(F + Dv)) time, O(T·(F + Dv) + C² + F·Dv) live memory. Under
        autograd each chunk's (F, Dv) state is saved for the backward pass, adding
        O((T / C)·F·Dv); a larger C trades that for the O(C²) intra-chunk block.

    Exactness: exact (up to rounding) for the kernel phi(q)·phi(k), i.e. it equals
    linear_attention_explicit. With the default map this is not softmax attention; it is the
    linear-transformer attention, a different model.
    """
    _check_chunk_size(chunk_size)
    call, causal, valid = check_inputs(q, k, v, mask)
    fmap = elu_feature_map if feature_map is None else feature_map
    phi_q, phi_k, v_acc = _features(fmap, call.q, call.k, call.v, valid)
    out, _ = _attend_features(
        phi_q, phi_k, v_acc, causal=causal, eps=eps, chunk_size=chunk_size
    )  # (B, Hkv, G, Tq, Dv)
    Dv = call.v.shape[-1]
    return out.reshape(call.batch, call.heads, call.tq, Dv).to(q.dtype)  # -> (B, H, Tq, Dv)


def linear_attention_explicit(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | Tensor | None = None,
    feature_map: FeatureMap | None = None,
    eps: float = 1e-6,
) -> Tensor:
    """Reference O(Tq·Tk) form of :func:`linear_attention` (same arguments but ``chunk_size``,
    same result).

    Builds the (Tq, Tk) matrix A_ij = phi(q_i)·phi(k_j), zeroes padded (and, if causal, future)
    keys, and returns A v / (rowsum(A) + eps). Meant as a test oracle.

    Cost: O(Tq·Tk·(F + Dv)) time and O(Tq·Tk) memory per batch element and head.
    """
    call, causal, valid = check_inputs(q, k, v, mask)
    fmap = elu_feature_map if feature_map is None else feature_map
    phi_q, phi_k, v_acc = _features(fmap, call.q, call.k, call.v, valid)
    out = _attend_features_explicit(phi_q, phi_k, v_acc, causal=causal, eps=eps)
    return out.reshape(call.batch, call.heads, call.tq, call.v.shape[-1]).to(q.dtype)


# --------------------------------------------------------------------------------------------
# Performer FAVOR+
# --------------------------------------------------------------------------------------------


def orthogonal_gaussian(
    n_features: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(n_features, dim) random projection with block-orthogonal rows (Performer §2.4, ORF).

    Rows come in blocks of ``dim``: each block is the orthonormal Q of the QR decomposition of a
    (dim, dim) Gaussian matrix (the last block keeps only the rows it needs). Each row is then
    rescaled by the norm of an independent dim-dimensional Gaussian vector (chi distributed with
    dim degrees of freedom), so every row has exactly the marginal law of a N(0, I_dim) row: the
    FAVOR+ estimate stays unbiased while orthogonality within a block lowers its variance.

    Cost: O(ceil(m / D)·D³) time, O(m·D) memory. Drawn in float64 on the generator's device,
    then moved to ``device``/``dtype`` (default dtype: torch.get_default_dtype()).
    """
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features must be a positive int; got {n_features!r}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int; got {dim!r}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    kw = {"generator": generator, "device": draw_device, "dtype": torch.float64}
    n_blocks = math.ceil(n_features / dim)
    gauss = torch.randn(n_blocks, dim, dim, **kw)  # (n_blocks, D, D)
    Q, R = torch.linalg.qr(gauss)  # batched; Q (n_blocks, D, D)
    # Fix QR's sign ambiguity so Q is Haar distributed (Mezzadri 2007): columns times sign(R_ii).
    Q = Q * torch.sgn(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)
    rows = Q.transpose(-2, -1).reshape(n_blocks * dim, dim)[:n_features]  # (m, D) unit rows
    norms = torch.randn(n_features, dim, **kw).norm(dim=-1, keepdim=True)  # (m, 1), chi_D
    out = rows * norms
    return out.to(device=device or draw_device, dtype=dtype or torch.get_default_dtype())


def favor_features(
    x: Tensor,
    projection: Tensor,
    *,
    is_query: bool = True,
    valid: Tensor | None = None,
) -> Tensor:
    """FAVOR+ positive random features (Performer eq. 5 with h(x) = exp(-|x|²/2), f = exp).

    phi(x) = exp(w·x' - |x'|²/2 - c) / sqrt(m) with x' = x·D^(-1/4) (the scaling is done here, so
    pass raw queries/keys) and w the rows of ``projection``. Without c,
    E_w[phi(q)·phi(k)] = exp(q'·k') = exp(q·k / sqrt(D)): the softmax kernel.

    The stabiliser c keeps exp from overflowing/underflowing and is detached: it is a constant
    that cancels between numerator and denominator, so it changes no value and no gradient.
      * queries (``is_query=True``): c = max over the m features of the row, per query. It
        multiplies both sums of that query's output by the same factor.
      * keys (``is_query=False``): c = one max over all (valid) keys and features, per leading
        index (per batch element and head), as in the Performer code. It scales every key of one
        attention problem alike. A per-key max would not cancel. (Causal attention and its
        running state need more than one constant: :class:`PerformerAttention` handles that.)
    We take the max of the whole exponent w·x' - |x'|²/2, not of w·x' alone as the Performer code
    does: for large-norm inputs |x'|²/2 dominates and the paper's choice underflows every feature
    to 0, while ours keeps the largest feature at exactly 1/sqrt(m), so features are non-negative,
    finite, and never all zero (for queries: in every row).

    Args:
        x: (..., T, D).
        projection: (m, D), e.g. from :func:`orthogonal_gaussian`.
        is_query: choose the stabiliser, see above.
        valid: keys only; bool broadcastable to x.shape[:-1]; invalid (padding) positions are left
            out of the stabiliser and get features 0.

    Returns:
        (..., T, m), in the dtype of x promoted with projection's.

    Cost: O(T·m·D) time, O(T·m) memory.
    """
    expo = _favor_exponent(x, projection)  # (..., T, m)
    if not is_query:
        return _favor_keys(expo, valid)[0]
    stab = expo.detach().amax(dim=-1, keepdim=True)  # (..., T, 1)
    return torch.exp(expo - stab) * projection.shape[0] ** -0.5


def _favor_exponent(x: Tensor, projection: Tensor) -> Tensor:
    """w·x' - |x'|²/2 (..., T, m), x' = x·D^(-1/4), in x's dtype promoted with projection's."""
    if x.dim() < 2:
        raise ValueError(f"x must be (..., T, D) with at least 2 dims; got shape {tuple(x.shape)}")
    if projection.dim() != 2 or projection.shape[1] != x.shape[-1]:
        raise ValueError(
            f"projection must be (m, D) with D = x.shape[-1] = {x.shape[-1]}; "
            f"got shape {tuple(projection.shape)}"
        )
    dtype = torch.promote_types(x.dtype, projection.dtype)
    x = x.to(dtype) * x.shape[-1] ** -0.25  # x' (..., T, D)
    logits = x @ projection.to(device=x.device, dtype=dtype).T  # (..., T, m): w·x'
    return logits - 0.5 * (x * x).sum(dim=-1, keepdim=True)


def _favor_keys(expo: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Key features from their exponents (..., T, m), divided by exp(c) with c the largest
    exponent of a valid key: phi (..., T, m) (zero at invalid keys), each key's scale (its
    largest exponent, detached; -inf at invalid keys) (..., T) and c (...)."""
    if valid is not None:
        # -inf, not 0: invalid keys then add nothing to the maximum, and exp gives them value 0
        # and gradient 0 whatever they hold.
        expo = torch.where(valid.unsqueeze(-1), expo, -torch.inf)
    scale = expo.detach().amax(dim=-1)  # (..., T)
    none = scale.new_full(scale.shape[:-1], -torch.inf)
    stab = scale.amax(dim=-1) if scale.shape[-1] else none  # (...)
    # No valid key at all: any constant will do (every feature is exp(-inf) = 0).
    stab = torch.where(torch.isfinite(stab), stab, 0)
    return torch.exp(expo - stab[..., None, None]) * expo.shape[-1] ** -0.5, scale, stab


def _align(
    f: Features, causal: bool, state: LinearState | None
) -> tuple[Tensor, Tensor, LinearState | None, Tensor | None]:
    """Put a call's features and a carried state on one scale: phi(q), phi(k), the state and
    its new c (see :class:`Features`; all as given for kernels that do not rescale).

    Keys, this call's and the state's, are divided by exp(c), c the largest key scale among
    them. A causal query sees only the keys up to its position, so its row of phi(q) is
    multiplied by exp(c - r), r the largest scale among those keys: its products are then those
    of keys divided by exp(r), whatever keys come later. That is what decoding computes when
    the query is the newest token, so a causal call gives the same result whether it is run at
    once, in chunks or token by token (up to features that underflow, see
    :class:`PerformerAttention`), and eps compares with the largest key a query sees, causal
    or not. The factors are constants (detached): they change no gradient.
    """
    if f.key_scale is None or f.divided_by is None:
        return f.q, f.k, state, None if state is None else state.c
    scale = f.key_scale  # (B, Hkv, Tk)
    B, Hkv, Tk = scale.shape
    none = scale.new_full((B, Hkv), -torch.inf)
    if state is None:
        old = none
    else:
        old = torch.zeros_like(none) if state.c is None else state.c.to(scale.dtype)
    own = scale.amax(dim=-1) if Tk else none  # (B, Hkv): this call's largest key scale
    c = torch.maximum(old, own)
    base = torch.where(torch.isfinite(c), c, 0)  # no key at all: every sum is 0, any c will do
    # exp(own - c) <= 1; a call without valid keys has zero features (and a finite divisor).
    factor = torch.where(torch.isfinite(own), torch.exp(f.divided_by - base), 0)  # (B, Hkv)
    phi_k = f.k * factor[..., None, None].to(f.k.dtype)
    if state is not None:
        kept = torch.exp(old - base)  # (B, Hkv) <= 1; 0 for a state that summed no key
        state = LinearState(
            state.S * kept[..., None, None].to(state.S.dtype),
            state.z * kept[..., None].to(state.z.dtype),
            c,
        )
    phi_q = f.q
    if causal:
        Tq = f.q.shape[2]
        pos = torch.arange(Tq, device=scale.device) + (Tk - Tq)  # each query's key position
        if Tk:
            seen = torch.cummax(scale, dim=-1).values  # (B, Hkv, Tk): largest scale so far
            r = seen.gather(-1, pos.clamp(0, Tk - 1).expand(B, Hkv, Tq))
            r = torch.where(pos >= 0, r, -torch.inf)  # (B, Hkv, Tq)
        else:
            r = scale.new_full((B, Hkv, Tq), -torch.inf)
        r = torch.maximum(r, old[..., None])
        # No key seen: the row's sums are 0 whatever the factor. A range of keys beyond
        # exp(limit) would overflow; past it the earliest keys underflow anyway.
        limit = math.log(torch.finfo(scale.dtype).max) / 2
        lift = torch.where(
            torch.isfinite(r), torch.exp((base[..., None] - r).clamp(max=limit)), 1
        )  # (B, Hkv, Tq)
        G = f.q.shape[1] // Hkv
        phi_q = f.q * lift.repeat_interleave(G, dim=1).unsqueeze(-1).to(f.q.dtype)
    return phi_q, phi_k, state, c


def _check_state(state: object, B: int, Hkv: int, Fdim: int, Dv: int) -> None:
    if not isinstance(state, LinearState):
        raise TypeError(f"state: expected a LinearState or None, got {type(state).__name__}")
    want = {"S": (B, Hkv, Fdim, Dv), "z": (B, Hkv, Fdim), "c": (B, Hkv)}
    for name, shape in want.items():
        t = getattr(state, name)
        if t is None and name == "c":
            continue
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(
                f"state: expected {name} of shape {shape} (B, Hkv, F, Dv = {B}, {Hkv}, {Fdim}, "
                f"{Dv}) for these q, k, v, got {got}"
            )


def _check_valid(valid: object, B: int, T: int, device: torch.device) -> Tensor:
    if not isinstance(valid, Tensor) or valid.dtype != torch.bool:
        got = valid.dtype if isinstance(valid, Tensor) else type(valid).__name__
        raise TypeError(f"valid: expected a boolean tensor (B, T), True = a real token, got {got}")
    if tuple(valid.shape) != (B, T):
        raise ValueError(f"valid: expected shape (B, T) = ({B}, {T}), got {tuple(valid.shape)}")
    if valid.device != device:
        raise ValueError(f"valid: expected device {device} like q, got {valid.device}")
    return valid


class KernelAttention(nn.Module):
    """Attention through a feature map: subclasses give :meth:`features`; this class runs
    it over masks (:func:`linear_attention`'s), with a carried state for decoding.

    Calls: ``forward(q, k, v, mask=None)`` like :func:`linear_attention`;
    :meth:`recurrent` continues causal attention from a :class:`LinearState` (the cache of a
    decoding model: O(F·Dv) per head, not O(T)); :meth:`weights` gives the (Tq, Tk) weights the
    kernel never builds, for inspection.
    """

    eps: float = 1e-6
    chunk_size: int = 64

    def features(self, q: Tensor, k: Tensor, valid: Tensor) -> Features:
        """phi(q) (B, H, Tq, F) and phi(k) (B, Hkv, Tk, F) in the accumulation dtype, from q and
        k whose keys where ``valid`` (B, Tk) is False are zero; phi(k) must be zero there.
        Features must not depend on the mask: a causal call and decoding share them."""
        raise NotImplementedError

    def feature_dim(self, head_dim: int) -> int:
        """F: the features phi gives a head of ``head_dim``."""
        raise NotImplementedError

    def _run(
        self, call: AttentionCall, causal: bool, valid: Tensor, state: LinearState | None
    ) -> tuple[Tensor, LinearState | None]:
        B, H, Tq, Hkv = call.batch, call.heads, call.tq, call.kv_heads
        keep = valid[:, None, :, None]  # (B, 1, Tk, 1)
        # Padded keys and values may hold inf/nan: zero them before the features and after.
        f = self.features(call.q, torch.where(keep, call.k, 0), valid)
        _check_features(f.q, f.k)
        if state is not None:
            _check_state(state, B, Hkv, f.k.shape[-1], call.v.shape[-1])
        phi_q, phi_k, state, c = _align(f, causal, state)
        phi_k = torch.where(keep, phi_k, 0)
        v = torch.where(keep, call.v, 0).to(phi_q.dtype)
        phi_q = phi_q.reshape(B, Hkv, H // Hkv, Tq, phi_q.shape[-1])  # (B, Hkv, G, Tq, F)
        out, new = _attend_features(
            phi_q, phi_k, v, causal=causal, eps=self.eps, chunk_size=self.chunk_size, state=state
        )  # (B, Hkv, G, Tq, Dv)
        if new is not None:
            new = LinearState(new.S, new.z, c)
        return out.reshape(B, H, Tq, call.v.shape[-1]).to(call.dtype), new  # -> (B, H, Tq, Dv)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
        """q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, H, Tq, Dv); ``mask``
        as in :func:`linear_attention`."""
        call, causal, valid = check_inputs(q, k, v, mask)
        return self._run(call, causal, valid, None)[0]

    def recurrent(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        state: LinearState | None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, LinearState]:
        """Causal attention of T new tokens (q (B, H, T, D), k, v (B, Hkv, T, ·)) after the keys
        summed in ``state`` (None: no earlier keys): (B, H, T, Dv) and the state after them.
        ``valid`` (B, T) bool marks real tokens (padding is left out of the sums). Equals the
        causal forward over all tokens, one call or many."""
        call = make_call(
            q, k, v, mask=None, bias=None, scale=None, dropout_p=0.0, return_weights=False
        )
        if call.tq != call.tk:
            raise ValueError(
                f"q: expected one query per new key, T = {call.tk} (k.shape[2]), got {call.tq}"
            )
        if valid is None:
            valid = torch.ones(call.batch, call.tk, dtype=torch.bool, device=call.device)
        else:
            valid = _check_valid(valid, call.batch, call.tk, call.device)
        out, new_state = self._run(call, True, valid, state)
        return out, new_state

    def pattern_source(
        self, q: Tensor, k: Tensor, mask: Mask | Tensor | None = None
    ) -> PatternSource:
        """The weights the O(T) kernel never builds, phi(q_i)·phi(k_j) over the row's sum, as
        a lazy :class:`~attnlab.attention.weights.PatternSource` (inspection, hooks)."""
        v = k.new_empty(*k.shape[:3], 0)
        call, causal, valid = check_inputs(q, k, v, mask)
        keep = valid[:, None, :, None]
        f = self.features(call.q, torch.where(keep, call.k, 0), valid)
        _check_features(f.q, f.k)
        phi_q, phi_k, _, _ = _align(f, causal, None)
        eps = self.eps

        def normalize(products: Tensor, allowed: Tensor | None) -> Tensor:
            if allowed is not None:
                products = torch.where(allowed, products, 0)
            return products / (products.sum(dim=-1, keepdim=True) + eps)

        return PatternSource(
            phi_q,
            torch.where(keep, phi_k, 0),
            mask=call.mask,
            bias=None,
            scale=1.0,
            normalize=normalize,
        )

    def weights(self, q: Tensor, k: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
        """The attention weights (B, H, Tq, Tk) float32 (see :meth:`pattern_source`)."""
        return self.pattern_source(q, k, mask).weights().float()


class LinearAttention(KernelAttention):
    """Linear attention (Katharopoulos et al. 2020) as a module: phi = elu + 1, or
    ``feature_map``. See :func:`linear_attention`."""

    def __init__(
        self, feature_map: FeatureMap | None = None, *, eps: float = 1e-6, chunk_size: int = 64
    ) -> None:
        super().__init__()
        _check_chunk_size(chunk_size)
        self.feature_map = elu_feature_map if feature_map is None else feature_map
        self.eps, self.chunk_size = eps, chunk_size

    def feature_dim(self, head_dim: int) -> int:
        return self.feature_map(torch.zeros(1, head_dim)).shape[-1]

    def features(self, q: Tensor, k: Tensor, valid: Tensor) -> Features:
        acc = accumulation_dtype(q.dtype)
        phi_q = _apply_feature_map(self.feature_map, q, "q").to(acc)
        return Features(phi_q, _apply_feature_map(self.feature_map, k, "k").to(acc))


class PerformerAttention(KernelAttention):
    """Softmax attention approximated by FAVOR+ random features (Choromanski et al. 2021).

    Runs :func:`linear_attention`'s machinery (same call shape and masks, GQA, padding, chunked
    causal prefix sums, a carried state for decoding) with phi = :func:`favor_features`, so
    causal attention is O(T) too.

    Stabilisers: the key features are divided by exp(c), c the largest key exponent, and each
    query's by its own largest (see :func:`favor_features`); both cancel. Causal calls and the
    decoding state keep c the largest exponent among the keys summed so far, rescaling the
    state when a larger key arrives (as online softmax does with its running maximum), and
    relate each query to the largest key it sees (:func:`_align`): decoding one token at a time
    equals the full causal forward, and a query's result does not depend on the keys after it.
    One call divides all its keys by its largest, so keys whose features are more than the
    float range (about e^87 in float32) below the call's largest underflow to 0 there, which
    decoding token by token avoids.

    Args:
        head_dim: D.
        n_features: m, the number of random features.
        redraw: draw a fresh projection at every forward pass in training mode (the paper
            resamples features during training so the model does not fit one draw); eval mode
            always keeps the current one, and so do :meth:`recurrent` (a state is summed with
            one projection) and :meth:`pattern_source`.
        generator: seeds the initial projection; None uses torch's global RNG.
        eps: added to the denominator. The stabilisers pin the largest feature of each query
            and of the keys it sees to exactly 1/sqrt(m), so a single query-key weight is at
            most 1; but the largest features of a query and of a key rarely coincide, and at
            D = 64, m = 256 with unit-variance inputs a weight is ~1e-5, where eps = 1e-6
            takes a few percent of a short row's mass (pass a smaller eps there).
        chunk_size: C of the causal prefix sums.

    Buffer ``projection`` (m, D): the random features; saved in the state dict so a trained model
    is reloaded with the draw it was trained with.

    Cost (per batch element and head): O((Tq + Tk)·m·(D + Dv)) time, non-causal and causal
    alike, and O((Tq + Tk)·(m + Dv) + m·Dv) memory (causal: plus O(C²), see linear_attention).

    Exactness: phi(q)·phi(k) is an unbiased estimate of exp(q·k / sqrt(D)), so the numerator and
    denominator of softmax attention are estimated without bias and the output (their ratio)
    consistently; the error shrinks like O(1 / sqrt(m)) and the result is exact only as
    m -> infinity.
    """

    projection: Tensor

    def __init__(
        self,
        head_dim: int,
        n_features: int = 256,
        *,
        redraw: bool = False,
        generator: torch.Generator | None = None,
        eps: float = 1e-6,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        _check_chunk_size(chunk_size)
        self.head_dim = head_dim
        self.n_features = n_features
        self.redraw = redraw
        self.eps = eps
        self.chunk_size = chunk_size
        self.register_buffer(
            "projection", orthogonal_gaussian(n_features, head_dim, generator=generator)
        )

    def redraw_projection(self, generator: torch.Generator | None = None) -> None:
        """Replace the projection by a fresh draw (same device and dtype as the old one).

        The buffer is rebound, not overwritten in place: graphs of earlier forward passes that
        saved the old projection for their backward pass stay valid.
        """
        new = orthogonal_gaussian(self.n_features, self.head_dim, generator=generator)
        self.projection = new.to(device=self.projection.device, dtype=self.projection.dtype)

    def feature_dim(self, head_dim: int) -> int:
        return self.n_features

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask | Tensor | None = None) -> Tensor:
        """As :meth:`KernelAttention.forward`; draws a fresh projection first when ``redraw``
        is set and the module is training."""
        call, causal, valid = check_inputs(q, k, v, mask)
        if self.redraw and self.training:
            self.redraw_projection()
        return self._run(call, causal, valid, None)[0]

    def features(self, q: Tensor, k: Tensor, valid: Tensor) -> Features:
        if q.shape[-1] != self.head_dim:
            raise ValueError(
                f"q: expected head dim D = head_dim = {self.head_dim}, got {q.shape[-1]}"
            )
        acc = accumulation_dtype(q.dtype)
        w = self.projection.to(device=q.device, dtype=acc)
        phi_q = favor_features(q.to(acc), w, is_query=True)  # (B, H, Tq, m)
        expo = _favor_exponent(k.to(acc), w)  # (B, Hkv, Tk, m)
        phi_k, scale, stab = _favor_keys(expo, valid[:, None, :])  # (B, Hkv, Tk, m)
        return Features(phi_q, phi_k, scale, stab)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, n_features={self.n_features}, redraw={self.redraw}"
