"""What a training run reports while it goes.

* ``metrics.jsonl``: a ``"split": "train"`` line every ``log_every`` steps (loss, learning rate,
  tokens per second) and a ``"split": "val"`` line per evaluation;
* on a terminal, a progress bar with the loss, tokens per second and time left; without one
  (CI, ``nohup``, a pipe) or with ``--no-progress``, a plain line every ``log_every`` steps
  instead, so a log file shows the run advancing between evaluations;
* a line per evaluation, and ``loss.png`` (training and validation loss against step).

Every write goes through :func:`attnlab.files.writing`: a full disk or a missing permission is
one clear error naming the file, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attnlab.files import atomic_write, atomic_write_text, writing


class RunLog:
    """Metrics file, progress bar or plain lines, and loss plot of the run in ``run_dir``."""

    def __init__(
        self,
        run_dir: Path,
        *,
        total: int,
        initial: int,
        progress: bool | None,
        echo: Callable[[str], object],
    ) -> None:
        from tqdm.auto import tqdm

        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.echo = echo
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=None if progress is None else not progress,  # None: on a terminal only
            unit="step",
            dynamic_ncols=True,
        )

    @property
    def plain(self) -> bool:
        """Whether lines are printed instead of a progress bar."""
        return bool(self.bar.disable)

    def write(self, text: str) -> None:
        """A line of text, above the progress bar when there is one."""
        if self.plain:
            self.echo(text)
        else:
            self.bar.write(text)

    def record(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl."""
        with writing("metrics", self.path), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def train(
        self,
        *,
        step: int,
        total: int,
        loss: float,
        lr: float,
        tokens_per_s: float,
        elapsed: float,
        left: float,
    ) -> None:
        """The training line of ``step``: to metrics.jsonl, and to the bar or a plain line."""
        record = {
            "step": step,
            "split": "train",
            "loss": loss,
            "lr": lr,
            "tokens_per_s": tokens_per_s,
            "elapsed_s": elapsed,
        }
        self.record(record)
        if self.plain:
            self.echo(
                f"step {step}/{total}: loss {loss:.4f}, lr {lr:.3g}, {tokens_per_s:,.0f} tokens/s, "
                f"{clock_time(elapsed)} elapsed, about {clock_time(left)} left"
            )
        else:
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation (recorded) and its checkpoint: the loss plot and a line."""
        plot_losses(self.run_dir)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.write(f"step {step}: {shown}")

    def set_total(self, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def clock_time(seconds: float) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` by a run that was interrupted, and a line it
    was killed while writing."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line)
    with writing("metrics", path):
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
    try:
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
        with writing("plot", out):
            atomic_write(out, lambda f: fig.savefig(f, format="png"), binary=True)
    finally:
        plt.close(fig)
    return out


class SilentLog:
    """The :class:`RunLog` of ranks other than 0 in a distributed run: rank 0 writes the
    metrics, the progress and the plot for the whole run; the others write nothing."""

    plain = True

    def __init__(self, run_dir: Path, **kwargs: Any) -> None:
        self.run_dir = Path(run_dir)

    def write(self, text: str) -> None: ...

    def record(self, record: dict[str, Any]) -> None: ...

    def train(self, **kwargs: Any) -> None: ...

    def evaluated(self, step: int, metrics: dict[str, float]) -> None: ...

    def set_total(self, total: int) -> None: ...

    def advance(self) -> None: ...

    def close(self) -> None: ...
