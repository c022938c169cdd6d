"""The training loop shared by every task.

AdamW with decay on matrices only, linear warm-up then cosine decay, gradient clipping and
accumulation, bf16 autocast on GPUs that are fast at it, optional ``torch.compile``; evaluation
and an atomic checkpoint every ``eval_every`` steps (the last ``keep_last`` kept, plus the best);
metrics in ``metrics.jsonl``, a loss curve in ``loss.png`` and a progress bar with loss, tokens
per second and time left.

Runs are deterministic: batches come from a ``torch.Generator`` whose state is checkpointed with
the model, the optimiser and the global RNG, so ``resume=True`` continues exactly where the
interrupted run was, and its final weights equal those of a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.files import atomic_write_text
from attnlab.train import checkpoint
from attnlab.train.config import TrainConfig


@dataclass
class RunResult:
    run_dir: Path
    step: int  # optimiser steps done
    metrics: dict[str, float]  # the last evaluation
    best: dict[str, float] | None  # the best evaluation
    elapsed: float  # seconds of this process's training
    sample: str | None = None  # text sampled at the end (language models)
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluations of this process


def lr_at(step: int, config: TrainConfig, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up to ``lr`` over
    ``warmup_steps`` (at most a fifth of a schedule shortened to fit a time budget), then
    cosine decay to ``min_lr`` at step ``total``."""
    warmup = min(config.warmup_steps, total)
    if total < config.max_steps:  # the schedule was shortened to fit a time budget
        warmup = min(warmup, max(1, total // 5))
    if step < warmup:
        return config.lr * (step + 1) / (warmup + 1)
    if step >= total:
        return config.min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device):
    """AdamW; weight decay on parameters with two or more dimensions (weight matrices and
    embedding tables, as in nanoGPT), none on biases, norm weights and other vectors."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), fused=fused or None
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: expected auto, cpu or cuda[:N], got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    return device


def autocast_for(config: TrainConfig, device: torch.device):
    """The autocast context of the run: bf16 on CUDA devices with fast bf16 (or when asked)."""
    use_bf16 = config.precision == "bf16" or (
        config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()
    )
    if not use_bf16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


class Trainer:
    """Runs ``task`` (see :mod:`attnlab.train.tasks`) under ``config``."""

    def __init__(self, config: TrainConfig, task, *, progress: bool | None = None, echo=print):
        self.config = config
        self.task = task
        self.run_dir = Path(config.out_dir)
        self.device = resolve_device(config.device)
        self.autocast = autocast_for(config, self.device)
        self.progress = progress
        self.echo = echo
        self.model = task.model.to(self.device)
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.total = config.max_steps
        self.best: dict[str, float] | None = None
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.forward = torch.compile(self.model) if config.compile else self.model

    # -- state -----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total": self.total,
            "max_steps": self.config.max_steps,
            "best": self.best,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
                "data": self.generator.get_state(),
            },
            "task": self.task.state(),
        }

    def _restore(self, path: Path) -> None:
        checkpoint.load_weights(checkpoint.unwrap(self.model), path)
        state = checkpoint.load_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best = state["step"], state["best"]
        # The schedule continues unchanged unless this resume asks for another length.
        same = state["max_steps"] == self.config.max_steps
        self.total = state["total"] if same else self.config.max_steps
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate((3, tuple(rng["python"]), None))
        self.generator.set_state(rng["data"])
        self.task.load_state(state["task"])

    def save(self, is_best: bool = False) -> Path:
        meta = {
            "train": self.config.to_dict(),
            "metrics": self.last_metrics,
            "tokenizer": self.task.tokenizer_ref,
        }
        return checkpoint.save(
            self.run_dir,
            self.step,
            self.model,
            self._state(),
            meta,
            keep_last=self.config.keep_last,
            is_best=is_best,
        )

    # -- loop ------------------------------------------------------------------------------

    def _train_step(self) -> tuple[float, int]:
        """One optimiser step over ``grad_accum`` micro-batches: (mean loss, tokens)."""
        c = self.config
        self.model.train()
        lr = lr_at(self.step, c, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss, tokens = 0.0, 0
        for _ in range(c.grad_accum):
            batch = _to(self.task.train_batch(self.generator), self.device)
            with self.autocast():
                loss = self.task.loss(self.forward, batch)
            (loss / c.grad_accum).backward()
            total_loss += loss.item() / c.grad_accum
            tokens += self.task.tokens(batch)
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total_loss, tokens

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with self.autocast():
            metrics = self.task.evaluate(self.model, self.device)
        self.model.train()
        return metrics

    def _is_better(self, metrics: dict[str, float]) -> bool:
        key, higher = self.task.metric, self.task.higher_is_better
        if self.best is None:
            return True
        return metrics[key] > self.best[key] if higher else metrics[key] < self.best[key]

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _evaluate_and_save(self) -> None:
        began = time.perf_counter()
        metrics = self.evaluate()
        self.last_metrics = metrics
        better = self._is_better(metrics)
        if better:
            self.best = {**metrics, "step": self.step}
        times = {
            "elapsed_s": began - self._start,
            "train_s": began - self._start - self.overhead_s,  # without evaluation and saving
        }
        self.history.append({"step": self.step, **metrics, **times})
        self._log({"step": self.step, "split": "val", **metrics, **times})
        self.save(is_best=better)
        plot_losses(self.run_dir)
        self._last_eval_s = time.perf_counter() - began
        self.overhead_s += self._last_eval_s
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self._write(f"step {self.step}: {shown}")

    def _fit_budget(self, elapsed: float, steps: int) -> None:
        """Set the schedule's length so that training ends within the time budget, from the
        time per step so far (evaluations and checkpoints included), keeping time for the
        final evaluation."""
        c = self.config
        per_step = elapsed / steps
        reserve = self._last_eval_s
        fits = self.step + int((c.time_budget - elapsed - reserve) / per_step * 0.98)
        self.total = max(self.step + 1, min(c.max_steps, fits))
        self._bar.total = self.total
        self._bar.refresh()

    def _write(self, text: str) -> None:
        if self._bar is not None and not self._bar.disable:
            self._bar.write(text)
        else:
            self.echo(text)

    def _prepare_run_dir(self, resume: bool) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last = checkpoint.latest(self.run_dir)
        if resume:
            if last is None:
                raise ValueError(f"resume: no checkpoint in {self.run_dir} to resume from")
            self._restore(last)
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
            self.echo(f"resumed from {last} (step {self.step})")
        else:
            if last is not None:
                raise ValueError(
                    f"out_dir: {self.run_dir} already holds checkpoints; pass --resume to "
                    "continue that run, or choose another out_dir"
                )
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self.task.save_tokenizer(self.run_dir)
        config = {"train": self.config.to_dict(), **checkpoint.model_meta(self.model)}
        atomic_write_text(self.run_dir / "config.json", json.dumps(config, indent=2) + "\n")

    def fit(self, *, resume: bool = False) -> RunResult:
        """Train to ``max_steps`` (or the time budget), evaluating and checkpointing on the
        way; Ctrl-C saves a checkpoint of the last complete step and re-raises."""
        c = self.config
        self._bar = None
        self._prepare_run_dir(resume)
        start = self._start = time.perf_counter()
        self.overhead_s = self._last_eval_s = 0.0
        budget_fitted = resume and self.total != c.max_steps
        try:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=self.total,
                initial=self.step,
                disable=None if self.progress is None else not self.progress,
                unit="step",
                dynamic_ncols=True,
            )
            window_tokens, window_start, fit_from = 0, time.perf_counter(), self.step
            with _sigterm_as_interrupt():
                while self.step < self.total:
                    loss, tokens = self._train_step()
                    window_tokens += tokens
                    now = time.perf_counter()
                    if c.time_budget and not budget_fitted and self.step - fit_from == 10:
                        self._fit_budget(now - start, self.step - fit_from)
                    if self.step % c.log_every == 0 or self.step == self.total:
                        rate = window_tokens / max(now - window_start, 1e-9)
                        record = {
                            "step": self.step,
                            "split": "train",
                            "loss": loss,
                            "lr": lr_at(self.step - 1, c, self.total),
                            "tokens_per_s": rate,
                            "elapsed_s": now - start,
                        }
                        self._log(record)
                        self._bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
                        window_tokens, window_start = 0, now
                    self._bar.update(1)
                    if self.step % c.eval_every == 0 and self.step < self.total:
                        self._evaluate_and_save()
                        window_tokens, window_start = 0, time.perf_counter()
                        if c.time_budget and not budget_fitted:  # evaluations cost time too
                            self._fit_budget(window_start - start, self.step - fit_from)
                    if c.time_budget and now - start > c.time_budget:
                        self._write(f"time budget of {c.time_budget:g} s reached")
                        break
            self._evaluate_and_save()
        except KeyboardInterrupt:
            if self._bar is not None:
                self._bar.close()
            path = self.save()
            self.echo(f"interrupted: saved {path} (step {self.step}); continue with --resume")
            raise
        finally:
            if self._bar is not None:
                self._bar.close()
        sample = self.task.finish(self.model, self.run_dir, self.device)
        return RunResult(
            self.run_dir,
            self.step,
            self.last_metrics,
            self.best,
            time.perf_counter() - start,
            sample,
            self.history,
        )


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler stopping the job) is handled like Ctrl-C: save, then stop."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` (by the run that was interrupted)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def plot_losses(run_dir: Path) -> Path | None:
    """Write ``loss.png`` (training and validation loss against step) from metrics.jsonl."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return None
    train, val = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "train" and "loss" in record:
            train.append((record["step"], record["loss"]))
        elif record.get("split") == "val" and "val_loss" in record:
            val.append((record["step"], record["val_loss"]))
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", linewidth=1, alpha=0.8)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    tmp = out.with_name(f".loss.png.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, out)
    return out
