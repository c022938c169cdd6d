"""Choosing a backend: by name, or "auto" — the fastest one that supports the call.

"auto" walks a priority list and takes the first backend with no reason to refuse. The list
depends on the device and on a cost model: the estimated time of PyTorch's fused dense SDPA
against that of a backend that skips masked tiles (chunked on the CPU, FlexAttention on a GPU).

* Dense SDPA works in proportion to B * H * Tq * Tk * (D + Dv), halved for a plain causal mask
  (its causal kernels skip the upper triangle); any other mask costs the full product, plus
  building and reading a dense (Tq, Tk) mask.
* A tile-skipping backend works in proportion to the tiles it visits, about the mask's allowed
  keys per query plus one tile where the allowed band crosses tile borders, at a higher cost
  per unit than a fused kernel; and each partially masked tile pays for evaluating the mask.

The constants (:data:`COSTS`) are seconds, measured per device type, separately for inference
and training (forward + backward), by ``benchmarks/dispatch_costs.py``; benchmarks/README.md
lists the measurements. Tiles are chosen only when estimated :data:`MIN_SPEEDUP` times faster:
near a tie the model cannot tell (it is within about 30% of every measurement), and on a
shared machine the tiled backend, with its many small operations, loses far more than SDPA's
few large ones when another process takes a core. When no backend can run the call, one
ValueError lists every backend's reasons.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from attnlab.attention.backends.base import Backend, backend_names, get_backend
from attnlab.attention.call import AttentionCall


@dataclass(frozen=True)
class Costs:
    """Seconds per unit of work on one device type, in one mode (inference or training).

    A unit is one (query, key) pair of one head times one head-dim element of D + Dv.
    """

    dense_s: float  # fused dense SDPA, per unit of the full (or causal-half) score matrix
    mask_s: float  # dense SDPA, per entry of a materialised (B or 1, Tq, Tk) mask
    tiled_s: float  # the tile-skipping backend, per unit of the tiles it visits
    edge_s: float  # the tile-skipping backend, per partially masked tile (mask evaluation)
    call_s: float  # the tile-skipping backend, per call (kernel launch, setup)
    tile: int  # the tile-skipping backend's tile length


# Measured: benchmarks/README.md, "Dispatch cost model". CPU: 2-core AMD EPYC (AVX2, no AVX-512
# or AMX), 2 threads, float32, chunked with its 128-token CPU tiles, fitted to interleaved
# sdpa/chunked medians over sliding windows of 64 to 1024 keys at T = 512 to 4096 with H x D =
# 8 x 64 and 2 x 32. CUDA: from the H100 table there (FlexAttention, 128-token blocks; the mask
# cost is inside dense_s), forward measured, training scaled by the causal forward+backward /
# forward ratios of the same table; not re-measured.
COSTS: dict[tuple[str, str], Costs] = {
    ("cpu", "fwd"): Costs(
        dense_s=2.25e-11, mask_s=8.7e-9, tiled_s=5.3e-11, edge_s=6.9e-4, call_s=0.0, tile=128
    ),
    ("cpu", "train"): Costs(
        dense_s=8.75e-11, mask_s=1.0e-8, tiled_s=1.55e-10, edge_s=1.66e-3, call_s=0.0, tile=128
    ),
    ("cuda", "fwd"): Costs(
        dense_s=9.0e-14, mask_s=0.0, tiled_s=2.2e-13, edge_s=0.0, call_s=1.0e-4, tile=128
    ),
    ("cuda", "train"): Costs(
        dense_s=3.0e-13, mask_s=0.0, tiled_s=1.1e-12, edge_s=0.0, call_s=5.0e-4, tile=128
    ),
}

# Tiles are chosen when estimated at least this many times faster than dense SDPA.
MIN_SPEEDUP = 1.2

# Priority lists per device type, dense first or tile-skipping first. FlexAttention compiles
# for seconds on first use and on CPU only runs inference, so on CPU chunked is the tile-skipping
# backend.
_PRIORITY = {
    ("cuda", False): ("sdpa", "flex", "chunked", "reference"),
    ("cuda", True): ("flex", "chunked", "sdpa", "reference"),
    ("cpu", False): ("sdpa", "chunked", "flex", "reference"),
    ("cpu", True): ("chunked", "flex", "sdpa", "reference"),
}


def _device_type(call: AttentionCall) -> str:
    return "cuda" if call.device.type == "cuda" else "cpu"


def costs_for(call: AttentionCall) -> Costs:
    """The cost constants that apply to ``call``: its device type, inference or training."""
    return COSTS[(_device_type(call), "train" if call.needs_grad else "fwd")]


def visited_keys(call: AttentionCall, tile: int) -> float:
    """Keys per query row that a backend skipping masked ``tile`` x ``tile`` tiles visits.

    The mask's allowed keys (``Mask.density``), widened by one tile because a band of allowed
    keys crosses tile borders, then rounded up to whole tiles.
    """
    if call.mask is None:
        return float(call.tk)
    keys = call.mask.density(call.tq, call.tk) * call.tk + tile
    return float(min(call.tk, math.ceil(keys / tile) * tile))


@dataclass(frozen=True)
class Work:
    """What a call costs, in the units of :class:`Costs`."""

    dense_units: float  # dense SDPA: B * H * (D + Dv) * Tq * Tk, halved for plain causal
    mask_entries: float  # dense SDPA: (B or 1) * Tq * Tk for a mask other than plain causal
    tiled_units: float  # tile-skipping: B * H * (D + Dv) * Tq * visited keys
    edge_tiles: int  # tile-skipping: partially masked tiles, about 2 per row of tiles


def work(call: AttentionCall, tile: int) -> Work:
    """The work of ``call`` for dense SDPA and for a backend with ``tile``-long tiles."""
    per_pair = call.batch * call.heads * (call.q.shape[-1] + call.v.shape[-1])
    dense_fraction = 0.5 if call.plain_causal else 1.0
    keys = visited_keys(call, tile)
    dense_mask = call.mask is not None and not call.plain_causal
    mask_rows = call.batch if dense_mask and call.mask.batch_size() is not None else 1
    # A band of allowed keys has a partial tile at each end; every tile is fully allowed
    # without a mask.
    edges_per_row = min(2, math.ceil(keys / tile)) if call.mask is not None else 0
    return Work(
        dense_units=per_pair * call.tq * call.tk * dense_fraction,
        mask_entries=mask_rows * call.tq * call.tk if dense_mask else 0.0,
        tiled_units=per_pair * call.tq * keys,
        edge_tiles=math.ceil(call.tq / tile) * edges_per_row,
    )


def estimated_seconds(call: AttentionCall, costs: Costs | None = None) -> dict[str, float]:
    """Estimated seconds of ``call`` with dense SDPA ("dense") and with the device's
    tile-skipping backend ("tiled"), from ``costs`` (default: :func:`costs_for` the call)."""
    c = costs or costs_for(call)
    w = work(call, c.tile)
    return {
        "dense": c.dense_s * w.dense_units + c.mask_s * w.mask_entries,
        "tiled": c.tiled_s * w.tiled_units + c.edge_s * w.edge_tiles + c.call_s,
    }


def is_sparse(call: AttentionCall, costs: Costs | None = None) -> bool:
    """True when skipping masked tiles is estimated at least :data:`MIN_SPEEDUP` times faster
    than dense SDPA for ``call``."""
    if call.mask is None or call.plain_causal or call.tq == 0 or call.tk == 0:
        # Plain causal: SDPA's causal kernels skip the same half of the tiles, at the fused
        # kernel's lower cost per unit, so tiles cannot win (and this is the hot path).
        return False
    est = estimated_seconds(call, costs)
    return est["tiled"] * MIN_SPEEDUP < est["dense"]


def priority(call: AttentionCall) -> tuple[str, ...]:
    """Backend names in the order "auto" tries them for ``call``."""
    args = (_device_type(call), is_sparse(call), tuple(backend_names()))
    if torch.compiler.is_compiling():  # traced once into the graph; the cache is for eager
        return _ordered.__wrapped__(*args)
    return _ordered(*args)


@functools.lru_cache(maxsize=32)
def _ordered(device: str, sparse: bool, registered: tuple[str, ...]) -> tuple[str, ...]:
    # Cached: dispatch runs on every attention call, and this list only changes when the
    # registry does (the registered names are part of the key).
    # Collective backends run only when named: every rank must call them together, and they
    # read masks at global positions.
    registered = tuple(n for n in registered if not get_backend(n).capabilities.collective)
    order = [n for n in _PRIORITY[(device, sparse)] if n in registered]
    return (*order, *(n for n in registered if n not in order))


def explain(call: AttentionCall) -> dict[str, list[str]]:
    """Every registered backend's reasons to refuse ``call`` (empty list: it can run it), in
    the order "auto" tries them, then those "auto" never picks (collective backends)."""
    tried = priority(call)
    names = (*tried, *(n for n in backend_names() if n not in tried))
    return {name: get_backend(name).not_supported_reasons(call) for name in names}


def select_backend(call: AttentionCall, backend: str = "auto") -> Backend:
    """The backend that will run ``call``; ValueError explaining why when none can."""
    if backend != "auto":
        chosen = get_backend(backend)
        reasons = chosen.not_supported_reasons(call)
        if reasons:
            raise ValueError(f"backend: {backend!r} cannot run this call: " + "; ".join(reasons))
        return chosen
    refusals = []
    for name in priority(call):
        candidate = get_backend(name)
        reasons = candidate.not_supported_reasons(call)
        if not reasons:
            return candidate
        refusals.append(f"{name}: " + "; ".join(reasons))
    raise ValueError("backend: no attention backend supports this call — " + " | ".join(refusals))
