"""Scratch space of :mod:`parsona.store`: ``<root>/tmp/``, one folder per live process, and the
sweep crash recovery makes of what dead processes left there.

Each process owns its folder ``<root>/tmp/<token>/`` by holding an ``flock`` on
``<root>/tmp/<token>.lock``. The kernel drops the lock when the process dies, kill -9 included, so
"nobody holds the lock" is an exact test that its owner is gone: the sweep removes only such
folders, and the store fails only the jobs such owners left ``running`` (a job records the token of
the process running it), never those of another live server sharing the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

# fullmatch, never `$`: `$` also matches before a trailing newline.
_TOKEN_RE = re.compile(r"[0-9a-f]{16}")  # a process's folder in <root>/tmp
_LEGACY_TMP_RE = re.compile(r"\.adp_[0-9a-f]{32}\.(tmp|old)-.*")  # what atomic_dir left in adapters/


class TempSpace:
    """``tmp_root``: this process's folder in it, made (and its lock taken) on first use, and the sweep
    of the folders of processes that are gone. Thread-safe."""

    def __init__(self, tmp_root: Path):
        self.root = tmp_root
        self._lock = threading.Lock()  # guards _area, _in_use and _closed
        self._area: TempArea | None = None
        self._in_use = 0  # folder() blocks running now
        self._closed = False

    def area(self) -> "TempArea":
        """This process's folder (created, and its lock taken, on first use)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("Store is closed; open a new Store(root).")
            if self._area is None:
                self._area = TempArea(self.root)
            return self._area

    @contextlib.contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        """A fresh empty folder inside this process's, removed when the block ends."""
        with self._lock:
            self._in_use += 1
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.area().dir))
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            with self._lock:
                self._in_use -= 1

    def release(self, running: Callable[[str], bool]) -> bool:
        """Remove this process's folder now, unless a :meth:`folder` is in use or ``running(token)``
        says a job this process owns still runs (then False: it stays for the sweep once this process
        is gone). A later :meth:`area` makes a new one."""
        with self._lock:
            if self._area is None:
                return True
            busy = running(self._area.token)
            if self._in_use or busy:
                return False
            self._area.close()
            self._area = None
            return True

    def discard(self, path: Path) -> None:
        """Delete the folder ``path``, moved first into this process's folder, so a crash mid-delete
        leaves nothing half-deleted where it was."""
        try:
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self.area().dir))
            os.replace(path, trash / path.name)
        except FileNotFoundError:
            return
        except OSError:  # another filesystem or no temp space: delete in place
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        """Remove this process's folder; :meth:`area` refuses from now on."""
        with self._lock:
            self._closed = True
            if self._area is not None:
                self._area.close()
                self._area = None

    def owner_alive(self, token: Any) -> bool:
        """Whether the process that recorded ``token`` (this one included) still holds its lock."""
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            return False  # no owner recorded (a version-1 store): nobody can still be running it
        if self._area is not None and token == self._area.token:
            return True
        with _lock_if_gone(self.root, token) as gone:
            return not gone

    def sweep(self) -> list[str]:
        """Remove the folders (and lock files) whose owner is gone; anything else there is junk.
        Returns what it removed, as paths relative to the store's root (``tmp/<entry>``)."""
        if not self.root.is_dir():
            return []
        swept = []
        for entry in sorted(os.listdir(self.root)):
            token = entry.removesuffix(".lock")
            if not os.path.lexists(self.root / entry):
                continue  # a lock file removed with its folder
            if not _TOKEN_RE.fullmatch(token):
                _remove(self.root / entry)
            elif entry == token:  # a process's folder: its lock file goes with it
                with _lock_if_gone(self.root, token) as gone:
                    if not gone:
                        continue
                    _remove(self.root / entry)  # the folder first, while we hold its lock
                    _remove(self.root / f"{token}.lock")
            elif (self.root / token).exists():
                continue  # a lock file: handled with its folder above
            else:  # a lock file whose folder is gone (or not made yet: then its owner holds the lock)
                with _lock_if_gone(self.root, token) as gone:
                    if not gone:
                        continue
                    _remove(self.root / entry)
            swept.append(f"tmp/{entry}")
        return swept


def sweep_legacy(adapters_dir: Path) -> list[str]:
    """Remove the ``.adp_<id>.tmp-*`` / ``.old-*`` folders atomic_dir (older versions) left in
    ``adapters/`` when killed, never a stored adapter; return them as ``adapters/<entry>``."""
    swept = []
    for entry in sorted(os.listdir(adapters_dir)):
        if _LEGACY_TMP_RE.fullmatch(entry):
            _remove(adapters_dir / entry)
            swept.append(f"adapters/{entry}")
    return swept


# ---- a process's temp folder, owned through an flock ---------------------------------------

class TempArea:
    """``<tmp_root>/<token>/``, owned while this process holds the flock on ``<tmp_root>/<token>.lock``."""

    def __init__(self, tmp_root: Path):
        tmp_root.mkdir(parents=True, exist_ok=True)
        self.token, self._fd = _take_new_lock(tmp_root)
        self.lock = tmp_root / f"{self.token}.lock"
        self.dir = tmp_root / self.token
        self.dir.mkdir()  # after the lock: a folder whose lock is free is always a dead one's

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self.lock.unlink()
        os.close(self._fd)


def _take_new_lock(tmp_root: Path) -> tuple[str, int]:
    for _ in range(100):
        token = secrets.token_hex(8)
        lock = tmp_root / f"{token}.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return token, fd
        except OSError:  # a sweeper locked or removed it between our create and our lock: take another
            pass
        os.close(fd)
    raise RuntimeError(f"could not take a lock in {tmp_root}")


@contextlib.contextmanager
def _lock_if_gone(tmp_root: Path, token: str) -> Iterator[bool]:
    """True (holding the lock for the block) if no live process owns ``token``; else False."""
    try:
        fd = os.open(tmp_root / f"{token}.lock", os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # no lock file (or not a plain one): nobody can own it
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
