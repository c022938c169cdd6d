"""The learning-rate schedule and the optimiser's parameter groups."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnlab.models import GPT, GPTConfig
from attnlab.train.config import TrainConfig, apply_overrides
from attnlab.train.trainer import lr_at, make_optimizer, resolve_device


def test_warmup_then_cosine_to_min_lr():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    lrs = [lr_at(s, c, 110) for s in range(120)]
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # rising
    assert math.isclose(lrs[10], 1e-3)  # the peak right after warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # decaying
    assert math.isclose(lrs[60], 0.5 * (1e-3 + 1e-4))  # half-way down the cosine
    assert lrs[110] == lrs[119] == 1e-4


def test_schedule_fitted_to_a_budget_keeps_a_short_warmup():
    c = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=400, max_steps=4000)
    lrs = [lr_at(s, c, 100) for s in range(100)]  # only 100 steps fit the budget
    assert max(lrs) == lrs[20] == 1e-3  # warm-up cut to a fifth of the schedule
    assert lrs[99] < 1e-4


def test_decay_only_on_matrices():
    model = GPT(GPTConfig(vocab_size=11, max_len=8, n_layer=1, n_head=2, dim=8))
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), resolve_device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # each (tied) parameter once


def test_config_checks_values():
    with pytest.raises(ValueError, match="lr, min_lr: expected 0 <= min_lr <= lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match=r"task: expected one of .* got 'lmm' \(did you mean"):
        TrainConfig(task="lmm")
    with pytest.raises(ValueError, match="override: expected key=value, got 'lr'"):
        apply_overrides(TrainConfig(), ["lr"])
    with pytest.raises(ValueError, match="compile: expected a boolean"):
        apply_overrides(TrainConfig(), ["compile=maybe"])
    c = apply_overrides(TrainConfig(), ["time_budget=none", "dropout=0.2", "compile=yes"])
    assert c.time_budget is None and c.dropout == 0.2 and c.compile is True
    with pytest.raises(ValueError, match="device: expected auto, cpu or cuda"):
        resolve_device("tpu")


def test_gradient_accumulation_equals_one_large_batch(tiny_lm, tmp_path):
    """Two micro-batches of 4 per step give the weights of one batch of 8 (the same windows,
    drawn in the same order from the generator; equal-size micro-batch means averaged)."""
    from attnlab.models import config_class
    from attnlab.train.config import preset
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer

    def run(name: str, *overrides: str):
        config = apply_overrides(
            preset("shakespeare-char"),
            [*tiny_lm, "max_steps=4", "eval_every=100", "sample_length=0",
             f"out_dir={tmp_path / name}", *overrides],
            config_class("gpt2"),
        )  # fmt: skip
        trainer = Trainer(config, make_task(config), progress=False, echo=lambda *_: None)
        trainer.fit()
        return trainer.model.state_dict()

    one = run("one", "batch_size=8")
    two = run("two", "batch_size=4", "grad_accum=2")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=0, msg=key)


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_lm, tmp_path):
    """compile=true (torch.compile, Inductor on the CPU) trains to the same weights."""
    from attnlab.models import config_class
    from attnlab.train.config import preset
    from attnlab.train.tasks import make_task
    from attnlab.train.trainer import Trainer

    def run(name: str, compiled: bool):
        config = apply_overrides(
            preset("shakespeare-char"),
            [*tiny_lm, "max_steps=3", "eval_every=100", "sample_length=0",
             f"compile={compiled}", f"out_dir={tmp_path / name}"],
            config_class("gpt2"),
        )  # fmt: skip
        trainer = Trainer(config, make_task(config), progress=False, echo=lambda *_: None)
        result = trainer.fit()
        return trainer.model.state_dict(), result.metrics["val_loss"]

    eager, eager_loss = run("eager", False)
    compiled, compiled_loss = run("compiled", True)
    assert abs(eager_loss - compiled_loss) < 1e-4
    for key in eager:
        torch.testing.assert_close(eager[key], compiled[key], atol=1e-4, rtol=1e-4, msg=key)
