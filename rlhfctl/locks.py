"""One writer per output: an exclusive lock file beside it.

Two runs appending to one file would each write every record. A run locks
its output first: ``OUT.lock`` for a file, ``OUT/.lock`` for a run folder.
The lock file holds who owns it (pid, host, start time) and stays
``flock``-ed while they run, so the lock of a run that was killed (its pid
gone from this host, its ``flock`` released by the kernel) is taken over
with one line on stderr, and a live one is refused naming its owner.

This module imports nothing heavy.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator

from rlhfctl.console import log
from rlhfctl.errors import RlhfctlError


class OutputLocked(RlhfctlError):
    """Another run holds the output."""


def lock_path(path: str | os.PathLike, folder: bool = False) -> Path:
    """Where the lock of ``path`` lives: inside a folder (``folder``, or one that exists), beside a file."""
    path = Path(path)
    return path / ".lock" if folder or path.is_dir() else path.with_name(path.name + ".lock")


@contextmanager
def locked(path: str | os.PathLike, folder: bool = False) -> Iterator[Path | None]:
    """Hold the lock of ``path`` while the block runs; the lock file is removed however the block ends.

    ``-`` (stdout) needs no lock.
    """
    if str(path) == "-":
        yield None
        return
    where = lock_path(path, folder)
    made = _make_parents(where.parent)
    try:
        try:
            fd = _acquire(where, path)
        except OSError as e:
            raise RlhfctlError(f"{where}: cannot create the lock file ({e.strerror})") from None
        try:
            yield where
        finally:
            _release(where, fd)
    finally:
        for parent in made:  # a run that wrote nothing leaves no folder behind
            try:
                parent.rmdir()
            except OSError:
                break


def _owner() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().astimezone().isoformat(timespec="seconds")}


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir(exist_ok=True)
    return missing


def _acquire(where: Path, path: str | os.PathLike) -> int:
    """A file descriptor of the lock file, ``flock``-ed, holding this process as owner."""
    owner = json.dumps(_owner()) + "\n"
    deadline = time.monotonic() + 2.0  # a lock being released or taken over settles within this
    while True:
        fd = _create(where, owner)
        if fd is not None:
            return fd
        fd, holder = _open_existing(where)
        if fd is None:  # gone between our two looks: try again
            continue
        if holder is None or not _is_stale(holder):
            os.close(fd)
            if holder is not None and _alive_here(holder) or time.monotonic() > deadline:
                raise OutputLocked(_held_message(path, where, holder))
            time.sleep(0.05)  # a lock being written, or owned by a dead pid whose flock is still held
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        os.fsync(fd)
        log(f"{path}: took over the lock of a run that is gone (pid {holder['pid']}, since {holder['since']})")
        return fd


def _create(where: Path, owner: str) -> int | None:
    """Create the lock file with its content in one step (a temporary file hard-linked into place, so no
    reader sees it empty), or None when it exists. Falls back to O_CREAT|O_EXCL where links are not allowed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{where.name}.", dir=where.parent)
    try:
        os.write(fd, owner.encode())
        os.fsync(fd)
        _try_flock(fd)
        try:
            os.link(tmp, where)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            os.close(fd)
            return _create_exclusive(where, owner)
        return fd
    finally:
        os.unlink(tmp)


def _create_exclusive(where: Path, owner: str) -> int | None:
    try:
        fd = os.open(where, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
    except FileExistsError:
        return None
    _try_flock(fd)
    os.write(fd, owner.encode())
    os.fsync(fd)
    return fd


def _open_existing(where: Path) -> tuple[int | None, dict | None]:
    """The existing lock file, ``flock``-ed by us when its owner is gone, and its owner as written.

    The descriptor is None when the file vanished. The owner is None when the file is unreadable or
    someone still holds its ``flock``; then it carries the owner with ``held`` set."""
    try:
        fd = os.open(where, os.O_RDWR)
    except FileNotFoundError:
        return None, None
    held = not _try_flock(fd)
    if not held and os.fstat(fd).st_ino != _inode(where):  # released and removed while we opened it
        os.close(fd)
        return None, None
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        holder = dict(holder, held=held) if isinstance(holder, dict) and {"pid", "host", "since"} <= holder.keys() else None
    except ValueError:
        holder = None
    return fd, holder


def _try_flock(fd: int) -> bool:
    """Take the flock of ``fd`` if free. False only when another holds it: a file system without
    flock counts as free, and the owner's pid then decides alone."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        pass
    return True


def _inode(where: Path) -> int | None:
    try:
        return os.stat(where).st_ino
    except FileNotFoundError:
        return None


def _alive_here(holder: dict) -> bool:
    """Whether the owner is a live process on this host (on another host it cannot be told, so it counts as alive)."""
    if holder["host"] != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _is_stale(holder: dict) -> bool:
    """A lock whose owner was killed: on this host, its pid gone and its flock released."""
    return not holder["held"] and not _alive_here(holder)


def _held_message(path: str | os.PathLike, where: Path, holder: dict | None) -> str:
    if holder is None:
        return f"{path}: another run is writing it (lock file {where}, owner unreadable); wait for it, or delete {where} if no run is left"
    host = "" if holder["host"] == socket.gethostname() else f" on {holder['host']}"
    return (f"{path}: another run is writing it (pid {holder['pid']}{host}, since {holder['since']}); wait for it to finish "
            f"or pass another --out")


def _release(where: Path, fd: int) -> None:
    try:
        if os.fstat(fd).st_ino == _inode(where):
            where.unlink()
    finally:
        os.close(fd)
