"""A study that trains the same language model once per choice and compares the runs.

``attnlab compare --preset shakespeare-char --vary attention=softmax,linear position=rope,alibi``
trains the preset's model once for every combination of the varied values (the Cartesian
product), each run under the same time budget (or the same number of steps), seed and data, and
writes one report:

* ``runs/<name>/``: each run's own run directory (``attnlab.load`` opens it), trained by
  ``attnlab train`` in a child process, so that the peak resident memory read from the child's
  resource usage (``os.wait4``) is that run's alone, and a run that crashes is a row of the
  table instead of the end of the study; its output goes to ``logs/<name>.log``;
* ``report.md`` and ``results.json``: per run the varied values, its status, the final
  validation loss, training tokens per second, steps, peak RSS and parameters; the cost of one
  training step against sequence length (:func:`step_costs`); and the length-extrapolation test
  of Press et al. 2022 (:func:`length_losses`): validation loss at 1x, 2x, 4x and 8x the
  training context;
* PNG figures, embedded in the report: validation loss against wall-clock time and against
  steps, memory and time of a step against sequence length, loss against evaluation length.

Everything is checked before the first run starts (:func:`plan_study`): field names (with the
closest valid name), value types, and each combination's model config. A combination that the
config refuses (``attention=linear`` with ``position=alibi``: no scores for a bias to act on)
is not run and listed with the reason; a value no combination can use is an error.

So that learned positions can be evaluated past the training context, every run's model is
built with ``max_len`` = 8 x ``block_size``; the rows past ``block_size`` are never trained,
which is what the extrapolation test shows.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.train.config import TrainConfig, apply_overrides, preset, split_override, suggest

__all__ = [
    "EXTRAPOLATION_FACTORS",
    "Axis",
    "RunResult",
    "Study",
    "Variant",
    "format_extrapolation",
    "format_results",
    "length_losses",
    "parse_vary",
    "plan_study",
    "run_study",
    "saved_tensor_bytes",
    "sequence_lengths",
    "step_costs",
    "train_command",
    "train_variant",
    "write_report",
]

# Evaluation lengths of the extrapolation test, as multiples of the training context.
EXTRAPOLATION_FACTORS = (1, 2, 4, 8)
# Steps a run with a time budget may take: the clock ends it, not the preset's max_steps (which
# would stop a fast model early and give it less time than the others).
UNCAPPED_STEPS = 1_000_000
# Settings --vary cannot vary, and why (out_dir and max_len cannot be set either).
STUDY_SETTINGS = {
    "out_dir": "every run goes in REPORT_DIR/runs/<name>; set the report with --out",
    "time_budget": "every run gets the same budget; set it with --time-budget",
    "max_steps": "every run gets the same steps; set them with --steps",
    "model.max_len": "the study sets it to 8 x block_size for the extrapolation test",
    "model.vocab_size": "the tokenizer decides it",
    "task": "the study compares language models (task 'lm')",
    "model": "the study compares variants of one model; vary its fields instead",
}


# -- the plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One varied field: ``name`` as shown (a model field without its ``model.`` prefix),
    ``key`` as ``attnlab train`` takes it (``model.attention``, ``lr``), and its values."""

    name: str
    key: str
    values: tuple[str, ...]


@dataclass
class Variant:
    """One combination of the varied values and the settings of its run (``overrides`` for
    ``attnlab train --preset``); ``reason`` says why it is not run (``config`` is then None)."""

    name: str  # run directory name
    values: dict[str, str]  # axis name -> value
    overrides: list[str]
    config: TrainConfig | None
    reason: str | None = None


@dataclass
class Study:
    """What :func:`plan_study` checked: the axes and every combination, runnable or not."""

    preset: str
    axes: list[Axis]
    settings: list[str]  # key=value of every run (given, and the study's own)
    variants: list[Variant]
    time_budget: float | None
    steps: int | None

    @property
    def runnable(self) -> list[Variant]:
        return [v for v in self.variants if v.reason is None]


def _model_fields(config: TrainConfig) -> dict[str, Any]:
    """The type of every field of the run's model config, by name."""
    from attnlab.models import config_class

    cls = config_class(config.model)
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def parse_vary(items: Sequence[str], base: TrainConfig) -> list[Axis]:
    """``FIELD=V1,V2,...`` strings as axes. FIELD is a training setting (``lr``) or a field of
    the model's config, bare (``attention``) or with its ``model.`` prefix; ValueError naming
    ``--vary`` for bad syntax, an unknown field (with the closest name), an empty or repeated
    value, a field given twice or one the study sets itself."""
    if not items:
        raise ValueError("--vary: expected at least one FIELD=V1,V2,... (attention=softmax,linear)")
    model_fields = _model_fields(base)
    settings = [k for k in typing.get_type_hints(TrainConfig) if k != "model_overrides"]
    axes: list[Axis] = []
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise ValueError(
                f"--vary: expected FIELD=V1,V2,... (such as attention=softmax,linear), got {item!r}"
            )
        bare = name.removeprefix("model.")
        # A bare name is a training setting when it is one (as for `attnlab train`), else a
        # field of the model's config.
        if name.startswith("model."):
            key = name if bare in model_fields else None
        else:
            key = name if name in settings else f"model.{name}" if name in model_fields else None
        if key is None:
            if name.startswith("model."):
                hint = suggest(bare, model_fields)
                what = "a field of the model config"
            else:
                hint = suggest(name, [*model_fields, *settings])
                what = "a field of the model config or a training setting"
            raise ValueError(f"--vary: {name}: not {what}{hint}")
        if key in STUDY_SETTINGS:
            raise ValueError(f"--vary: {name}: cannot be varied ({STUDY_SETTINGS[key]})")
        values = tuple(v.strip() for v in text.split(","))
        if any(not v for v in values):
            raise ValueError(f"--vary: {name}: expected values separated by commas, got {text!r}")
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"--vary: {name}: value {repeated[0]!r} given more than once")
        if any(a.key == key for a in axes):
            raise ValueError(f"--vary: {name}: given more than once; list its values together")
        axes.append(Axis(bare if key.startswith("model.") else key, key, values))
    return axes


def _check_model(config: TrainConfig) -> None:
    """Build the model config the run will build (as ``attnlab.train.tasks.build_model`` does,
    with the preset's vocabulary size): its own checks refuse impossible combinations."""
    from attnlab.models import config_class

    overrides = {"max_len": config.block_size, **config.model_overrides}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    config_class(config.model).from_preset(config.model, **overrides)


def _settings(overrides: Sequence[str], time_budget: float | None, steps: int | None) -> list[str]:
    """The ``key=value`` settings of every run: the given ones (but none of those the study
    sets per run) and the study's budget."""
    out = []
    for item in overrides:
        key, _ = split_override(item)
        if key in ("out_dir", "model.max_len"):
            raise ValueError(f"{key}: set by the study ({STUDY_SETTINGS[key]})")
        out.append(item)
    keys = {split_override(item)[0] for item in out}
    if time_budget is not None:
        out.append(f"time_budget={time_budget}")
    if steps is not None:
        out.append(f"max_steps={steps}")
    elif "max_steps" not in keys and (time_budget is not None or "time_budget" in keys):
        out.append(f"max_steps={UNCAPPED_STEPS}")
    return out


def _run_name(values: dict[str, str], taken: set[str]) -> str:
    """A directory name for a combination: ``attention-softmax__position-rope``."""
    parts = [f"{k}-{v}" for k, v in values.items()]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(parts)).strip("._") or "run"
    unique, i = name, 2
    while unique in taken:
        unique, i = f"{name}-{i}", i + 1
    taken.add(unique)
    return unique


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def plan_study(
    preset_name: str,
    vary: Sequence[str],
    overrides: Sequence[str] = (),
    *,
    time_budget: float | None = None,
    steps: int | None = None,
) -> Study:
    """Every combination of the ``vary`` values (``FIELD=V1,V2,...``, see :func:`parse_vary`)
    on training preset ``preset_name`` with ``overrides`` (``key=value``, as for ``attnlab
    train``) for every run, checked before anything is trained.

    A combination whose settings or model config are refused is kept with its ``reason``; a
    value refused in every combination it is part of and also on its own by the preset is a
    ValueError naming it (a typo, a kind the model cannot have), as is a study in which no
    combination can run. Bad ``overrides``, ``time_budget`` or ``steps`` are ValueErrors naming
    them."""
    if time_budget is not None and not time_budget > 0:
        raise ValueError(f"--time-budget: expected seconds > 0, got {time_budget}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps: expected an int >= 1, got {steps}")
    from attnlab.models import config_class

    base = preset(preset_name)
    if base.task != "lm":
        raise ValueError(
            f"--preset: the study compares language models (task 'lm'); {preset_name!r} trains "
            f"task {base.task!r}"
        )
    cls = config_class(base.model)
    settings = _settings(overrides, time_budget, steps)
    common = apply_overrides(base, settings, cls)  # unknown keys and bad values: named errors
    _check_model(common)
    if common.task != "lm":
        raise ValueError(
            f"task: the study compares language models (task 'lm'), got {common.task!r}"
        )
    axes = parse_vary(vary, common)
    given = {split_override(item)[0] for item in overrides}
    for axis in axes:
        if axis.key in given or axis.name in given:
            raise ValueError(
                f"--vary: {axis.name}: also set as {axis.key}=...; vary it or set it, not both"
            )

    def configure(items: list[str]) -> tuple[TrainConfig | None, list[str], str | None]:
        try:
            config = apply_overrides(base, items, cls)
            items = [*items, f"model.max_len={max(EXTRAPOLATION_FACTORS) * config.block_size}"]
            config = apply_overrides(base, items, cls)
            _check_model(config)
        except (ValueError, TypeError) as exc:
            return None, items, _one_line(exc)
        return config, items, None

    # A value the preset refuses on its own (a typo, a kind the model cannot have) and that no
    # combination can use is a mistake; one refused only beside other choices is a finding.
    alone = {
        (axis.name, value): configure([f"{axis.key}={value}"])[2]
        for axis in axes
        for value in axis.values
    }
    variants, taken = [], set()
    for combo in itertools.product(*(axis.values for axis in axes)):
        values = {axis.name: value for axis, value in zip(axes, combo, strict=True)}
        varied = [f"{axis.key}={value}" for axis, value in zip(axes, combo, strict=True)]
        config, items, reason = configure([*settings, *varied])
        variants.append(Variant(_run_name(values, taken), values, items, config, reason))
    for (name, value), reason in alone.items():
        used = [v for v in variants if v.values[name] == value]
        if reason is not None and all(v.reason is not None for v in used):
            raise ValueError(f"--vary: {name}={value}: {reason}")
    study = Study(preset_name, axes, settings, variants, time_budget, steps)
    if not study.runnable:
        reasons = "; ".join(f"{v.name}: {v.reason}" for v in variants)
        raise ValueError(f"--vary: no combination can be run ({reasons})")
    return study


# -- measurements --------------------------------------------------------------------------------


def saved_tensor_bytes(
    compute: Callable[[], Any], exclude: Iterable[Tensor] = ()
) -> tuple[Any, int]:
    """``(compute(), bytes)``: the result, and the bytes of the tensors autograd saved for its
    backward pass, each storage counted once (views and repeated saves of one tensor share
    it), leaving out the storages of ``exclude`` (a model's parameters, which exist whatever
    the input). Deterministic, unlike the process's resident memory."""
    skip = {(t.device, t.untyped_storage().data_ptr()) for t in exclude}
    seen: dict[tuple[torch.device, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        key = (t.device, storage.data_ptr())
        if key not in skip:
            seen[key] = max(seen.get(key, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = compute()
    return out, sum(seen.values())


def sequence_lengths(longest: int, shortest: int = 64) -> list[int]:
    """``shortest``, twice that, ... up to ``longest``: 64, 128, ..., 1024."""
    if isinstance(longest, bool) or not isinstance(longest, int) or longest < shortest:
        raise ValueError(f"--measure-max-len: expected an int >= {shortest}, got {longest!r}")
    out = [shortest]
    while out[-1] * 2 <= longest:
        out.append(out[-1] * 2)
    return out


def _lm_loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    logits = model(x).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))


def step_costs(
    model: nn.Module,
    lengths: Sequence[int],
    *,
    batch_size: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """The cost of one training step (forward, loss and backward) of the language model
    ``model`` on random tokens, per sequence length: ``{"seq_len", "time_s", "saved_bytes"}``
    with the median of ``repeats`` timed steps (after one untimed) and the bytes saved for
    backward (:func:`saved_tensor_bytes`, parameters left out); ``{"seq_len", "error"}`` where
    the model cannot run that length."""
    from attnlab.bench.harness import time_fn

    model.train()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    params = list(model.parameters())
    out = []
    for t in lengths:
        ids = torch.randint(0, vocab, (batch_size, t + 1), generator=generator).to(device)
        x, y = ids[:, :-1], ids[:, 1:]

        def step(x=x, y=y) -> None:
            model.zero_grad(set_to_none=True)
            _lm_loss(model, x, y).backward()

        try:
            loss, saved = saved_tensor_bytes(lambda x=x, y=y: _lm_loss(model, x, y), params)
            loss.backward()
            timing = time_fn(step, repeats=repeats, warmup=0, device=device)
        except (RuntimeError, ValueError) as exc:
            out.append({"seq_len": t, "error": _one_line(exc)})
        else:
            out.append({"seq_len": t, "time_s": timing.median_s, "saved_bytes": saved})
        finally:
            model.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def length_losses(
    task,
    model: nn.Module,
    block_size: int,
    *,
    factors: Sequence[int] = EXTRAPOLATION_FACTORS,
    windows: int = 16,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[int, dict[str, Any]]:
    """Validation loss of ``model`` at ``factor`` x ``block_size`` tokens of context, per
    factor (Press et al. 2022's extrapolation test): ``{"loss", "ppl", "tokens"}`` or
    ``{"error"}`` where the model cannot run that length.

    Every length scores the same text, the first ``windows`` x the longest length tokens of the
    language-model task's validation split (fewer when the split is shorter), cut into
    consecutive non-overlapping windows of that length (:meth:`TokenStream.iter_eval`); the
    loss is the mean per-token cross-entropy (the task's loss), the perplexity its exp."""
    stream = task.stream
    longest = max(factors) * block_size
    n_windows = min(windows, (len(stream.val) - 1) // longest)
    model.eval()
    out: dict[int, dict[str, Any]] = {}
    for factor in factors:
        t = factor * block_size
        if n_windows < 1:
            out[factor] = {
                "error": f"the validation split holds {len(stream.val)} tokens, fewer than "
                f"{longest + 1} for one window of {longest}"
            }
            continue
        left = n_windows * longest // t  # windows of this length over the same tokens
        total, count = 0.0, 0
        try:
            for x, y in stream.iter_eval("val", batch_size, t):
                x, y = x[:left].to(device), y[:left].to(device)
                loss = task.loss(model, {"x": x, "y": y})
                total += loss.item() * y.numel()
                count += y.numel()
                left -= len(x)
                if left <= 0:
                    break
        except (RuntimeError, ValueError) as exc:
            out[factor] = {"error": _one_line(exc)}
            continue
        loss = total / count
        out[factor] = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": count}
    return out


# -- the runs ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """What the study learnt about one variant (one row of the report)."""

    name: str
    values: dict[str, str]
    status: str  # "ok", "not run" or "failed"
    reason: str | None = None  # why not run, or how it failed
    run_dir: str | None = None  # relative to the report directory
    log: str | None = None
    overrides: list[str] = field(default_factory=list)
    val_loss: float | None = None
    val_ppl: float | None = None
    steps: int | None = None
    train_s: float | None = None  # training time, evaluations left out
    tokens_per_s: float | None = None  # training tokens / train_s
    wall_s: float | None = None  # the child process, start to end
    peak_rss_mib: float | None = None
    parameters: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)  # step, elapsed_s, val_loss
    extrapolation: dict[int, dict[str, Any]] = field(default_factory=dict)
    step_costs: list[dict[str, Any]] = field(default_factory=list)


def _last_line(log: Path) -> str:
    """The last line of a run's log (after the command line it starts with) that says what
    went wrong: its one-line error, or else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[1:]]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("attnlab: error:")]
    return (errors or lines or [""])[-1]


def train_command(preset_name: str, overrides: Sequence[str], run_dir: Path) -> list[str]:
    """The command line that trains one run: ``attnlab train`` in this interpreter, with plain
    progress lines (the output goes to a log file)."""
    return [
        sys.executable, "-m", "attnlab.cli.main", "train", "--preset", preset_name,
        *overrides, "--out", str(run_dir), "--no-progress",
    ]  # fmt: skip


def train_variant(
    study: Study, variant: Variant, report_dir: Path, *, env: dict[str, str] | None = None
) -> RunResult:
    """Train ``variant`` with ``attnlab train`` in a child process into
    ``report_dir/runs/<name>`` (its output in ``report_dir/logs/<name>.log``) and read what it
    left: status, final validation loss, steps, training speed, the child's peak RSS. A run
    that fails is a result with status "failed" and the last line of its output."""
    run_dir = report_dir / "runs" / variant.name
    log = report_dir / "logs" / f"{variant.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    result = RunResult(
        variant.name,
        variant.values,
        "failed",
        run_dir=str(run_dir.relative_to(report_dir)),
        log=str(log.relative_to(report_dir)),
        overrides=variant.overrides,
    )
    command = train_command(study.preset, variant.overrides, run_dir)
    began = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(command)}\n")
        f.flush()
        child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = _wait4(child.pid)
        except BaseException:  # Ctrl-C reaches the child too; let it save and end first
            child.wait()
            raise
    child.returncode = code = os.waitstatus_to_exitcode(status)
    result.wall_s = time.perf_counter() - began
    # ru_maxrss: KiB on Linux, bytes on macOS.
    result.peak_rss_mib = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if code != 0:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        line = _last_line(log).removeprefix("attnlab: error: ")
        result.reason = f"{line} ({how}; see {result.log})" if line else f"{how}; see {result.log}"
        return result
    try:
        _read_metrics(result, run_dir)
    except (OSError, ValueError, KeyError) as exc:
        result.reason = f"unreadable run: {_one_line(exc)}"
        return result
    result.status = "ok"
    return result


def _wait4(pid: int):
    """``os.wait4(pid, 0)``, retried when a signal interrupts it."""
    while True:
        try:
            return os.wait4(pid, 0)
        except InterruptedError:  # pragma: no cover - Python retries EINTR itself (PEP 475)
            continue


def _read_metrics(result: RunResult, run_dir: Path) -> None:
    """Fill ``result`` from the run's metrics.jsonl (its validation lines) and config.json."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("split") == "val" and "val_loss" in record:
            records.append(record)
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: no validation line")
    final = records[-1]
    result.history = [
        {"step": r["step"], "elapsed_s": r["elapsed_s"], "val_loss": r["val_loss"]} for r in records
    ]
    result.val_loss, result.val_ppl = final["val_loss"], final.get("val_ppl")
    result.steps, result.train_s = final["step"], final.get("train_s")
    train = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["train"]
    # The language-model task trains on batch_size windows of block_size tokens per micro-batch.
    tokens = result.steps * train["grad_accum"] * train["batch_size"] * train["block_size"]
    if result.train_s:
        result.tokens_per_s = tokens / result.train_s


def _measure(
    result: RunResult,
    report_dir: Path,
    *,
    lengths: Sequence[int],
    batch_size: int,
    repeats: int,
    windows: int,
) -> None:
    """Load the run's final weights; count its parameters, run the extrapolation test and
    measure a training step at every length (on a fresh model of the same config whose
    ``max_len`` covers them all)."""
    import attnlab
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import resolve_device

    loaded = attnlab.load(report_dir / result.run_dir, which="latest")
    config = TrainConfig.from_dict(loaded.train, source=f"{result.run_dir}/config.json")
    device = resolve_device(config.device)
    model = loaded.model.to(device)
    result.parameters = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    if config.threads:  # measured as the run trained
        torch.set_num_threads(config.threads)
    try:
        task = make_task(config, model=model, tokenizer=loaded.tokenizer)
        result.extrapolation = length_losses(
            task, model, config.block_size, windows=windows, device=device
        )
        fresh_config = dataclasses.replace(
            loaded.config, max_len=max(loaded.config.max_len, max(lengths))
        )
        torch.manual_seed(config.seed)
        fresh = type(model)(fresh_config).to(device)
        result.step_costs = step_costs(
            fresh, lengths, batch_size=batch_size, repeats=repeats, device=device
        )
    finally:
        torch.set_num_threads(threads)


def run_study(
    study: Study,
    report_dir: str | os.PathLike,
    *,
    measure_max_len: int = 1024,
    measure_batch: int = 1,
    repeats: int = 3,
    eval_windows: int = 16,
    command: str | None = None,
    echo: Callable[[str], object] = print,
) -> list[RunResult]:
    """Train every runnable variant of ``study`` one after the other (:func:`train_variant`),
    measure each trained model (parameters, :func:`length_losses`, :func:`step_costs` at
    64, 128, ... ``measure_max_len`` tokens, batch ``measure_batch``), and write the report
    (:func:`write_report`) into ``report_dir``, which must be new or empty. ``results.json``
    is rewritten after every run, so an interrupted study keeps what it measured."""
    report_dir = Path(report_dir)
    lengths = sequence_lengths(measure_max_len)
    for name, value in (("--measure-batch", measure_batch), ("--repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value}")
    if eval_windows < 1:
        raise ValueError(f"--eval-windows: expected an int >= 1, got {eval_windows}")
    if report_dir.exists() and (not report_dir.is_dir() or any(report_dir.iterdir())):
        raise ValueError(f"--out: {report_dir} is not an empty directory; choose a new one")
    report_dir.mkdir(parents=True, exist_ok=True)
    results = [
        RunResult(v.name, v.values, "not run", reason=v.reason, overrides=v.overrides)
        for v in study.variants
    ]
    runnable = study.runnable
    refused = len(study.variants) - len(runnable)
    echo(
        f"{len(study.variants)} combinations: {len(runnable)} to train"
        + (f", {refused} refused by the model config" if refused else "")
    )
    for i, variant in enumerate(runnable, 1):
        echo(f"[{i}/{len(runnable)}] {variant.name}: training ({' '.join(variant.overrides)})")
        result = train_variant(study, variant, report_dir)
        if result.status == "ok":
            try:
                _measure(
                    result, report_dir, lengths=lengths, batch_size=measure_batch,
                    repeats=repeats, windows=eval_windows,
                )  # fmt: skip
            except (OSError, ValueError, TypeError, RuntimeError) as exc:
                result.status, result.reason = "failed", f"measuring: {_one_line(exc)}"
        shown = (
            f"val loss {result.val_loss:.4f}, {result.steps} steps"
            if result.status == "ok"
            else f"failed: {result.reason}"
        )
        echo(f"[{i}/{len(runnable)}] {variant.name}: {shown}")
        results[study.variants.index(variant)] = result
        _write_results(report_dir, study, results, lengths, command, complete=False)
    write_report(report_dir, study, results, lengths=lengths, command=command, batch=measure_batch)
    return results


# -- the report ----------------------------------------------------------------------------------


def _write_results(
    report_dir: Path,
    study: Study,
    results: list[RunResult],
    lengths: Sequence[int],
    command: str | None,
    *,
    complete: bool,
) -> Path:
    from attnlab.bench.harness import machine_info
    from attnlab.files import atomic_write_text

    data = {
        "preset": study.preset,
        "command": command,
        "complete": complete,
        "axes": [dataclasses.asdict(a) for a in study.axes],
        "settings": study.settings,
        "time_budget": study.time_budget,
        "steps": study.steps,
        "extrapolation_factors": list(EXTRAPOLATION_FACTORS),
        "measure_lengths": list(lengths),
        "machine": machine_info(),
        "runs": [dataclasses.asdict(r) for r in results],
    }
    return atomic_write_text(report_dir / "results.json", json.dumps(data, indent=2) + "\n")


def _cell(value: Any, spec: str = "") -> str:
    return "—" if value is None else format(value, spec)


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def format_results(study: Study, results: Sequence[RunResult]) -> str:
    """The result table as Markdown: one row per combination, varied values first."""
    names = [a.name for a in study.axes]
    head = [*names, "status", "val loss", "tokens/s", "steps", "peak RSS MiB", "parameters"]
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(names) + "---|" + "---:|" * 5,
    ]
    for r in results:
        status = r.status if r.reason is None else f"{r.status}: {r.reason}"
        cells = [
            *(r.values[n] for n in names),
            _escape(status),
            _cell(r.val_loss, ".4f"),
            _cell(r.tokens_per_s, ",.0f"),
            _cell(r.steps),
            _cell(r.peak_rss_mib, ",.0f"),
            _cell(r.parameters, ","),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def format_extrapolation(study: Study, results: Sequence[RunResult]) -> str:
    """Validation loss (perplexity) at each evaluation length, runs by lengths, as Markdown."""
    names = [a.name for a in study.axes]
    head = [*names, *(f"{f}x" for f in EXTRAPOLATION_FACTORS)]
    rows = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(names) + "---:|" * len(head[len(names) :]),
    ]
    for r in results:
        if r.status != "ok":
            continue
        cells = []
        for f in EXTRAPOLATION_FACTORS:
            cell = r.extrapolation.get(f, {"error": "not measured"})
            if "error" in cell:
                cells.append(_escape(f"— ({cell['error']})"))
            else:
                cells.append(f"{cell['loss']:.3f} ({cell['ppl']:.2f})")
        rows.append("| " + " | ".join([*(r.values[n] for n in names), *cells]) + " |")
    return "\n".join(rows)


def _format_costs(study: Study, results: Sequence[RunResult], lengths: Sequence[int]) -> str:
    names = [a.name for a in study.axes]
    head = [*names, *(f"T={t}" for t in lengths)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(names) + "---:|" * len(lengths)]
    for r in results:
        if r.status != "ok":
            continue
        by_len = {c["seq_len"]: c for c in r.step_costs}
        cells = []
        for t in lengths:
            c = by_len.get(t, {"error": "not measured"})
            cells.append(
                _escape(f"— ({c['error']})")
                if "error" in c
                else f"{c['saved_bytes'] / 2**20:,.1f} MiB, {c['time_s'] * 1e3:,.0f} ms"
            )
        rows.append("| " + " | ".join([*(r.values[n] for n in names), *cells]) + " |")
    return "\n".join(rows)


def _plot(
    path: Path, draw: Callable[[Any], None], *, xlabel: str, ylabel: str, title: str, log=False
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from attnlab.files import atomic_write

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    try:
        draw(ax)
        if log:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)
    return path


def _label(result: RunResult) -> str:
    return ", ".join(f"{k}={v}" for k, v in result.values.items())


def _styles(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """A line style per run: the first varied field's value picks the dash and marker, the
    other fields' values the colour, so that runs sharing a choice look alike."""
    import matplotlib

    dashes, markers = ("-", "--", ":", "-."), ("o", "s", "^", "D")
    firsts: dict[str, int] = {}
    rests: dict[tuple[str, ...], int] = {}
    out = []
    for r in results:
        values = list(r.values.values())
        first = firsts.setdefault(values[0] if values else "", len(firsts))
        rest = rests.setdefault(tuple(values[1:]), len(rests))
        out.append((first, rest))
    palette = matplotlib.colormaps["tab10" if len(rests) <= 10 else "tab20"].colors
    return [
        {
            "color": palette[rest % len(palette)],
            "linestyle": dashes[first % len(dashes)],
            "marker": markers[first % len(markers)],
        }
        for first, rest in out
    ]


def _figures(report_dir: Path, results: Sequence[RunResult], batch: int) -> dict[str, Path]:
    """The report's PNGs; each plots one line per run that finished."""
    done = [r for r in results if r.status == "ok"]
    styles = _styles(done)

    def curves(x: str) -> Callable[[Any], None]:
        def draw(ax) -> None:
            for r, style in zip(done, styles, strict=True):
                points = [(h[x], h["val_loss"]) for h in r.history]
                ax.plot(*zip(*points, strict=True), ms=3, label=_label(r), **style)

        return draw

    def costs(key: str, scale: float) -> Callable[[Any], None]:
        def draw(ax) -> None:
            for r, style in zip(done, styles, strict=True):
                points = [(c["seq_len"], c[key] * scale) for c in r.step_costs if key in c]
                if points:
                    ax.plot(*zip(*points, strict=True), ms=3, label=_label(r), **style)

        return draw

    def extrapolation(ax) -> None:
        for r, style in zip(done, styles, strict=True):
            points = [(f, c["loss"]) for f, c in r.extrapolation.items() if "loss" in c]
            if points:
                ax.plot(*zip(*points, strict=True), ms=3, label=_label(r), **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(EXTRAPOLATION_FACTORS), [f"{f}x" for f in EXTRAPOLATION_FACTORS])

    return {
        "time": _plot(
            report_dir / "val_loss_time.png", curves("elapsed_s"),
            xlabel="wall-clock seconds (training and evaluations)", ylabel="validation loss",
            title="Validation loss against time",
        ),
        "steps": _plot(
            report_dir / "val_loss_steps.png", curves("step"),
            xlabel="optimiser step", ylabel="validation loss",
            title="Validation loss against steps",
        ),
        "memory": _plot(
            report_dir / "step_memory.png", costs("saved_bytes", 1 / 2**20), log=True,
            xlabel="sequence length (tokens)", ylabel="MiB saved for backward",
            title=f"Activation memory of one training step (batch {batch})",
        ),
        "step_time": _plot(
            report_dir / "step_time.png", costs("time_s", 1e3), log=True,
            xlabel="sequence length (tokens)", ylabel="ms (median)",
            title=f"Time of one training step: forward + backward (batch {batch})",
        ),
        "extrapolation": _plot(
            report_dir / "extrapolation.png", extrapolation,
            xlabel="evaluation length / training context", ylabel="validation loss",
            title="Length extrapolation",
        ),
    }  # fmt: skip


def write_report(
    report_dir: str | os.PathLike,
    study: Study,
    results: Sequence[RunResult],
    *,
    lengths: Sequence[int],
    command: str | None = None,
    batch: int = 1,
) -> Path:
    """Write ``results.json``, the figures and ``report.md`` into ``report_dir``; returns the
    report's path."""
    from attnlab.bench.harness import machine_info
    from attnlab.files import atomic_write_text

    report_dir = Path(report_dir)
    results = list(results)
    _write_results(report_dir, study, results, lengths, command, complete=True)
    figures = _figures(report_dir, results, batch)
    machine = machine_info()
    if study.steps is not None:
        budget = f"{study.steps} steps each"
    elif study.time_budget is not None:
        budget = f"{study.time_budget:g} s each (training and evaluations; the clock ends the run)"
    else:
        budget = "the preset's settings"
    settings = " ".join(f"`{s}`" for s in study.settings) or "none"
    factor = max(EXTRAPOLATION_FACTORS)
    lines = [
        f"# attnlab compare: {study.preset}",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        f"Every run: preset `{study.preset}`, the same seed and data, {budget}; settings "
        f"{settings}; `model.max_len` = {factor} x `block_size`. Machine: {machine['cpu']}, "
        f"{machine['usable_cores']} cores, torch {machine['torch']}. Run directories are in "
        "`runs/`, their output in `logs/`, every number in `results.json`.",
        "",
        "## Results",
        "",
        "Validation loss: the run's final evaluation (`metrics.jsonl`). Tokens/s: training "
        "tokens over training time, evaluations left out. Peak RSS: the training process's "
        "maximum resident memory (`os.wait4`), the Python interpreter and torch included.",
        "",
        format_results(study, results),
        "",
        "## Validation loss",
        "",
        f"![validation loss against time]({figures['time'].name})",
        "",
        f"![validation loss against steps]({figures['steps'].name})",
        "",
        "## One training step against sequence length",
        "",
        f"A forward pass, the cross-entropy loss and the backward pass of each trained model's "
        f"architecture (fresh weights) on random tokens, batch {batch}. Memory: the bytes of "
        "the tensors autograd saves for the backward pass "
        "(`torch.autograd.graph.saved_tensors_hooks`), each storage counted once and the "
        "parameters left out: the activation memory of the step, deterministic, unlike the "
        "resident memory of a process. Time: the median of several steps on this (shared) "
        "machine.",
        "",
        _format_costs(study, results, lengths),
        "",
        f"![memory of one step]({figures['memory'].name})",
        "",
        f"![time of one step]({figures['step_time'].name})",
        "",
        "## Length extrapolation",
        "",
        "Validation loss (perplexity) at 1x, 2x, 4x and 8x the training context (Press et al. "
        "2022): every length scores the same validation tokens, cut into consecutive "
        "non-overlapping windows of that length. Learned positions past the training context "
        "were never trained.",
        "",
        format_extrapolation(study, results),
        "",
        f"![length extrapolation]({figures['extrapolation'].name})",
        "",
    ]
    return atomic_write_text(report_dir / "report.md", "\n".join(lines))
