"""A tiny corpus and settings that make any run finish in seconds; a simulated clock and a task
that runs on it, for the time budget."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.train.tasks import Task

TINY_LM = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.dim=32",
    "block_size=32",
    "batch_size=4",
    "warmup_steps=5",
    "eval_batches=2",
    "log_every=5",
    "sample_length=20",
]


@pytest.fixture
def corpus(tmp_path):
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}." for i in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines))
    return path


@pytest.fixture
def tiny_lm(corpus, tmp_path):
    """Overrides for a character-level run on ``corpus`` writing into tmp_path/run."""
    return [*TINY_LM, f"corpus={corpus}", f"cache_dir={tmp_path / 'cache'}"]


class SimulatedClock:
    """A clock for the trainer (``Trainer(clock=...)``) that only moves when told to, so a test
    can make steps and evaluations "take" any time without taking it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class TinyConfig:
    dim: int = 4


class Tiny(nn.Module):
    """A linear model, small enough for hundreds of steps in a fraction of a second."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.dim, 1)

    def forward(self, x):
        return self.linear(x)


class ClockedTask(Task):
    """Linear regression whose training batch ``i`` costs ``step_seconds(i)`` and whose
    evaluations cost ``eval_seconds`` on a :class:`SimulatedClock`."""

    def __init__(self, config, clock: SimulatedClock, step_seconds=lambda i: 0.1, eval_seconds=0.5):
        torch.manual_seed(config.seed)
        super().__init__(config, Tiny(TinyConfig()))
        self.clock, self.step_seconds, self.eval_seconds = clock, step_seconds, eval_seconds
        self.batches = 0

    def train_batch(self, generator):
        self.clock.advance(self.step_seconds(self.batches))
        self.batches += 1
        x = torch.randn(8, 4, generator=generator)
        return {"x": x, "y": x.sum(-1, keepdim=True)}

    def loss(self, model, batch):
        return F.mse_loss(model(batch["x"]), batch["y"])

    def tokens(self, batch):
        return 8

    def evaluate(self, model, device):
        self.clock.advance(self.eval_seconds)
        x = torch.linspace(-1, 1, 8).reshape(2, 4)
        return {"val_loss": float(F.mse_loss(model(x), x.sum(-1, keepdim=True)))}


@pytest.fixture
def clocked_trainer(tmp_path):
    """``make(step_seconds=..., eval_seconds=..., echo=..., **settings)``: a Trainer of a
    :class:`ClockedTask` on its own :class:`SimulatedClock` (``trainer.clock``), writing into
    tmp_path/run."""
    from attnlab.train.config import TrainConfig
    from attnlab.train.trainer import Trainer

    def make(step_seconds=lambda i: 0.1, eval_seconds=0.5, echo=lambda *_: None, **settings):
        defaults = {"device": "cpu", "warmup_steps": 5, "keep_last": 1, "sample_length": 0}
        config = TrainConfig(**{**defaults, "out_dir": str(tmp_path / "run"), **settings})
        clock = SimulatedClock()
        task = ClockedTask(config, clock, step_seconds, eval_seconds)
        return Trainer(config, task, progress=False, echo=echo, clock=clock)

    return make
