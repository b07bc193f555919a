"""Input checks for :mod:`parsona.store`: names, history items, job fields, adapter directories; and
the checksum of a stored adapter, with the cache of those found intact.

Adapter directories are kept strict on purpose: a flat directory of regular ``.json`` /
``.safetensors`` files with plain names, each checked to really be JSON / safetensors (a pickle
renamed ``.safetensors`` is refused), so nothing executable or path-like enters
``<root>/adapters/``. Standard library only: the safetensors header is read by hand, so the store
never imports torch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from parsona.errors import ConfigError

JOB_STATUSES = ("queued", "running", "succeeded", "failed")
ALLOWED_SUFFIXES = (".json", ".safetensors")
# Always fullmatch: `$` would also match before a trailing newline.
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # adapter_type and job kind
_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # no leading dot, no separators
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


def check_name(field: str, value: Any) -> str:
    """An identifier-like name (adapter_type, job kind)."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(field, "use lowercase letters, digits and '_' (e.g. 'lora')",
                          f"got {value!r}")
    return value


def to_json(field: str, value: Any) -> str:
    """``value`` as JSON text; ConfigError naming ``field`` if it is not plain JSON."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(field, "use only JSON values (no NaN, no objects)", str(e)) from None


def history_row(i: int, item: Any) -> tuple[str, str | None, str | None]:
    """(text, kind, metadata_json) for one history item; the error names the item's index."""
    if isinstance(item, str):
        item = {"text": item}
    if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"]:
        raise ConfigError(f"items[{i}]", "pass a non-empty string or {'text': ..., 'kind'?, "
                          "'metadata'?}", f"got {item!r:.80}")
    unknown = set(item) - {"text", "kind", "metadata"}
    if unknown:
        raise ConfigError(f"items[{i}]", "use only the keys text, kind, metadata",
                          f"unknown keys {sorted(unknown)}")
    kind = item.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ConfigError(f"items[{i}].kind", "pass a string or leave it out")
    metadata = item.get("metadata")
    metadata = None if metadata is None else to_json(f"items[{i}].metadata", metadata)
    for field, value in ((f"items[{i}].text", item["text"]), (f"items[{i}].kind", kind)):
        _check_utf8(field, value)
    return item["text"], kind, metadata


def _check_utf8(field: str, value: str | None) -> None:
    """Lone surrogates cannot be stored (SQLite wants UTF-8) nor counted against the byte quota."""
    try:
        if value is not None:
            value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(field, "send valid Unicode text", str(e)) from None


def job_changes(status: Any, progress: Any, message: Any) -> dict[str, Any]:
    """The columns a job update sets (None means unchanged); success implies progress 1."""
    if status is not None and status not in JOB_STATUSES:
        raise ConfigError("status", f"use one of {JOB_STATUSES}", f"got {status!r}")
    number = isinstance(progress, (int, float)) and not isinstance(progress, bool)
    if progress is not None and not (number and 0.0 <= progress <= 1.0):  # NaN fails too
        raise ConfigError("progress", "pass a number in [0, 1]", f"got {progress!r}")
    if message is not None and not isinstance(message, str):
        raise ConfigError("message", "pass a string", f"got {type(message).__name__}")
    changes = {"status": status, "progress": progress, "message": message}
    changes = {k: v for k, v in changes.items() if v is not None}
    if status == "succeeded":
        changes.setdefault("progress", 1.0)
    return changes


def list_adapter_files(src: Path) -> list[Path]:
    """The files to copy: a flat, non-empty directory of regular .json/.safetensors files."""
    if src.is_symlink() or not src.is_dir():
        raise ConfigError("src_dir", "pass a real directory (not a symlink)", f"got {src}")
    files = []
    for p in sorted(src.iterdir()):
        # is_symlink first: is_file()/is_dir() follow links and would let one through.
        if p.is_symlink():
            raise ConfigError("src_dir", "replace symlinks with real files",
                              f"{p.name} is a symlink")
        if not p.is_file():
            raise ConfigError("src_dir", "keep the directory flat (no subdirectories)",
                              f"{p.name} is not a regular file")
        if p.suffix not in ALLOWED_SUFFIXES or not _FILE_RE.fullmatch(p.name):
            raise ConfigError("src_dir", f"keep only {' and '.join(ALLOWED_SUFFIXES)} files "
                              "with plain names", f"found {p.name!r}")
        files.append(p)
    if not files:
        raise ConfigError("src_dir", "save the adapter into it first", f"{src} is empty")
    return files


def copy_adapter_files(sources: list[Path], dest: Path) -> tuple[int, str]:
    """Copy and check each file; return total bytes and a sha256 over (name, content) pairs."""
    total, digest = 0, hashlib.sha256()
    for src in sources:
        target = dest / src.name
        content_sha = copy_file(src, target)
        check_file(target)
        digest.update(src.name.encode() + b"\0" + content_sha)
        total += target.stat().st_size
    return total, digest.hexdigest()


def copy_file(src: Path, target: Path) -> bytes:
    """Copy one file, hashing as it streams; return the content's sha256 digest."""
    # O_NOFOLLOW: a file swapped for a symlink after listing is refused, not followed.
    fd = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as fsrc, open(target, "xb") as fdst:
        while chunk := fsrc.read(1 << 20):
            h.update(chunk)
            fdst.write(chunk)
        fdst.flush()
        os.fsync(fdst.fileno())  # on disk before the rename that publishes it
    return h.digest()


def adapter_digest(path: Path) -> str:
    """The digest :func:`copy_adapter_files` returned, recomputed from a stored adapter's files.

    OSError if an entry is not a regular file (or cannot be read): a stored adapter holds nothing else.
    """
    digest = hashlib.sha256()
    for name in sorted(os.listdir(path)):  # the order put_adapter copied them in
        digest.update(name.encode() + b"\0" + _file_sha(path / name))
    return digest.hexdigest()


def _file_sha(path: Path) -> bytes:
    # O_NONBLOCK: a FIFO planted here must not hang the open; O_NOFOLLOW: nor a symlink be followed.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        h = hashlib.sha256()
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def tree_signature(path: Path) -> tuple:
    """What changes when any file of a flat adapter directory is written, replaced, added or removed."""
    with os.scandir(path) as entries:
        stats = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
    return tuple(sorted((name, s.st_mode, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for name, s in stats))


class VerifiedCache:
    """Stored adapters whose files matched their checksum: adapter_id -> what was seen then, (sha256,
    :func:`tree_signature`), for the newest ``size`` adapters (LRU). Thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple] = OrderedDict()

    def hit(self, adapter_id: str, seen: tuple) -> bool:
        """Whether ``adapter_id`` was found intact when it looked exactly like ``seen``."""
        with self._lock:
            if self._seen.get(adapter_id) != seen:
                return False
            self._seen.move_to_end(adapter_id)
            return True

    def remember(self, adapter_id: str, seen: tuple) -> None:
        with self._lock:
            self._seen[adapter_id] = seen
            self._seen.move_to_end(adapter_id)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def forget(self, adapter_id: str) -> None:
        with self._lock:
            self._seen.pop(adapter_id, None)


def check_file(path: Path) -> None:
    """Refuse content that is not what its suffix says (e.g. a pickle named .safetensors)."""
    with open(path, "rb") as f:
        if path.suffix == ".json":
            ok = _is_json(f.read())
        else:  # safetensors: 8-byte little-endian header length, then a JSON object
            n = int.from_bytes(f.read(8), "little")
            size = path.stat().st_size
            ok = 0 < n <= min(_MAX_HEADER, size - 8) and _is_json(f.read(n), dict)
    if not ok:
        raise ConfigError("src_dir", f"write {path.name} with the json/safetensors library",
                          f"{path.name} is not valid {path.suffix[1:]}")


def _is_json(data: bytes, kind: type = object) -> bool:
    try:
        return isinstance(json.loads(data), kind)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        return False
