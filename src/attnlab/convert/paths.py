"""Which files a checkpoint reader may open: regular files only (a FIFO would block the reader
forever, a device or a directory gives an error that names nothing), and for a checkpoint
directory only files that stay inside it once symbolic links are followed, so that a directory
unpacked from elsewhere cannot make the reader open ``/etc/passwd`` or ``/dev/zero``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _roots(directory: Path) -> list[Path]:
    """Where files of ``directory`` may live once links are followed: the directory itself and,
    for a snapshot in the Hugging Face hub cache (``models--org--name/snapshots/<revision>``,
    whose files are links to ``../../blobs/<hash>``), that repository's ``blobs`` folder."""
    real = Path(os.path.realpath(directory))
    roots = [real]
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        roots.append(real.parent.parent / "blobs")
    return roots


def regular_file(path: Path, directory: Path | None = None) -> Path:
    """``path`` if it names a regular file (after following links) and, when ``directory`` is
    given, one that resolves inside it. FileNotFoundError when nothing is there; ValueError
    naming the path for anything else (and, for a link, its target)."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no such file")
    target = Path(os.path.realpath(path))
    if directory is not None and not any(target.is_relative_to(r) for r in _roots(directory)):
        raise ValueError(
            f"{path}: a symbolic link to {target}, outside the checkpoint directory "
            f"{directory}; refusing to follow it"
        )
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"{path}: a symbolic link to {target}, which does not exist") from None
    except OSError as exc:  # a loop of links, a permission error
        raise ValueError(f"{path}: cannot be opened ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        via = f" (a symbolic link to {target})" if os.path.islink(path) else ""
        raise ValueError(f"{path}: expected a regular file, got {_kind(mode)}{via}")
    return path
