"""The chunked backend's memory stays linear in T: measured as peak RSS of a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, torch
    from attnlab.attention import attend, masks
    torch.set_num_threads(2)
    T = {T}
    q, k, v = (torch.randn(1, 8, T, 64, requires_grad=True) for _ in range(3))
    out = attend(q, k, v, mask=masks.causal(), backend="chunked")
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps({{"peak_bytes": peak}}))
    """
)


def _peak_bytes(t: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD.format(T=t)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_bytes"]


@pytest.mark.slow
def test_chunked_forward_backward_at_8k_peaks_under_1_gb():
    # The whole process counts: Python, torch, q/k/v and their gradients (4 x 16 MiB) included.
    # A dense (1, 8, T, T) float32 score matrix alone would be 2 GiB.
    peak = _peak_bytes(8192)
    assert peak < 2**30, f"peak RSS {peak / 2**20:.0f} MiB"
