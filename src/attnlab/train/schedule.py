"""The learning-rate schedule: linear warm-up, then cosine decay to ``min_lr`` at step ``total``.

Without a time budget the schedule is :func:`lr_at` over ``max_steps``. With one, the run's
length in steps is only known as the run goes, and two things can move the decay along:

* the total: refitted every ``log_every`` steps (:mod:`attnlab.train.budget`). Recomputing the
  cosine for a new ``total`` from scratch would move the run back up the curve whenever the
  total grows (a learning rate that jumps up late in a run), so :meth:`Schedule.set_total`
  keeps the decay's progress and spreads the rest over the steps now left;
* the clock: a budgeted run places the decay by the share of its training time that has passed
  (:meth:`Schedule.move_to`, from :meth:`attnlab.train.budget.Budget.decay_progress`), so a
  slow start (compilation, a cold disk, a busy machine) does not spend the decay on a schedule
  fitted to the few steps it allowed.

Either way the learning rate rises during warm-up and never rises after it; with a total that
never changes it is exactly :func:`lr_at`. The schedule's state (:meth:`Schedule.state`) goes
into checkpoints, so a resumed run continues the decay where it was.
"""

from __future__ import annotations

import math
from typing import Any

from attnlab.train.config import TrainConfig


def warmup_steps(config: TrainConfig, total: int) -> int:
    """The warm-up of a ``total``-step schedule: ``warmup_steps``, at most a fifth of a
    schedule shortened to fit a time budget."""
    warmup = min(config.warmup_steps, total)
    if total < config.max_steps:  # the schedule was shortened to fit a time budget
        warmup = min(warmup, max(1, total // 5))
    return warmup


def lr_at(step: int, config: TrainConfig, total: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) in a schedule of ``total`` steps:
    linear warm-up to ``lr`` over :func:`warmup_steps`, then cosine decay to ``min_lr`` at
    step ``total``."""
    return Schedule(config, total).lr(step)


class Schedule:
    """The schedule of a run whose length may change (:meth:`set_total`) without the learning
    rate rising after warm-up. Its state (:meth:`state`) goes into checkpoints."""

    def __init__(self, config: TrainConfig, total: int) -> None:
        self.config = config
        self.total = total
        self.warmup = warmup_steps(config, total)
        # The decay's progress runs linearly from `start_progress` at step `start` to 1 at step
        # `total`: (warmup, 0) until the total first changes after warm-up.
        self.start, self.start_progress = self.warmup, 0.0

    def progress(self, step: int) -> float:
        """How far the cosine decay is at ``step``: 0 at the end of warm-up, 1 at ``total``."""
        if step <= self.start:
            return self.start_progress
        if step >= self.total:
            return 1.0
        left = 1.0 - self.start_progress
        return self.start_progress + left * (step - self.start) / max(1, self.total - self.start)

    def lr(self, step: int) -> float:
        """The learning rate of optimiser step ``step`` (0-based)."""
        c = self.config
        if step < self.warmup:
            return c.lr * (step + 1) / (self.warmup + 1)
        if step >= self.total:
            return c.min_lr
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))
        return c.min_lr + cosine * (c.lr - c.min_lr)

    def set_total(self, step: int, total: int) -> None:
        """End the schedule at ``total`` instead, from ``step`` (the next step to run) on.

        During warm-up the warm-up may shorten (never below ``step``: the learning rate keeps
        rising) but never lengthens; after it, the decay goes on from the progress the previous
        step ran at and spreads the rest over ``total - step`` steps (under the old total,
        ``step`` may already be its end)."""
        if total == self.total:
            return
        if step <= self.warmup:
            self.warmup = max(step, min(self.warmup, warmup_steps(self.config, total)))
            self.start, self.start_progress = self.warmup, 0.0
        else:
            self.start, self.start_progress = step, self.progress(step - 1)
        self.total = total

    def move_to(self, step: int, progress: float) -> None:
        """Put the decay at ``progress`` (0 to 1) at ``step``, or where the last step before
        had it if that was further on (the learning rate never rises); the rest goes linearly
        to ``total`` until moved again. No effect during warm-up."""
        if step < self.warmup:
            return
        floor = self.progress(step - 1)  # the progress the previous step ran at
        self.start, self.start_progress = step, min(1.0, max(progress, floor))

    def state(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "warmup": self.warmup,
            "start": self.start,
            "start_progress": self.start_progress,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.total, self.warmup = int(state["total"]), int(state["warmup"])
        self.start, self.start_progress = int(state["start"]), float(state["start_progress"])
