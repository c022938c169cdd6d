"""Training checkpoints that resume exactly and are never seen half-written.

A checkpoint is a directory ``<run>/checkpoints/step-NNNNNNN`` holding

* ``model.safetensors``: the weights (tied weights stored once),
* ``state.pt``: optimiser state, step, schedule, RNG states and the data position (plain tensors
  and numbers only, read back with ``weights_only=True``),
* ``meta.json``: the model family and config, the training config and the metrics so far.

A distributed run (:func:`save_sharded`) stores the weights and the optimizer state as
``torch.distributed.checkpoint`` shards in ``dcp/`` instead (read back on any number of ranks),
``state.pt`` without the optimizer, and each rank's RNG in ``rank-N.pt``;
:func:`attnlab.distributed.checkpoint.to_single_file` writes its ``model.safetensors``.

It is first written under a hidden temporary name and renamed into place in one step, so a
crash or a full disk leaves either the complete checkpoint or none (the leftover temporary
directory is ignored and removed by the next save). ``best.json`` names the checkpoint with the
best validation metric; it is never deleted by the keep-last rotation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as read_weights_into
from safetensors.torch import save_model
from torch import nn

from attnlab.files import atomic_write_text, follow_umask, reason
from attnlab.models import upgrade_config

PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the path."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an attnlab training run: a ``config.json`` holding training settings
    (its ``"train"`` key) or a ``checkpoints`` directory."""
    path = Path(path)
    if checkpoint_dir(path).is_dir():
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "train" in config


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def best(run_dir: Path) -> Path | None:
    pointer = checkpoint_dir(run_dir) / "best.json"
    if not pointer.is_file():
        return None
    path = checkpoint_dir(run_dir) / json.loads(pointer.read_text())["name"]
    return path if path.is_dir() else None


def model_meta(model: nn.Module) -> dict[str, Any]:
    """Enough to rebuild ``model``: its family name and config fields. A model outside the
    families (any module with a dataclass ``config`` can be trained) is recorded by its class
    name, which :func:`attnlab.load` then refuses by name."""
    from attnlab.models import family_name

    try:
        name = family_name(model)
    except TypeError:
        name = type(model).__name__
    return {"family": name, "config": dataclasses.asdict(model.config)}


@contextlib.contextmanager
def _contiguous(model: nn.Module) -> Iterator[None]:
    """Every parameter contiguous while safetensors reads them (it finds tied ones through
    flat views), then as it was: decoding stores some weights column-major
    (:func:`attnlab.generate.drivers.prepare`)."""
    changed = []
    for p in model.parameters():  # a tied parameter once
        if not p.is_contiguous():
            changed.append((p, p.data))
            p.data = p.data.contiguous()
    try:
        yield
    finally:
        for p, data in changed:
            p.data = data


def save(
    run_dir: Path,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    meta: dict[str, Any],
    *,
    keep_last: int = 2,
    is_best: bool = False,
) -> Path:
    """Write checkpoint ``step`` atomically, update ``best.json``, drop old checkpoints."""
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:07d}"
    tmp = None
    try:
        tmp = _fresh_tmp(root)
        with _contiguous(unwrap(model)):
            save_model(unwrap(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(state, tmp / "state.pt")
        _publish(tmp, final, {**meta, "step": step, **model_meta(unwrap(model))}, is_best)
        tmp = None
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise _write_error(final, exc) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _rotate(run_dir, final, keep_last)
    return final


def save_sharded(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    rank_state: dict[str, Any],
    meta: dict[str, Any],
    world,
    *,
    keep_last: int = 2,
    is_best: bool = False,
) -> Path:
    """Checkpoint ``step`` of a distributed run, written by every rank of ``world`` together:
    the weights and optimizer state as DCP shards (:mod:`attnlab.distributed.checkpoint`,
    resumable on any number of ranks), each rank's ``rank_state`` (its RNG) in
    ``rank-N.pt``, and rank 0's ``state`` (step, schedule, data position: the same on every
    rank) in ``state.pt``. The directory is renamed into place by rank 0 once every rank has
    written its part: a checkpoint is complete or absent."""
    from attnlab.distributed.checkpoint import save_states

    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{step:07d}"
    tmp = Path(world.agree(lambda: str(_fresh_tmp_or_error(root, final))))
    try:
        save_states(tmp, model, optimizer)
        torch.save(rank_state, tmp / f"rank-{world.rank}.pt")
        failed = None
    except (OSError, RuntimeError, ValueError) as exc:
        failed = f"rank {world.rank}: {reason(exc)}"
    failures = [f for f in world.gather(failed) if f]

    def publish() -> Path:
        if failures:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"checkpoint: cannot write {final} ({'; '.join(failures)}); earlier "
                "checkpoints are unchanged"
            )
        try:
            torch.save(state, tmp / "state.pt")
            sharded = {"world_size": world.size, **meta}
            _publish(tmp, final, {**sharded, "step": step, **model_meta(unwrap(model))}, is_best)
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _write_error(final, exc) from None
        _rotate(run_dir, final, keep_last)
        return final

    return Path(world.agree(publish))


def _fresh_tmp(root: Path) -> Path:
    """A new hidden temporary directory in ``root`` (stale ones of interrupted saves removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by an interrupted save
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    follow_umask(tmp)  # mkdtemp makes it private (0o700)
    return tmp


def _fresh_tmp_or_error(root: Path, final: Path) -> Path:
    try:
        return _fresh_tmp(root)
    except OSError as exc:
        raise _write_error(final, exc) from None


def _write_error(final: Path, exc: BaseException) -> CheckpointError:
    # A full disk or a lost mount shows as OSError from Python's own writes, RuntimeError
    # from torch.save ("PytorchStreamWriter failed writing file") and SafetensorError from
    # safetensors: all of them are a write that failed, with nothing renamed into place.
    return CheckpointError(
        f"checkpoint: cannot write {final} ({reason(exc)}); earlier checkpoints are unchanged"
    )


def _publish(tmp: Path, final: Path, meta: dict[str, Any], is_best: bool) -> None:
    """Write ``meta.json`` into ``tmp``, flush everything to disk and rename ``tmp`` to
    ``final`` in one step; point ``best.json`` at it when ``is_best``."""
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    for file in tmp.rglob("*"):  # safetensors and DCP write private (0o600) files
        if file.is_file():
            follow_umask(file)
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if is_best:
        atomic_write_text(final.parent / "best.json", json.dumps({"name": final.name}) + "\n")


def _rotate(run_dir: Path, final: Path, keep_last: int) -> None:
    """Drop all checkpoints but the last ``keep_last``, ``final`` and the best."""
    keep = {p.name for p in list_checkpoints(run_dir)[-keep_last:]} if keep_last else set()
    keep.add(final.name)
    best_path = best(run_dir)
    if best_path is not None:
        keep.add(best_path.name)
    for path in list_checkpoints(run_dir):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def read_meta(path: Path) -> dict[str, Any]:
    file = Path(path) / "meta.json"
    if not file.is_file():
        raise CheckpointError(f"checkpoint: {path} is not an attnlab checkpoint (no meta.json)")
    return json.loads(file.read_text())


def load_state(path: Path) -> dict[str, Any]:
    """The optimiser/RNG/data state of a checkpoint (no pickled code is run)."""
    try:
        return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint: cannot read {Path(path) / 'state.pt'} ({exc})"
        ) from None


def load_rank_state(path: Path, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s own state (its RNG) in a checkpoint of a distributed run, or None when
    the run that wrote it had fewer ranks (or was not distributed)."""
    file = Path(path) / f"rank-{rank}.pt"
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint: cannot read {file} ({exc})") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Fill ``model`` from a checkpoint's weights; CheckpointError naming what does not fit."""
    check_fits(model, path)
    from attnlab.distributed.checkpoint import is_sharded, load_states

    if is_sharded(path) and not (Path(path) / "model.safetensors").is_file():
        load_states(path, unwrap(model))  # any layout, any number of ranks
        return
    try:
        missing, unexpected = read_weights_into(
            unwrap(model), str(Path(path) / "model.safetensors")
        )
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint: cannot read {path}/model.safetensors ({exc})") from None
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint: {path}/model.safetensors: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )


def check_fits(model: nn.Module, path: Path) -> None:
    """CheckpointError unless the checkpoint at ``path`` holds a model of ``model``'s family and
    config (the message names the fields that differ)."""
    meta = read_meta(path)
    ours = model_meta(unwrap(model))
    # A config field added after a checkpoint was written is absent from its meta.json; the
    # field's default is what that checkpoint's model had.
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(unwrap(model).config)
        if f.default is not dataclasses.MISSING
    }
    theirs = {**defaults, **upgrade_config(meta.get("config", {}))}
    # A field whose default None is derived from others (GPT's head_dim from dim and n_head)
    # compares as derived: rebuilt through the config class, as the model's own was.
    with contextlib.suppress(TypeError, ValueError):
        theirs = dataclasses.asdict(type(unwrap(model).config)(**theirs))
    if meta.get("family") != ours["family"] or theirs != ours["config"]:
        diff = _config_diff(theirs, ours["config"])
        raise CheckpointError(
            f"checkpoint: {path} holds a {meta.get('family')} model that does not match this "
            f"run's {ours['family']} ({diff})"
        )


def _config_diff(theirs: dict, ours: dict) -> str:
    keys = sorted(set(theirs) | set(ours))
    diffs = [
        f"{k}: {theirs.get(k)!r} vs {ours.get(k)!r}" for k in keys if theirs.get(k) != ours.get(k)
    ]
    return "; ".join(diffs[:4]) or "different family"


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile wraps the module


def _fsync_dir(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as f:
                os.fsync(f.fileno())


def resolve(path: str | os.PathLike, which: str = "best") -> Path:
    """A checkpoint directory from a run directory (its ``which`` checkpoint: "best" or
    "latest") or from a checkpoint directory itself."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    found = best(path) if which == "best" else None
    found = found or latest(path)
    if found is None:
        raise CheckpointError(
            f"checkpoint: {path} is neither a checkpoint nor a run directory with checkpoints"
        )
    return found


def load_model(path: str | os.PathLike) -> nn.Module:
    """The model stored in an attnlab checkpoint (or a run directory's best one), in eval mode:
    :func:`attnlab.load`'s model."""
    from attnlab.loader import load

    return load(resolve(path)).model


def run_dir_of(path: Path) -> Path:
    """The run directory a checkpoint directory belongs to."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path
