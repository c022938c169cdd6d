"""The time budget refitted as the run goes, a schedule that never jumps up, the plain progress
lines printed without a terminal and metrics.jsonl on resume; all in simulated time (no test
waits for a clock)."""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from attnlab.train.config import TrainConfig
from attnlab.train.schedule import Schedule, lr_at


def _train_records(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == "train"]


@pytest.mark.parametrize(
    "step_seconds",
    [
        pytest.param(lambda i: 4.0 if i < 10 else 0.2, id="slow-start"),  # compile, cold disk
        pytest.param(lambda i: 0.2 if i < 100 else 0.6, id="slower-later"),  # a busy machine
        pytest.param(lambda i: 0.2, id="steady"),
    ],
)
def test_the_run_ends_in_the_last_tenth_of_its_budget(clocked_trainer, step_seconds):
    """The first ten steps twenty times slower than the rest (or the machine slowing down
    later): training and the final evaluation still end within the budget and use at least
    90 % of it; the learning rate still decays to its end."""
    trainer = clocked_trainer(
        step_seconds, eval_seconds=0.5, time_budget=60.0, max_steps=100_000, eval_every=100,
        log_every=10, lr=1e-2, min_lr=1e-3,
    )  # fmt: skip
    result = trainer.fit()
    assert 54.0 <= result.elapsed <= 60.0 + 1e-6, (result.elapsed, result.step)
    records = _train_records(trainer.run_dir)
    decay = [r["lr"] for r in records]  # after the warm-up (5 steps; lines from step 10)
    assert all(a >= b for a, b in itertools.pairwise(decay)), decay
    assert decay[-1] < 1e-3 + 0.1 * (1e-2 - 1e-3)  # the cosine ran (almost) to its end
    # The decay follows the budget's time: not spent on the few steps a slow start allowed.
    halfway = next(r for r in records if r["elapsed_s"] >= 30.0)
    assert halfway["lr"] > 1e-3 + 0.25 * (1e-2 - 1e-3), halfway


def test_max_steps_still_caps_a_budgeted_run(clocked_trainer):
    trainer = clocked_trainer(time_budget=1000.0, max_steps=40, eval_every=20, log_every=10)
    result = trainer.fit()
    assert result.step == 40 and result.elapsed < 10


def test_schedule_never_rises_after_warmup_whatever_the_total_does():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=20, max_steps=1000)
    rng = random.Random(0)
    for _ in range(20):
        schedule = Schedule(c, 1000)
        lrs = []
        for step in range(400):
            if step % 10 == 0:  # refits: the budget's estimate swings both ways
                schedule.set_total(step, rng.randint(step + 1, 1000))
            lrs.append(schedule.lr(step))
            if step + 1 >= schedule.total:
                break
        peak = lrs.index(max(lrs))
        assert all(a <= b for a, b in itertools.pairwise(lrs[: peak + 1])), lrs  # warm-up
        assert all(a >= b for a, b in itertools.pairwise(lrs[peak:])), lrs  # decay
        assert schedule.lr(schedule.total) == c.min_lr


def test_a_total_that_grows_late_slows_the_decay_instead_of_restarting_it():
    c = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=10, max_steps=1000)
    schedule = Schedule(c, 100)
    before = schedule.lr(89)  # the last step run under the old total
    schedule.set_total(90, 400)  # lr_at(90, c, 400) would be back near the peak
    assert lr_at(90, c, 400) > 5 * before
    assert schedule.lr(90) == pytest.approx(before)
    assert schedule.lr(91) < before and schedule.lr(399) < 1e-6
    # Reaching the old total before it was extended does not mean the decay is over.
    schedule = Schedule(c, 100)
    schedule.set_total(100, 400)
    assert schedule.lr(100) == pytest.approx(lr_at(99, c, 100)) and schedule.lr(100) > c.min_lr


def test_an_unchanged_schedule_is_the_closed_form():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    schedule = Schedule(c, 110)
    schedule.set_total(50, 110)
    assert [schedule.lr(s) for s in range(120)] == [lr_at(s, c, 110) for s in range(120)]


def test_without_a_terminal_a_line_every_log_every_steps(clocked_trainer):
    lines: list[str] = []
    trainer = clocked_trainer(
        echo=lines.append, eval_seconds=0.3, max_steps=30, eval_every=15, log_every=10
    )
    trainer.fit()
    progress = [line for line in lines if re.match(r"step \d+/30: loss", line)]
    assert [line.split("/")[0] for line in progress] == ["step 10", "step 20", "step 30"]
    # 0.1 s a step of 8 tokens: at step 10, 1 s elapsed and 20 steps left (no evaluation
    # timed yet); at step 20, 2.3 s (one evaluation of 0.3 s) elapsed and 10 steps and the final
    # evaluation left.
    assert progress[0].endswith(", 80 tokens/s, 0:01 elapsed, about 0:02 left"), progress[0]
    assert progress[1].endswith(", 80 tokens/s, 0:02 elapsed, about 0:01 left"), progress[1]
    assert re.search(r"loss \d+\.\d{4}, lr \S+, ", progress[0])


def test_a_resumed_budgeted_run_goes_on_down_the_decay(clocked_trainer):
    """Interrupted half-way through its budget and resumed with another budget: the learning
    rate continues from where the checkpoint left it, never back up to the peak."""

    def stop_at_150(i):
        if i == 150:
            raise KeyboardInterrupt
        return 0.2

    first = clocked_trainer(stop_at_150, time_budget=60.0, max_steps=100_000, log_every=10,
                            eval_every=100, lr=1e-2, min_lr=1e-3)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    before = [r["lr"] for r in _train_records(first.run_dir)]
    assert first.step == 150 and 2e-3 < before[-1] < 8e-3  # stopped part-way down

    second = clocked_trainer(time_budget=30.0, max_steps=100_000, log_every=10,
                             eval_every=100, lr=1e-2, min_lr=1e-3)  # fmt: skip
    result = second.fit(resume=True)
    after = [r["lr"] for r in _train_records(second.run_dir) if r["step"] > 150]
    assert after[0] <= before[-1] and after[-1] < 1e-3 + 0.1 * (1e-2 - 1e-3)
    assert all(a >= b for a, b in itertools.pairwise(after))
    assert 27.0 <= result.elapsed <= 30.0 + 1e-6


def test_resuming_drops_later_and_torn_metric_lines(tmp_path):
    from attnlab.train.runlog import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "split": "train", "loss": 1.0}) for s in (10, 20, 30)]
    path.write_text("\n".join(lines) + '\n{"step": 40, "spl')  # killed while writing
    truncate_metrics(path, 20)
    assert path.read_text() == "".join(line + "\n" for line in lines[:2])
