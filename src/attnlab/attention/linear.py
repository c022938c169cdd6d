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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PerformerAttention",
    "elu_feature_map",
    "favor_features",
    "linear_attention",
    "linear_attention_explicit",
    "orthogonal_gaussian",
]

FeatureMap = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# Input checks (shared with attnlab.attention.lowrank)
# --------------------------------------------------------------------------------------------


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> tuple[int, ...]:
    """Validate the (q, k, v) call shape; return (B, H, Hkv, Tq, Tk, D, Dv)."""
    for name, t, legend in (
        ("q", q, "(B, H, Tq, D)"),
        ("k", k, "(B, Hkv, Tk, D)"),
        ("v", v, "(B, Hkv, Tk, Dv)"),
    ):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor {legend}; got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor {legend}; got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; got dtype {t.dtype}")
    B, H, Tq, D = q.shape
    _, Hkv, Tk, _ = k.shape
    Dv = v.shape[3]
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(
            f"q, k, v must share the batch size B: expected {B} (q.shape[0]), "
            f"got k.shape[0]={k.shape[0]}, v.shape[0]={v.shape[0]}"
        )
    if k.shape[3] != D:
        raise ValueError(
            f"k must have the head dim D of q: expected k.shape[3] == {D}, got {k.shape[3]}"
        )
    if v.shape[1] != Hkv or v.shape[2] != Tk:
        raise ValueError(
            f"v must have the heads and length of k: expected v.shape[1:3] == ({Hkv}, {Tk}), "
            f"got {tuple(v.shape[1:3])}"
        )
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(
            f"q heads H must be a multiple of k/v heads Hkv: expected a multiple of Hkv={Hkv} "
            f"(k.shape[1]), got H={H} (q.shape[1])"
        )
    if causal and Tq != Tk:
        raise ValueError(
            f"causal=True needs as many queries as keys: expected Tq == Tk, "
            f"got Tq={Tq} (q.shape[2]) and Tk={Tk} (k.shape[2])"
        )
    return B, H, Hkv, Tq, Tk, D, Dv


def _key_valid_mask(key_lengths: Tensor | None, B: int, Tk: int, device: torch.device) -> Tensor:
    """(B,) lengths -> (B, Tk) bool, True at keys that count; all True when key_lengths is None."""
    if key_lengths is None:
        return torch.ones(B, Tk, dtype=torch.bool, device=device)
    if not isinstance(key_lengths, Tensor):
        raise ValueError(
            f"key_lengths must be a (B,) integer tensor; got {type(key_lengths).__name__}"
        )
    if key_lengths.shape != (B,):
        raise ValueError(
            f"key_lengths must have shape (B,) = ({B},); got {tuple(key_lengths.shape)}"
        )
    if (
        key_lengths.is_floating_point()
        or key_lengths.is_complex()
        or key_lengths.dtype == torch.bool
    ):
        raise ValueError(f"key_lengths must be an integer tensor; got dtype {key_lengths.dtype}")
    lengths = key_lengths.to(device)
    if B > 0 and (int(lengths.min()) < 0 or int(lengths.max()) > Tk):
        raise ValueError(
            f"key_lengths must lie in [0, Tk] = [0, {Tk}]; "
            f"got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    return torch.arange(Tk, device=device)[None, :] < lengths[:, None]  # (B, Tk)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sums over up to T keys: accumulate half precision in fp32 (fp64 stays fp64).
    return torch.promote_types(dtype, torch.float32)


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
        raise ValueError(f"chunk_size must be a positive int; got {chunk_size!r}")


def _attend_features(
    phi_q: Tensor,
    phi_k: Tensor,
    v: Tensor,
    valid: Tensor,
    *,
    causal: bool,
    eps: float,
    chunk_size: int,
) -> Tensor:
    """Linear attention given features; the O(T) path.

    phi_q (B, Hkv, G, Tq, F), phi_k (B, Hkv, Tk, F), v (B, Hkv, Tk, Dv), valid (B, Tk) bool
    -> (B, Hkv, G, Tq, Dv), in the accumulation dtype.
    """
    keep = valid[:, None, :, None]  # (B, 1, Tk, 1)
    # where (not multiply): padded entries may hold inf/nan and must still contribute exactly 0.
    phi_k = torch.where(keep, phi_k, 0)
    v = torch.where(keep, v, 0)

    if not causal:
        S = torch.einsum("bhtf,bhte->bhfe", phi_k, v)  # (B, Hkv, F, Dv)
        z = phi_k.sum(dim=2)  # (B, Hkv, F)
        num = torch.einsum("bhgtf,bhfe->bhgte", phi_q, S)  # (B, Hkv, G, Tq, Dv)
        den = torch.einsum("bhgtf,bhf->bhgt", phi_q, z)  # (B, Hkv, G, Tq)
        return num / (den.unsqueeze(-1) + eps)

    # Causal: chunkwise prefix sums (the "chunked" form of Katharopoulos et al. §3.4 / the
    # Performer's prefix-sum mechanism). Within a chunk, an explicit (C, C) lower-triangular
    # product; across chunks, a carried state (S, z) of the keys in all earlier chunks. Live
    # memory is O(T·(F + Dv) + C²) per head plus one (F, Dv) state, never the O(T·F·Dv) tensor of
    # all prefix states that a plain cumsum would build.
    B, Hkv, G, T, Fdim = phi_q.shape
    Dv = v.shape[-1]
    S = phi_q.new_zeros(B, Hkv, Fdim, Dv)  # sum_{j < chunk start} phi(k_j) v_jᵀ
    z = phi_q.new_zeros(B, Hkv, Fdim)  # sum_{j < chunk start} phi(k_j)
    tril = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=phi_q.device).tril()
    outs = []
    for start in range(0, T, chunk_size):
        end = min(start + chunk_size, T)
        L = end - start
        qc = phi_q[:, :, :, start:end]  # (B, Hkv, G, L, F)
        kc = phi_k[:, :, start:end]  # (B, Hkv, L, F)
        vc = v[:, :, start:end]  # (B, Hkv, L, Dv)
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
    if not outs:  # T == 0
        return phi_q.new_zeros(B, Hkv, G, 0, Dv)
    return torch.cat(outs, dim=3)


def _attend_features_explicit(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, valid: Tensor, *, causal: bool, eps: float
) -> Tensor:
    """The O(Tq·Tk) form: build the weights, mask them, normalise. Shapes as _attend_features."""
    A = torch.einsum("bhgif,bhjf->bhgij", phi_q, phi_k)  # (B, Hkv, G, Tq, Tk)
    keep = valid[:, None, None, None, :]  # (B, 1, 1, 1, Tk)
    if causal:
        Tq, Tk = A.shape[-2:]
        keep = keep & torch.ones(Tq, Tk, dtype=torch.bool, device=A.device).tril()
    A = torch.where(keep, A, 0)
    v = torch.where(valid[:, None, :, None], v, 0)  # (B, Hkv, Tk, Dv); padded values may be nan
    num = torch.einsum("bhgij,bhje->bhgie", A, v)  # (B, Hkv, G, Tq, Dv)
    return num / (A.sum(dim=-1, keepdim=True) + eps)


def _linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool,
    key_lengths: Tensor | None,
    feature_map: FeatureMap | None,
    eps: float,
    chunk_size: int | None,
) -> Tensor:
    B, H, Hkv, Tq, Tk, _, Dv = _check_qkv(q, k, v, causal=causal)
    valid = _key_valid_mask(key_lengths, B, Tk, k.device)  # (B, Tk)
    keep = valid[:, None, :, None]  # (B, 1, Tk, 1)
    # Zero padded keys before the feature map so inf/nan there cannot leak into gradients.
    k = torch.where(keep, k, 0)
    acc = _acc_dtype(q.dtype)
    fmap = elu_feature_map if feature_map is None else feature_map
    phi_q = _apply_feature_map(fmap, q, "q").to(acc)  # (B, H, Tq, F)
    phi_k = _apply_feature_map(fmap, k, "k").to(acc)  # (B, Hkv, Tk, F)
    _check_features(phi_q, phi_k)
    # GQA without copying k/v: query heads h = kv_head * G + g share kv_head.
    phi_q = phi_q.reshape(B, Hkv, H // Hkv, Tq, phi_q.shape[-1])  # (B, Hkv, G, Tq, F)
    if chunk_size is None:
        out = _attend_features_explicit(phi_q, phi_k, v.to(acc), valid, causal=causal, eps=eps)
    else:
        out = _attend_features(
            phi_q, phi_k, v.to(acc), valid, causal=causal, eps=eps, chunk_size=chunk_size
        )
    return out.reshape(B, H, Tq, Dv).to(q.dtype)  # (B, Hkv, G, Tq, Dv) -> (B, H, Tq, Dv)


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    feature_map: FeatureMap | None = None,
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> Tensor:
    """Kernelised attention, out_i = phi(q_i)ᵀ S_i / (phi(q_i)ᵀ z_i + eps) (Katharopoulos 2020).

    S_i = sum_j phi(k_j) v_jᵀ and z_i = sum_j phi(k_j), over all valid keys j (non-causal) or
    over valid j <= i (causal). ``eps`` in the denominator follows the paper's code.

    Args:
        q: (B, H, Tq, D) queries.
        k: (B, Hkv, Tk, D) keys; H must be a multiple of Hkv (grouped-query attention, done by
            reshaping q to (B, Hkv, G, Tq, D), never by copying k/v).
        v: (B, Hkv, Tk, Dv) values.
        causal: query i sees keys j <= i; needs Tq == Tk.
        key_lengths: (B,) integer tensor; keys at positions >= key_lengths[b] are padding and
            have no effect at all (their content, even inf/nan, is ignored).
        feature_map: callable x (..., D) -> phi(x) (..., F) with non-negative output, applied to
            q and k alike; default elu(x) + 1. Non-negativity is not checked (that would force a
            device sync); a map with negative values can make the denominator vanish.
        eps: added to the denominator.
        chunk_size: C, the block length of the causal prefix sums (ignored when non-causal).

    Returns:
        (B, H, Tq, Dv), dtype of q. Half-precision inputs accumulate in fp32.

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
    return _linear_attention(
        q,
        k,
        v,
        causal=causal,
        key_lengths=key_lengths,
        feature_map=feature_map,
        eps=eps,
        chunk_size=chunk_size,
    )


def linear_attention_explicit(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    key_lengths: Tensor | None = None,
    feature_map: FeatureMap | None = None,
    eps: float = 1e-6,
    chunk_size: int = 64,
) -> Tensor:
    """Reference O(Tq·Tk) form of :func:`linear_attention` (same arguments, same result).

    Builds the (Tq, Tk) matrix A_ij = phi(q_i)·phi(k_j), zeroes padded (and, if causal, future)
    keys, and returns A v / (rowsum(A) + eps). ``chunk_size`` is accepted for signature parity
    and ignored. Meant as a test oracle.

    Cost: O(Tq·Tk·(F + Dv)) time and O(Tq·Tk) memory per batch element and head.
    """
    _check_chunk_size(chunk_size)
    return _linear_attention(
        q,
        k,
        v,
        causal=causal,
        key_lengths=key_lengths,
        feature_map=feature_map,
        eps=eps,
        chunk_size=None,
    )


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
        attention problem alike. A per-key max would not cancel.
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
    if x.dim() < 2:
        raise ValueError(f"x must be (..., T, D) with at least 2 dims; got shape {tuple(x.shape)}")
    if projection.dim() != 2 or projection.shape[1] != x.shape[-1]:
        raise ValueError(
            f"projection must be (m, D) with D = x.shape[-1] = {x.shape[-1]}; "
            f"got shape {tuple(projection.shape)}"
        )
    D = x.shape[-1]
    m = projection.shape[0]
    dtype = torch.promote_types(x.dtype, projection.dtype)
    x = x.to(dtype) * D**-0.25  # x' (..., T, D)
    logits = x @ projection.to(device=x.device, dtype=dtype).T  # (..., T, m): w·x'
    expo = logits - 0.5 * (x * x).sum(dim=-1, keepdim=True)  # (..., T, m)
    if is_query:
        stab = expo.amax(dim=-1, keepdim=True)  # (..., T, 1)
    else:
        if valid is not None:
            keep = valid.unsqueeze(-1)  # (..., T, 1)
            expo = torch.where(keep, expo, -torch.inf)
        stab = expo.amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
        # No valid key at all: any constant will do (the features are zeroed below).
        stab = torch.where(torch.isfinite(stab), stab, 0)
    phi = torch.exp(expo - stab.detach()) * m**-0.5
    if valid is not None:
        phi = torch.where(valid.unsqueeze(-1), phi, 0)
    return phi


class PerformerAttention(nn.Module):
    """Softmax attention approximated by FAVOR+ random features (Choromanski et al. 2021).

    Runs :func:`linear_attention`'s machinery (same call shape, GQA, padding, chunked causal
    prefix sums) with phi = :func:`favor_features`, so causal attention is O(T) too.

    Args:
        head_dim: D.
        n_features: m, the number of random features.
        causal: query i attends to keys j <= i (needs Tq == Tk).
        redraw: draw a fresh projection at every forward pass in training mode (the paper
            resamples features during training so the model does not fit one draw); eval mode
            always keeps the current one.
        generator: seeds the initial projection; None uses torch's global RNG.
        eps: added to the denominator. The stabilisers pin the largest query and key feature to
            exactly 1/sqrt(m), so a single query-key weight is at most 1 and eps = 1e-6 only
            matters for queries whose total attention mass is ~1e-6 of that.
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
        causal: bool = False,
        redraw: bool = False,
        generator: torch.Generator | None = None,
        eps: float = 1e-6,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        _check_chunk_size(chunk_size)
        self.head_dim = head_dim
        self.n_features = n_features
        self.causal = causal
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

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_lengths: Tensor | None = None) -> Tensor:
        """q (B, H, Tq, D), k (B, Hkv, Tk, D), v (B, Hkv, Tk, Dv) -> (B, H, Tq, Dv).

        key_lengths: (B,) integer tensor; keys at positions >= key_lengths[b] are ignored.
        """
        B, H, Hkv, Tq, Tk, D, Dv = _check_qkv(q, k, v, causal=self.causal)
        if self.head_dim != D:
            raise ValueError(
                f"q and k must have head dim D = head_dim = {self.head_dim}; got D={D}"
            )
        if self.redraw and self.training:
            self.redraw_projection()
        valid = _key_valid_mask(key_lengths, B, Tk, k.device)  # (B, Tk)
        k = torch.where(valid[:, None, :, None], k, 0)  # padded keys may hold inf/nan
        acc = _acc_dtype(q.dtype)
        w = self.projection.to(acc)
        phi_q = favor_features(q.to(acc), w, is_query=True)  # (B, H, Tq, m)
        phi_k = favor_features(k.to(acc), w, is_query=False, valid=valid[:, None, :])
        phi_q = phi_q.reshape(B, Hkv, H // Hkv, Tq, self.n_features)  # (B, Hkv, G, Tq, m)
        out = _attend_features(
            phi_q,
            phi_k,  # (B, Hkv, Tk, m)
            v.to(acc),
            valid,
            causal=self.causal,
            eps=self.eps,
            chunk_size=self.chunk_size,
        )  # (B, Hkv, G, Tq, Dv)
        return out.reshape(B, H, Tq, Dv).to(q.dtype)

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, n_features={self.n_features}, causal={self.causal}, "
            f"redraw={self.redraw}"
        )
