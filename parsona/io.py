"""Atomic writes: a reader sees the old file or directory or the new one, never half of either.

Everything is written under a temporary name next to its destination (same filesystem, so the
final ``os.replace`` is atomic) and moved into place only once it is complete. What lands has the
permissions ``open`` and ``mkdir`` would give it (the process umask, read from /proc), not the owner-only
ones of ``tempfile``'s private names; where the umask cannot be read, those owner-only ones stay.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` when the block ends cleanly.

    On an exception the temporary directory is removed and ``path`` is left as it was.
    An existing ``path`` is swapped out and deleted only after the new one is in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        _open_up(tmp, 0o777)
        yield tmp
        _fsync_tree(tmp)
        if path.exists():
            # os.replace cannot swap a directory for a non-empty one: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing; it replaces ``path`` when the block ends cleanly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        _open_up(fd, 0o666)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def claimed(lock: str | os.PathLike, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on the file ``lock`` (made if missing): yields True once held, or False at once
    where another process holds it and ``wait`` is False. The kernel drops it if the holder dies, so a claim
    never outlives a crash. How processes split resumable work (``train_for_users``, the benches' columns)."""
    import fcntl

    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            held = False
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _open_up(target, mode: int) -> None:
    """Give ``target`` (a path or an fd) ``mode`` less the process umask, as open/mkdir would; where the
    umask cannot be read without changing it (no /proc), leave tempfile's owner-only mode: never looser."""
    umask = _umask()
    if umask is not None:
        os.chmod(target, mode & ~umask)


def _umask() -> int | None:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return None


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and give each the mode ``open``/``mkdir`` would (some writers, like
    safetensors, create owner-only files: an export other users' servers read must not stay 0600)."""
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            _open_up(p, 0o666)
        elif p.is_dir():
            _open_up(p, 0o777)
