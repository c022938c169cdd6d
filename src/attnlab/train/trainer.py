"""The training loop shared by every task.

AdamW with decay on matrices only, linear warm-up then cosine decay, gradient clipping and
accumulation, bf16 autocast on GPUs and CPUs that are fast at it, optional ``torch.compile``;
evaluation and an atomic checkpoint every ``eval_every`` steps (the last ``keep_last`` kept, plus
the best).
The loop itself is short; the parts live beside it: :class:`~attnlab.train.schedule.Schedule`
(the learning rate), :class:`~attnlab.train.budget.Pace` and
:class:`~attnlab.train.budget.Budget` (speed, time left, the schedule refitted to a time
budget), :class:`~attnlab.train.runlog.RunLog` (metrics.jsonl, progress bar or plain lines,
loss plot) and :mod:`~attnlab.train.checkpoint`.

A run directory has one writer at a time (:func:`attnlab.files.lock_dir`); a new run refuses a
directory that holds anything but an attnlab run, and a run that fails before its first
checkpoint removes what it wrote.

Launched by torchrun, the same loop runs on every rank under the plan ``parallel`` names
(:mod:`attnlab.distributed`: DDP, FSDP2, tensor or context parallel, applied from outside the
model): each data-parallel rank keeps its rows of one global batch, rank 0 alone logs and writes,
and checkpoints are DCP shards that resume on any number of ranks.

Runs are deterministic: batches come from a ``torch.Generator`` whose state is checkpointed with
the model, the optimiser, the schedule and the global RNG, so ``resume=True`` continues exactly
where the interrupted run was, and its final weights equal those of a run that was never stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.distributed.parallelize import parallelize
from attnlab.distributed.world import SINGLE, World, join, launched
from attnlab.files import LOCK_NAME, atomic_write_text, lock_dir, writing
from attnlab.precision import resolve_dtype
from attnlab.train import checkpoint
from attnlab.train.budget import Budget, Pace
from attnlab.train.config import TrainConfig
from attnlab.train.runlog import RunLog, SilentLog, plot_losses, truncate_metrics
from attnlab.train.schedule import Schedule, lr_at


@dataclass
class RunResult:
    run_dir: Path
    step: int  # optimiser steps done
    metrics: dict[str, float]  # the last evaluation
    best: dict[str, float] | None  # the best evaluation
    elapsed: float  # seconds of this process's training
    sample: str | None = None  # text sampled at the end (language models)
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluations of this process


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
    """The torch device ``name`` ("auto", "cpu", "cuda", "cuda:1") names; ValueError when it
    is not a device or not available."""
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
    """The autocast context of the run: bf16 when asked, or for "auto" on a device that computes
    bf16 faster than fp32 (:func:`attnlab.precision.fast_bf16`: CUDA GPUs that support it, CPUs
    with AVX512-BF16 or AMX); none (fp32) otherwise. Weights and optimiser state stay fp32."""
    if resolve_dtype(config.precision, device) != torch.bfloat16:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


class Trainer:
    """Runs ``task`` (see :mod:`attnlab.train.tasks`) under ``config``.

    ``progress``: a progress bar (True), plain lines every ``log_every`` steps (False), or the
    bar on a terminal only (None). ``echo`` prints lines; ``clock`` gives the time in seconds
    (``time.perf_counter``; tests pass a simulated one).
    """

    def __init__(
        self,
        config: TrainConfig,
        task,
        *,
        progress: bool | None = None,
        echo: Callable[[str], object] = print,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.config = config
        self.task = task
        self.run_dir = Path(config.out_dir)
        self.world = join_world(config)
        self.device = self.world.device if self.world.distributed else resolve_device(config.device)
        self.autocast = autocast_for(config, self.device)
        self.progress = progress
        self.echo = echo if self.world.is_main else _silent
        self.clock = clock
        # The model stays single-device; the plan wraps or shards it from outside.
        self.parallel = parallelize(
            task.model.to(self.device),
            config.parallel,
            self.world,
            bf16=resolve_dtype(config.precision, self.device) == torch.bfloat16,
            activation_checkpointing=config.activation_checkpointing,
        )
        self.model = self.parallel.model
        task.shard_data(self.world.rank % self.parallel.data_ranks, self.parallel.data_ranks)
        self.optimizer = make_optimizer(self.parallel.module, config, self.device)
        # The data generator is the same on every rank (each keeps its rows of one global
        # batch); dropout differs between ranks.
        self.generator = torch.Generator().manual_seed(config.seed)
        if self.world.distributed:
            torch.manual_seed(config.seed + self.world.rank)
        self.step = 0
        self.schedule = Schedule(config, config.max_steps)
        self.last_lr = self.schedule.lr(0)
        self.best: dict[str, float] | None = None
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        module = self.parallel.module
        self.forward = torch.compile(module) if config.compile else module
        self.pace: Pace | None = None
        self.budget: Budget | None = None
        self.log: RunLog | None = None
        self.overhead_s = 0.0  # seconds of evaluations and checkpoints in this process
        self._eval_s: float | None = None

    @property
    def total(self) -> int:
        """The step the schedule ends at (refitted during a run with a time budget)."""
        return self.schedule.total

    # -- state -----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        """What every rank shares (the optimizer's state too, in a one-process run)."""
        shared = {} if self.world.distributed else {"optimizer": self.optimizer.state_dict()}
        return {
            **shared,
            "step": self.step,
            "total": self.schedule.total,
            "schedule": self.schedule.state(),
            "max_steps": self.config.max_steps,
            "best": self.best,
            "eval_s": self.pace.eval_s if self.pace is not None else None,
            "rng": {**_rng_state(), "data": self.generator.get_state()},
            "task": self.task.state(),
        }

    def _restore(self, path: Path) -> None:
        state = checkpoint.load_state(path)
        self._restore_weights(path, state)
        self.step, self.best = state["step"], state["best"]
        self._eval_s = state.get("eval_s")  # what an evaluation cost the interrupted run
        # The schedule continues unchanged unless this resume asks for another length.
        if state["max_steps"] != self.config.max_steps:
            self.schedule = Schedule(self.config, self.config.max_steps)
        elif "schedule" in state:
            self.schedule.load_state(state["schedule"])
        else:  # written before schedules kept their state
            self.schedule = Schedule(self.config, state["total"])
        own = checkpoint.load_rank_state(path, self.world.rank)
        if own is not None:
            _set_rng_state(own)
        elif self.world.is_main:  # written by one process, or by fewer ranks
            _set_rng_state(state["rng"])
        else:  # a rank the writing run did not have: a fresh seed of its own
            torch.manual_seed(self.config.seed + self.world.rank + self.step)
        self.generator.set_state(state["rng"]["data"])
        self.task.load_state(state["task"])

    def _restore_weights(self, path: Path, state: dict[str, Any]) -> None:
        """Weights and optimizer state from a one-process checkpoint or from DCP shards written
        on any number of ranks, into this run's layout."""
        from attnlab.distributed import checkpoint as sharded

        if sharded.is_sharded(path):
            checkpoint.check_fits(self.model, path)  # another model: the fields that differ
            sharded.load_states(path, self.model, self.optimizer)
        elif self.parallel.sharded:  # full tensors in, each rank keeps its shards
            from attnlab.loader import load

            weights = load(path).model.state_dict()
            sharded.set_full_states(self.model, self.optimizer, weights, state["optimizer"])
        else:
            checkpoint.load_weights(checkpoint.unwrap(self.model), path)
            self.optimizer.load_state_dict(state["optimizer"])

    def save(self, is_best: bool = False) -> Path:
        meta = {
            "train": self.config.to_dict(),
            "metrics": self.last_metrics,
            "tokenizer": self.task.tokenizer_ref,
        }
        if self.world.distributed:
            return checkpoint.save_sharded(
                self.run_dir,
                self.step,
                self.model,
                self.optimizer,
                self._state(),
                _rng_state(),
                meta,
                self.world,
                keep_last=self.config.keep_last,
                is_best=is_best,
            )
        return checkpoint.save(
            self.run_dir,
            self.step,
            self.model,
            self._state(),
            meta,
            keep_last=self.config.keep_last,
            is_best=is_best,
        )

    # -- one step, one evaluation ----------------------------------------------------------

    def _train_step(self) -> tuple[float, int]:
        """One optimiser step over ``grad_accum`` micro-batches: (mean loss, tokens)."""
        c = self.config
        self.model.train()
        if self.budget is not None:  # the clock places the decay (see Budget.decay_progress)
            # Every rank follows rank 0's clock: the same learning rate everywhere.
            progress = self.world.broadcast(self.budget.decay_progress(self.step, self.schedule))
            self.schedule.move_to(self.step, progress)
        self.last_lr = lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total_loss, tokens = 0.0, 0
        for _ in range(c.grad_accum):
            batch = _to(self.task.next_batch(self.generator), self.device)
            tokens += self.task.tokens(batch) * self.parallel.data_ranks
            batch = self.parallel.shard_batch(batch)
            with self.autocast():
                loss = self.task.loss(self.forward, batch)
            (loss / c.grad_accum).backward()
            total_loss += loss.item() / c.grad_accum
        if c.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return self.world.mean(total_loss), tokens

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with self.autocast():
            metrics = self.task.evaluate(self.parallel.eval_module, self.device)
        self.model.train()
        return metrics

    def _is_better(self, metrics: dict[str, float]) -> bool:
        key, higher = self.task.metric, self.task.higher_is_better
        if self.best is None:
            return True
        return metrics[key] > self.best[key] if higher else metrics[key] < self.best[key]

    def _evaluate_and_save(self, save: bool = True) -> None:
        """Evaluate, log, checkpoint (unless ``save`` is False) and plot; the time it takes is
        measured apart from the training steps (``train_s`` leaves it out; the budget plans
        for it)."""
        began = self.clock()
        metrics = self.evaluate()
        self.last_metrics = metrics
        elapsed = began - self.pace.started
        times = {"elapsed_s": elapsed, "train_s": elapsed - self.overhead_s}
        self.history.append({"step": self.step, **metrics, **times})
        self.log.record({"step": self.step, "split": "val", **metrics, **times})
        if save:
            better = self._is_better(metrics)
            if better:
                self.best = {**metrics, "step": self.step}
            self.save(is_best=better)
        self.log.evaluated(self.step, metrics)
        seconds = self.clock() - began
        self.overhead_s += seconds
        self.pace.evaluation_done(seconds)

    def _refit(self) -> None:
        """With a time budget: end the schedule where the recent pace says the budget ends."""
        if self.budget is not None:
            self.schedule.set_total(self.step, self.world.broadcast(self.budget.fit(self.step)))
            self.log.set_total(self.schedule.total)

    def _log_train(self, loss: float) -> None:
        c = self.config
        self.log.train(
            step=self.step,
            total=self.schedule.total,
            loss=loss,
            lr=self.last_lr,
            tokens_per_s=self.pace.tokens_per_s(),
            elapsed=self.pace.elapsed(),
            left=self.pace.seconds_left(self.step, self.schedule.total, c.eval_every),
        )

    # -- the run ---------------------------------------------------------------------------

    def fit(self, *, resume: bool = False) -> RunResult:
        """Train to ``max_steps`` (or the time budget), evaluating and checkpointing on the
        way; Ctrl-C (or SIGTERM) saves a checkpoint of the last complete step and re-raises (in
        one process: a distributed run, whose ranks may be gone, keeps its last checkpoint).

        The run directory is locked for the whole run; errors (a directory in use or not an
        attnlab run, nothing to resume, a full disk) are ValueErrors naming what failed."""
        # Rank 0 holds the lock and makes the checks; every rank gets their outcome.
        lock = lock_dir if self.world.is_main else _no_lock
        with lock(self.run_dir, "train", argument="out_dir", echo=self.echo):
            fresh = self.world.agree(lambda: check_run_dir(self.run_dir, resume))
            try:
                self._open_run_dir(resume)
                return self._run()
            except BaseException:
                # Nothing half-made stays behind: without a checkpoint there is nothing to
                # resume, so a run that began in an empty directory takes its files away.
                if self.world.is_main and fresh and checkpoint.latest(self.run_dir) is None:
                    _empty(self.run_dir)
                raise

    def _open_run_dir(self, resume: bool) -> None:
        """Restore the checkpoint (resume) or start afresh; write the tokenizer and config."""
        metrics = self.run_dir / "metrics.jsonl"
        if resume:
            last = checkpoint.latest(self.run_dir)
            self._restore(last)
            self.echo(f"resumed from {last} (step {self.step})")
        if not self.world.is_main:
            return
        if resume:
            truncate_metrics(metrics, self.step)
        else:
            with writing("metrics", metrics):
                metrics.unlink(missing_ok=True)
        with writing("tokenizer", self.run_dir / "tokenizer"):
            self.task.save_tokenizer(self.run_dir)
        config = {"train": self.config.to_dict(), **checkpoint.model_meta(self.model)}
        path = self.run_dir / "config.json"
        with writing("config", path):
            atomic_write_text(path, json.dumps(config, indent=2) + "\n")

    def _run(self) -> RunResult:
        c = self.config
        self.pace = Pace(self.clock, window=max(10, c.log_every), eval_s=self._eval_s)
        self.overhead_s = 0.0
        if c.time_budget:
            self.budget = Budget(
                c.time_budget, self.pace, max_steps=c.max_steps, eval_every=c.eval_every
            )
        self.log = (RunLog if self.world.is_main else SilentLog)(
            self.run_dir,
            total=self.schedule.total,
            initial=self.step,
            progress=self.progress,
            echo=self.echo,
        )
        try:
            with _sigterm_as_interrupt():
                if self.budget is not None and self.pace.eval_s is None:
                    # The budget keeps time for the final evaluation from the start, so it
                    # needs to know what one costs: evaluate the starting model (no checkpoint).
                    self._evaluate_and_save(save=False)
                self._train()
                self._evaluate_and_save()
        except KeyboardInterrupt:
            self.log.close()
            if self.world.distributed:
                # Saving takes every rank, and the signal may come from a launcher stopping
                # the run because a rank died: do not wait for one that may be gone.
                last = checkpoint.latest(self.run_dir)
                where = f"{last.name}" if last is not None else "none yet"
                self.echo(
                    f"interrupted at step {self.step}; the last checkpoint is {where}: "
                    "continue with --resume"
                )
                raise
            path = self.save()
            self.echo(f"interrupted: saved {path} (step {self.step}); continue with --resume")
            raise
        finally:
            self.log.close()
        sample = self._finish()
        return RunResult(
            self.run_dir,
            self.step,
            self.last_metrics,
            self.best,
            self.pace.elapsed(),
            sample,
            self.history,
        )

    def _finish(self) -> str | None:
        """The task's closing output (an LM's sample), made by rank 0 alone on the whole model
        (gathered from the ranks' shards under fsdp and tp: every rank takes part)."""
        model = self.parallel.release() if self.parallel.release else self.model
        if self.parallel.sharded:
            from attnlab.distributed.checkpoint import full_model

            model = full_model(self.model, self.world)
        if not self.world.is_main:
            return None
        with writing("sample", self.run_dir / "sample.txt"):
            return self.task.finish(model, self.run_dir, self.device)

    def _train(self) -> None:
        """Steps until the schedule ends or the time budget runs out, with the training lines,
        refits of the schedule and the evaluations on the way."""
        c = self.config
        while self.step < self.schedule.total:
            loss, tokens = self._train_step()
            self.pace.step_done(tokens)
            if self.step % c.log_every == 0 or self.step == self.schedule.total:
                self._refit()
                self._log_train(loss)
            self.log.advance()
            if self.step % c.eval_every == 0 and self.step < self.schedule.total:
                self._evaluate_and_save()
                self._refit()  # evaluations cost time too
            if self.budget is not None and self.world.broadcast(self.budget.exhausted()):
                self.log.write(
                    f"time budget of {c.time_budget:g} s reached at step {self.step} (it "
                    "includes the final evaluation; anything after that, such as a sample, "
                    "is extra)"
                )
                break


def join_world(config: TrainConfig) -> World:
    """The ranks of this run: :data:`~attnlab.distributed.world.SINGLE` for one process; a
    ValueError for a run launched on several ranks without a plan to share the work."""
    if not launched():
        if config.parallel != "none":
            check = parallelize  # refuses a plan without ranks, with the torchrun line
            check(nn.Identity(), config.parallel, SINGLE)
        return SINGLE
    if config.parallel == "none":
        if os.environ.get("WORLD_SIZE") == "1":  # torchrun --nproc-per-node 1
            return SINGLE
        raise ValueError(
            f"parallel: this process is one of {os.environ.get('WORLD_SIZE', 'several')} ranks "
            "(launched by torchrun) but parallel=none would train the same model on each; "
            "expected parallel=ddp, fsdp, tp or cp"
        )
    return join(config.device, timeout=config.dist_timeout)


def _rng_state() -> dict[str, Any]:
    """This process's random number generators (dropout, sampling)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((3, tuple(rng["python"]), None))


def _silent(text: str) -> None:
    """What ranks other than 0 print: nothing (rank 0 speaks for the run)."""


@contextlib.contextmanager
def _no_lock(*args, **kwargs):
    yield


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


def check_run_dir(run_dir: Path, resume: bool) -> bool:
    """Refuse a directory a run must not write into (ValueError): to resume, one without a
    checkpoint; to start, one that holds checkpoints, or anything but an attnlab run. Returns
    whether it is empty (or missing). Call it while holding the directory's lock."""
    run_dir = Path(run_dir)
    entries = sorted(p.name for p in run_dir.iterdir() if not _is_lock(p))
    last = checkpoint.latest(run_dir)
    if resume:
        if last is None:
            raise ValueError(f"resume: no checkpoint in {run_dir} to resume from")
        return False
    if last is not None:
        raise ValueError(
            f"out_dir: {run_dir} already holds checkpoints; pass --resume to continue that "
            "run, or choose another out_dir"
        )
    if entries and not checkpoint.is_run_dir(run_dir):
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ValueError(
            f"out_dir: {run_dir} is not empty and not an attnlab run (it holds {shown}); "
            "choose a new or empty directory"
        )
    return not entries


def _is_lock(path: Path) -> bool:
    return path.name.startswith(LOCK_NAME)  # the lock file and its temporaries


def _empty(directory: Path) -> None:
    """Remove everything in ``directory`` but its lock."""
    for path in directory.iterdir():
        if _is_lock(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


__all__ = [
    "RunResult",
    "Trainer",
    "autocast_for",
    "check_run_dir",
    "lr_at",
    "make_optimizer",
    "plot_losses",
    "resolve_device",
]
