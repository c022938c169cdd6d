"""How fast a run goes and how many steps fit in its time budget.

:class:`Pace` measures the run as it goes: the time of the recent training steps (a window, so
a slow start — compilation, a cold disk cache, a busy machine — is forgotten once it is past)
and the cost of an evaluation with its checkpoint. :class:`Budget` turns that into the number
of steps that fit a time budget with the evaluations still to come, the final one included,
and is asked again every ``log_every`` steps, so the whole budget gets used whatever the first
steps cost. (The trainer times an evaluation before the first step of a budgeted run, so the
final evaluation is reserved from the start rather than guessed.) All times come from one clock
function (``time.perf_counter`` by default), which tests replace to simulate slow or fast
phases.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from attnlab.train.schedule import Schedule


class Pace:
    """Recent speed of a run: seconds and tokens of the last ``window`` training steps
    (evaluations excluded) and the seconds of the last evaluation with its checkpoint
    (``eval_s``: None until one has been timed; a resumed run starts with its checkpoint's)."""

    def __init__(
        self, clock: Callable[[], float], *, window: int = 10, eval_s: float | None = None
    ) -> None:
        self.clock = clock
        self.started = self._last = clock()
        self._seconds: deque[float] = deque(maxlen=window)
        self._tokens: deque[int] = deque(maxlen=window)
        self.eval_s = eval_s

    def step_done(self, tokens: int) -> None:
        now = self.clock()
        self._seconds.append(now - self._last)
        self._tokens.append(tokens)
        self._last = now

    def evaluation_done(self, seconds: float) -> None:
        """Record an evaluation's cost; the time it took is not a training step's."""
        self.eval_s = seconds
        self._last = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def step_s(self) -> float | None:
        """Seconds per training step over the window; None before the first step."""
        return sum(self._seconds) / len(self._seconds) if self._seconds else None

    def tokens_per_s(self) -> float:
        return sum(self._tokens) / max(sum(self._seconds), 1e-9)

    def eval_estimate(self) -> float:
        """Seconds of one evaluation: the last one timed (0 before the first)."""
        return self.eval_s or 0.0

    def seconds_left(self, step: int, total: int, eval_every: int) -> float:
        """Seconds the steps from ``step`` to ``total`` will take, with the evaluations on the
        way and the final one."""
        evaluations = max(0, (total - 1) // eval_every - step // eval_every) + 1
        return (total - step) * (self.step_s() or 0.0) + evaluations * self.eval_estimate()


class Budget:
    """Fits a run to ``seconds`` of wall time (counted from the start of ``pace``), so that
    training, the evaluations on the way and the final evaluation end within it: the number of
    steps (:meth:`fit`, refitted as the pace changes), where the learning-rate decay stands
    (:meth:`decay_progress`) and when to stop (:meth:`exhausted`). The final sample of a
    language model is not counted."""

    def __init__(self, seconds: float, pace: Pace, *, max_steps: int, eval_every: int) -> None:
        self.seconds = seconds
        self.pace = pace
        self.max_steps = max_steps
        self.eval_every = eval_every
        self._decay_began: tuple[float, int, float] | None = None  # (elapsed, step, progress)

    def fit(self, step: int) -> int:
        """The step to end at, from the recent pace: as many steps after ``step`` as fit in the
        time left once the final evaluation is set aside (at least one), never beyond
        ``max_steps``."""
        per_step = self.pace.step_s()
        if per_step is None:
            return self.max_steps
        eval_s = self.pace.eval_estimate()
        left = self.seconds - self.pace.elapsed() - eval_s
        steps = int(max(0.0, left) / (per_step + eval_s / self.eval_every))
        return min(self.max_steps, step + max(1, steps))

    def decay_progress(self, step: int, schedule: Schedule) -> float:
        """Where the cosine decay of ``schedule`` belongs at ``step``: the share of this
        process's training time since the decay began that has passed (the time left for the
        final evaluation set aside), or the share of the steps to ``max_steps`` if that is
        further, on from where the decay was when this process began it."""
        if step < schedule.warmup:
            return 0.0
        now = self.pace.elapsed()
        if self._decay_began is None:
            self._decay_began = (now, step, schedule.start_progress)
        began, first, progress = self._decay_began
        end = self.seconds - self.pace.eval_estimate()
        by_time = (now - began) / max(end - began, 1e-9)
        by_steps = (step - first) / max(1, self.max_steps - first)
        return progress + (1.0 - progress) * min(1.0, max(by_time, by_steps))

    def exhausted(self) -> bool:
        """Whether training must stop now: another step and then the final evaluation would
        not end within the budget."""
        step_s = self.pace.step_s() or 0.0
        return self.pace.elapsed() + step_s + self.pace.eval_estimate() > self.seconds
