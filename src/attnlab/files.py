"""Writing files so that a reader never sees half of one (temporary file, then rename), and
directories that one writer at a time may fill (:func:`lock_dir`).

Files and directories made here get the permissions an ordinary ``open`` or ``mkdir`` would give
(0o666 or 0o777 less the umask), not the private 0o600/0o700 of :mod:`tempfile`. Write failures
(a full disk, no permission, a file in the way) surface as :class:`WriteError`, a ValueError whose
message names the file and the reason, which the command line prints as one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], object], *, binary=False):
    """Call ``write(file)`` on a temporary file beside ``path``, flush it to disk and rename it
    to ``path``: a crash or a full disk leaves the old file (or no file) in place, never a
    truncated one. Parent directories are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes it private (0o600)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text))


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike, *, purpose: str = "attnlab", argument: str = "destination"
) -> Iterator[Path]:
    """Build a directory whole, then put it at ``path`` in one rename.

    Yields a new hidden temporary directory beside ``path`` to fill; when the block ends without
    an exception it is renamed to ``path``, otherwise removed. ``path`` must not exist or be an
    empty directory (a non-empty one is a ValueError, never replaced). A lock file beside
    ``path`` (``.NAME.lock``, held as :func:`lock_dir` holds its own) makes a second writer of
    the same ``path`` fail at once with a ValueError naming the owner, and temporaries left by
    a killed writer are removed once the lock is held. The result follows the umask.
    """
    import shutil

    path = Path(path)

    def check() -> None:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{argument}: expected a new or empty directory, got the file {path}")
        if path.is_dir() and any(path.iterdir()):
            raise ValueError(f"{argument}: expected a new or empty directory, got {path}")

    check()
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{argument}: cannot create {parent} ({reason(exc)})") from None
    with _held(parent / f".{path.name}.lock", path, purpose, argument, _to_stderr):
        for stale in parent.glob(f".{path.name}.tmp-*"):  # left by a killed writer
            shutil.rmtree(stale, ignore_errors=True)
        check()  # it may have been filled while another writer held the lock
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
        follow_umask(tmp)  # mkdtemp makes it private
        try:
            yield tmp
            for root, dirs, files in os.walk(tmp):  # writers such as safetensors make 0600 files
                for name in dirs + files:
                    follow_umask(Path(root) / name)
            if path.is_dir():
                path.rmdir()  # empty (checked above); a rename cannot replace it otherwise
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def current_umask() -> int:
    """The process's umask, read without changing it (``os.umask`` can only set it, which would
    race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (not Linux): set and restore at once
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (made by :mod:`tempfile`, private) the mode an ordinary ``open`` or
    ``mkdir`` would have given it: 0o666, or 0o777 for a directory, less the umask."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~current_umask())


class WriteError(ValueError):
    """A file or directory cannot be written (full disk, no permission, a file where a directory
    belongs); the message names the setting or file, the path and the reason."""


def reason(exc: BaseException) -> str:
    """The short reason of a write failure: ``No space left on device`` rather than
    ``[Errno 28] No space left on device: '/long/tmp/name'``."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__


@contextlib.contextmanager
def writing(what: str, path: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError raised by the block into a :class:`WriteError` reading
    ``"{what}: cannot write {path} ({reason})"``; ``path`` is what the reader knows (the final
    name, not a temporary one)."""
    try:
        yield
    except OSError as exc:
        raise WriteError(f"{what}: cannot write {path} ({reason(exc)})") from None


# -- one writer per directory ----------------------------------------------------------------------

LOCK_NAME = ".attnlab.lock"  # the lock file inside a locked directory (also a prefix of its temp)


@contextlib.contextmanager
def lock_dir(
    path: str | os.PathLike,
    purpose: str,
    *,
    argument: str = "directory",
    echo: Callable[[str], object] | None = None,
) -> Iterator[Path]:
    """Hold directory ``path`` for one attnlab writer while the block runs; yields ``path``.

    ::

        with lock_dir(run_dir, "train", argument="out_dir"):
            ...  # write into run_dir; a second writer gets a ValueError meanwhile

    ``purpose`` is the command that writes (``"train"``, ``"convert"``); ``argument`` is the
    setting that named the directory, to start error messages with. The directory (and its
    parents) is created when missing; when this call created it and the block leaves it empty
    (a run that failed before writing anything), it is removed again.

    A second writer, in another process or in this one, gets at once a ValueError such as
    ``out_dir: runs/x is in use by attnlab train (pid 1234 on host h since 12:03:04: attnlab
    train --out runs/x); wait for it to finish or choose another out_dir``. ``path`` being a
    file, or a directory that cannot be created or written, is a :class:`WriteError`.

    How: the lock is the file ``<path>/.attnlab.lock``, JSON with the owner's pid, host, purpose,
    command and start time. It is written whole under a temporary name, locked with ``flock``
    and hard-linked into place, which fails when a lock file exists, so another process never
    sees a lock file without its owner. The ``flock`` is held until the block ends, so the
    kernel releases it however the owner dies (SIGKILL included); a lock file whose ``flock`` is
    free and whose pid is not running on this host is stale and is taken over, with a note
    through ``echo`` (stderr by default). On exit the lock file is removed before its ``flock``
    is released. Advisory: it keeps attnlab writers apart, not other programs.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{argument}: {path} is a file, expected a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"{argument}: cannot create {path} ({reason(exc)})") from None
    try:
        with _held(path / LOCK_NAME, path, purpose, argument, echo or _to_stderr):
            yield path
    finally:
        if created:
            _remove_if_empty(path)


@contextlib.contextmanager
def _held(lock: Path, subject: Path, purpose: str, argument: str, echo) -> Iterator[None]:
    """Hold the lock file ``lock`` (which guards ``subject``) while the block runs."""
    fd = _acquire(subject, purpose, argument, echo, lock)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_file(lock, fd):  # ours; removed while still locked (see lock_dir)
                os.unlink(lock)
        os.close(fd)


def _acquire(directory: Path, purpose: str, argument: str, echo, lock: Path) -> int:
    """The open, flock-ed descriptor of a new lock file ``lock`` guarding ``directory``."""
    import fcntl

    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(10):  # each round ends with a lock, an error, or a lock file gone meanwhile
        try:
            fd = _create_lock(lock, owner)
        except OSError as exc:
            raise WriteError(f"{argument}: cannot lock {directory} ({reason(exc)})") from None
        if fd is not None:
            return fd
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            continue  # its owner has just finished
        except OSError as exc:
            raise WriteError(f"{argument}: cannot lock {directory} ({reason(exc)})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _in_use(directory, argument, _read_owner(fd), lock) from None
            if not _same_file(lock, fd):
                continue  # removed or replaced by its owner or another taker meanwhile
            stale = _read_owner(fd)
            if not stale or (stale.get("host") == owner["host"] and _running(stale.get("pid"))):
                # A free flock but no owner written yet, or a live owner: a lock file being
                # created without hard links, a file system without working flock, or a
                # reused pid. None of them is provably stale, so the user decides.
                raise _in_use(directory, argument, stale, lock, remove_hint=True)
            who = _describe(stale)
            echo(
                f"{argument}: {directory} was locked by {who}, which is no longer running; "
                "taking it over"
            )
            os.unlink(lock)  # then create a fresh one in the next round
        finally:
            os.close(fd)
    raise ValueError(f"{argument}: cannot lock {directory}: its lock file keeps changing")


def _create_lock(lock: Path, owner: dict) -> int | None:
    """Create ``lock`` complete and flock-ed in one step; None when a lock file exists."""
    import fcntl

    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_NAME}.", suffix=".tmp", dir=lock.parent)
    linked = no_links = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else knows this file yet: never blocks
        os.write(fd, (json.dumps(owner) + "\n").encode())
        os.fchmod(fd, 0o666 & ~current_umask())
        try:
            os.link(tmp, lock)
            linked = True
        except FileExistsError:
            pass
        except OSError:
            no_links = True  # a file system without hard links
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if not linked:
            os.close(fd)
    if linked:
        return fd
    return _create_lock_exclusive(lock, owner) if no_links else None


def _create_lock_exclusive(lock: Path, owner: dict) -> int | None:
    """:func:`_create_lock` with ``O_CREAT | O_EXCL``: between the create and the write another
    process may see an empty lock file, which :func:`_acquire` then reports as in use."""
    import fcntl

    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, (json.dumps(owner) + "\n").encode())
    return fd


def _read_owner(fd: int) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = os.pread(fd, 65536, 0)
        owner = json.loads(data.decode())
        if isinstance(owner, dict):
            return owner
    return {}


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _running(pid) -> bool:
    """Whether process ``pid`` runs on this host (a zombie has finished)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _describe(owner: dict) -> str:
    if not owner:
        return "another process (its lock file is being written or unreadable)"
    purpose = str(owner.get("purpose", "?"))
    what = purpose if purpose.startswith("attnlab") else f"attnlab {purpose}"
    where = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
    command = f": {owner['command']}" if owner.get("command") else ""
    return f"{what} ({where}{command})"


def _in_use(
    directory: Path, argument: str, owner: dict, lock: Path, remove_hint: bool = False
) -> ValueError:
    hint = f"wait for it to finish or choose another {argument}"
    if remove_hint:
        hint += f" (if that process is not attnlab, remove {lock})"
    return ValueError(f"{argument}: {directory} is in use by {_describe(owner)}; {hint}")


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr)
