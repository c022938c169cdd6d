"""Reading attention costs memory in proportion to what is asked, not to T x T: measured as the
peak resident memory of fresh processes, each running a plain forward pass or the same forward
pass with a capture, and compared.

Each measurement runs in its own Python process with glibc returning large buffers to the system
as soon as they are freed (``attnlab.bench.CLEAN_MALLOC_ENV``). It reports how far resident
memory rose above its level before the call: with ``/proc/self/clear_refs`` the peak is reset
just before the call (``attnlab.bench.peak_memory``); without it the peak of the whole process
is used, which the call dominates (the model is tiny, the activations are not). The positive
control shows the measurement sees a dense pattern of the size B * H * T * T * 4 says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from attnlab.bench import CLEAN_MALLOC_ENV

MiB = 2**20

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    import torch
    from attnlab.attention.backends import chunked
    from attnlab.bench import peak_memory
    from attnlab.inspect import attention_weights, head_stats, run_with_cache
    from attnlab.models import GPT, GPTConfig

    mode, backend = sys.argv[1], sys.argv[2]
    t, n_layer, n_head, tile = map(int, sys.argv[3:7])
    chunked.TILES["cpu"] = tile
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=64, max_len=t, n_layer=n_layer, n_head=n_head, dim=8 * n_head,
        position="rope", backend=backend,
    )
    model = GPT(config).eval()
    ids = torch.randint(0, 64, (1, t))
    kept = []

    def run():
        with torch.no_grad():
            if mode == "plain":
                kept.append(model(ids).logits)
            elif mode == "one_head":
                kept.append(attention_weights(model, ids, layers=n_layer - 1, heads=1))
            elif mode == "dense":
                kept.append(run_with_cache(model, ids, names="blocks.0.attn.pattern"))
            elif mode == "head_stats":
                kept.append(head_stats(model, ids))
            else:
                raise SystemExit(f"unknown mode {mode!r}")

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    with torch.no_grad():  # lazy initialisation (thread pools, kernels) is not measured
        model(ids[:, :64])
    try:
        grew = peak_memory(run, "cpu")
    except RuntimeError:  # no /proc/self/clear_refs: the peak of this fresh process
        before = rss()
        run()
        grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    print(json.dumps({"grew": grew}))
    """
)


def grew(mode: str, backend: str, t: int, n_layer: int, n_head: int, tile: int = 128) -> int:
    """Bytes by which resident memory rose during one call of ``mode`` in a fresh process
    (``tile``: the chunked backend's tile length on the CPU)."""
    args = [mode, backend, *map(str, (t, n_layer, n_head, tile))]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **CLEAN_MALLOC_ENV},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["grew"]


@pytest.mark.slow
def test_one_head_at_4096_adds_little_and_a_dense_pattern_costs_its_size():
    t, n_layer, n_head = 4096, 2, 4
    plain = grew("plain", "sdpa", t, n_layer, n_head)
    one_head = grew("one_head", "sdpa", t, n_layer, n_head)
    dense = grew("dense", "sdpa", t, n_layer, n_head)
    # One head of one layer is (1, 1, T, T) float32 = 64 MiB of result plus a tile of scratch.
    extra = one_head - plain
    assert extra < 200 * MiB, f"one head added {extra / MiB:.0f} MiB over the plain forward"
    # Positive control: the whole (1, H, T, T) pattern of a layer is held, 256 MiB.
    size = 1 * n_head * t * t * 4
    extra = dense - plain
    assert 0.8 * size < extra < size + 150 * MiB, (
        f"a dense pattern of {size / MiB:.0f} MiB added {extra / MiB:.0f} MiB "
        f"(plain forward: {plain / MiB:.0f} MiB)"
    )


@pytest.mark.slow
def test_head_stats_of_every_head_at_8192_stay_within_a_tile():
    # Tiles of 1024 (the backend's GPU setting) make the chunked forward pass take seconds
    # instead of a minute on 2 cores; they change its own scratch memory, in both runs alike,
    # not what head_stats adds, whose tiles are its own.
    t, n_layer, n_head, tile = 8192, 1, 2, 1024
    plain = grew("plain", "chunked", t, n_layer, n_head, tile)
    stats = grew("head_stats", "chunked", t, n_layer, n_head, tile)
    # A dense (1, H, T, T) float32 pattern would be 512 MiB; the statistics need tiles of 16 MB.
    extra = stats - plain
    assert extra < 200 * MiB, f"head_stats added {extra / MiB:.0f} MiB over the plain forward"
