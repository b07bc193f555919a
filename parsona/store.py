"""The embedded default store: users, API keys, history, adapters and training jobs.

One SQLite file (``<root>/parsona.sqlite3``) holds the records; adapter files live in
``<root>/adapters/<adapter_id>/``; ``<root>/tmp/`` is scratch space (uploads being unpacked, LoRAs
being trained, files on their way in or out), one folder per live process. Three rules keep users
apart:

- every user-facing query carries ``WHERE user_id = ?``;
- ids are generated here (``secrets.token_hex``) and checked against a strict pattern before any
  query or path is built, so a request string never becomes a path;
- a malformed, missing or someone else's id all raise the same :class:`NotFound`, so a caller
  learns nothing about other users' data (HTTP handlers map it to 404).

SQLite runs in WAL mode with one connection per thread; every write is an explicit
``BEGIN IMMEDIATE`` transaction, which takes the write lock up front instead of upgrading a read
lock mid-transaction (the upgrade is what produces "database is locked" under concurrency). The
per-user :class:`Quotas` are checked inside the same transaction as the write they limit, so
concurrent requests (threads or processes) can never pass them together.

Crash recovery (:meth:`Store.recover`, run when a server starts): each process owns its folder in
``<root>/tmp/`` by holding an ``flock`` on ``<root>/tmp/<token>.lock``. The kernel drops the lock
when the process dies, kill -9 included, so "nobody holds the lock" is an exact test that its owner
is gone: recovery removes only such folders and fails only the jobs such owners left ``running``,
never those of another live server sharing the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from parsona.errors import ConfigError
from parsona.store_checks import (adapter_digest, check_name, copy_adapter_files, history_row, job_changes,
                                  list_adapter_files, to_json, tree_signature)

log = logging.getLogger("parsona.store")

SCHEMA_VERSION = 2  # 2: jobs.worker (who runs it), history.size (bytes, for the quota)

# fullmatch, never `$`: `$` also matches before a trailing newline.
_ID_RE = re.compile(r"(usr|adp|job|itm)_[0-9a-f]{32}")
_KEY_PREFIX = "psk_"
_TOKEN_RE = re.compile(r"[0-9a-f]{16}")  # a process's folder in <root>/tmp
_LEGACY_TMP_RE = re.compile(r"\.adp_[0-9a-f]{32}\.(tmp|old)-.*")  # what atomic_dir left in adapters/
_VERIFIED_CACHE = 4096  # adapters whose checksum is remembered as checked (LRU)
INTERRUPTED = ("the server stopped while this job was running (it was restarted); nothing was saved. "
               "Start it again with POST /v1/adapters/train.")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    text TEXT NOT NULL, kind TEXT, metadata TEXT, created_at REAL NOT NULL,
    size INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS history_user ON history(user_id, seq);
CREATE TABLE IF NOT EXISTS adapters (
    adapter_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    adapter_type TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS adapters_user ON adapters(user_id, created_at);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    kind TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    progress REAL NOT NULL, message TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    adapter_id TEXT REFERENCES adapters(adapter_id) ON DELETE SET NULL,
    worker TEXT);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, created_at);
"""

# Columns added after version 1, and the indexes that need them (created after the migration).
_ADDED_COLUMNS = {"history": ("size", "INTEGER NOT NULL DEFAULT 0"), "jobs": ("worker", "TEXT")}
_INDEXES = """
CREATE INDEX IF NOT EXISTS history_user_size ON history(user_id, size);
CREATE INDEX IF NOT EXISTS jobs_user_status ON jobs(user_id, status);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, created_at);
"""
_HISTORY_SIZE_SQL = ("length(CAST(text AS BLOB)) + COALESCE(length(CAST(kind AS BLOB)), 0)"
                     " + COALESCE(length(CAST(metadata AS BLOB)), 0)")
_ACTIVE = "status IN ('queued', 'running')"


class NotFound(LookupError):
    """No such record *for this user*: missing, someone else's and malformed ids look the same."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(f"{field}: not found for this user. Use an id this user was given.")


class QuotaExceeded(ConfigError):
    """A per-user limit of :class:`Quotas` would be passed; nothing was written (HTTP: 429).

    ``field`` names the quota (a :class:`Quotas` field, e.g. ``max_jobs_per_user``); ``limit`` is its
    value and ``used`` what the user holds now.
    """

    status = 429

    def __init__(self, quota: str, limit: int, used: int, fix: str, adding: int = 1):
        self.limit, self.used = limit, used
        super().__init__(quota, fix, problem=f"this user holds {used} and asked for {adding} more; "
                                             f"the limit is {limit}")


class CorruptAdapter(ConfigError):
    """A stored adapter's files no longer match the sha256 recorded when it was stored."""

    def __init__(self, adapter_id: str, problem: str):
        self.adapter_id = adapter_id
        super().__init__("adapter", "Upload the adapter again (POST /v1/adapters) and delete this copy "
                         "(DELETE /v1/adapters/{id}).", problem=f"stored adapter {adapter_id} is corrupt: {problem}")


@dataclasses.dataclass(frozen=True)
class Quotas:
    """Per-user limits, each enforced in the transaction that would pass it (``parsona serve`` flags)."""

    max_jobs_per_user: int = 2
    """Training jobs queued or running at once (``--max-jobs-per-user``)."""
    max_adapters_per_user: int = 32
    """Adapters stored; jobs queued or running count too, since each will store one."""
    max_history_items: int = 10_000
    """History items stored."""
    max_history_bytes: int = 16 << 20
    """History bytes stored: UTF-8 text + kind + metadata JSON (``--max-history-mb``, 16 MiB)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ConfigError(f.name, "use a whole number ≥ 1", f"got {value!r}")


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _check_id(field: str, value: Any, prefix: str) -> str:
    """Return ``value`` if it is a well-formed id of this type; otherwise raise NotFound."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or value[:3] != prefix:
        raise NotFound(field)
    return value


def _hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


class Store:
    """Users, API keys, history, adapters and jobs under one directory ``root``.

    Safe to share between threads (each thread gets its own connection) and between processes
    on one machine (SQLite file locking). ``quotas`` limits what each user may hold (defaults:
    :class:`Quotas`). Call :meth:`close` when done.
    """

    def __init__(self, root: str | os.PathLike, *, quotas: Quotas | None = None):
        self.root = Path(root)
        self.quotas = quotas if quotas is not None else Quotas()
        self.adapters_dir = self.root / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_root = self.root / "tmp"
        self.db_path = self.root / "parsona.sqlite3"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
        self._state_lock = threading.Lock()  # guards _area, _in_use and _verified
        self._area: _TempArea | None = None
        self._in_use = 0  # temp_dir blocks running now
        self._claim_lock = threading.Lock()  # a job is never claimed under a token being released
        self._verified: OrderedDict[str, tuple] = OrderedDict()  # adapter_id -> (sha256, file signature)
        conn = self._conn()
        # WAL is a property of the file; it persists, so setting it once at open is enough.
        conn.execute("PRAGMA journal_mode=WAL")
        self._create_schema()

    # ---- connections and transactions -------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise RuntimeError("Store is closed; open a new Store(root).")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves, so the module never opens an
            # implicit deferred transaction behind our back.
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)  # so close() can reach connections of other threads
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the write lock from its first statement."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also after a failed COMMIT, so the next BEGIN can run
                conn.execute("ROLLBACK")
            raise

    def _create_schema(self) -> None:
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT version FROM schema_version").fetchone()
            if row is not None and row["version"] > SCHEMA_VERSION:
                raise ConfigError(str(self.db_path), "upgrade parsona to open this store",
                                  f"schema version {row['version']} > {SCHEMA_VERSION}")
            _add_missing_columns(conn)
            for statement in _INDEXES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] < SCHEMA_VERSION:
                conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def close(self) -> None:
        """Close every thread's connection and remove this process's temp folder. The store cannot be
        used afterwards."""
        self._closed = True
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        with self._state_lock:
            if self._area is not None:
                self._area.close()
                self._area = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _require_user(self, conn: sqlite3.Connection, user_id: Any) -> str:
        _check_id("user_id", user_id, "usr")
        if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
            raise NotFound("user_id")
        return user_id

    # ---- scratch space and crash recovery ---------------------------------------------------

    def _temp_area(self) -> "_TempArea":
        """This process's folder in ``<root>/tmp`` (created, and its lock taken, on first use)."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("Store is closed; open a new Store(root).")
            if self._area is None:
                self._area = _TempArea(self.tmp_root)
            return self._area

    @contextlib.contextmanager
    def temp_dir(self, prefix: str = "tmp-") -> Iterator[Path]:
        """A fresh empty folder inside the store, removed when the block ends.

        It is on the adapters' filesystem, so finished files can be renamed into place, and a process
        killed mid-block leaves it for :meth:`recover` to sweep (``/tmp`` would keep it forever).
        """
        with self._state_lock:
            self._in_use += 1
        try:
            path = Path(tempfile.mkdtemp(prefix=prefix, dir=self._temp_area().dir))
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            with self._state_lock:
                self._in_use -= 1

    def release_temp(self) -> bool:
        """Remove this process's temp folder now (a server's clean shutdown), unless a :meth:`temp_dir`
        is in use or a job claimed here is still running (its folder's lock says it is alive): then it
        stays, for the next :meth:`recover` once this process is gone. A later temp_dir makes a new one."""
        with self._claim_lock, self._state_lock:
            if self._area is None:
                return True
            running = self._conn().execute("SELECT 1 FROM jobs WHERE worker = ? AND status = 'running'",
                                           (self._area.token,)).fetchone()
            if self._in_use or running is not None:
                return False
            self._area.close()
            self._area = None
            return True

    def recover(self) -> dict[str, list[str]]:
        """Crash recovery, for a server's start; safe while other live processes use the store.

        Removes the temp folders of processes that are gone and the partial adapter folders older
        versions left in ``adapters/`` (never a stored adapter), and marks ``failed`` every job left
        ``running`` by a process that is gone, with a message saying the server restarted. Queued jobs
        stay queued: the trainer requeues them (:meth:`queued_jobs`). Returns what it did:
        ``{"swept": [paths relative to root], "failed_jobs": [job ids]}``.
        """
        swept = self._sweep_tmp() + self._sweep_legacy()
        failed = self._fail_interrupted_jobs()
        if swept or failed:
            log.warning("recovered %s: swept %d temp folders, failed %d interrupted jobs",
                        self.root, len(swept), len(failed))
        return {"swept": swept, "failed_jobs": failed}

    def _sweep_tmp(self) -> list[str]:
        """Folders (and lock files) in ``tmp/`` whose owner is gone; anything else there is junk."""
        if not self.tmp_root.is_dir():
            return []
        swept = []
        for entry in sorted(os.listdir(self.tmp_root)):
            token = entry.removesuffix(".lock")
            if not os.path.lexists(self.tmp_root / entry):
                continue  # a lock file removed with its folder
            if not _TOKEN_RE.fullmatch(token):
                _remove(self.tmp_root / entry)
            elif entry == token:  # a process's folder: its lock file goes with it
                with _lock_if_gone(self.tmp_root, token) as gone:
                    if not gone:
                        continue
                    _remove(self.tmp_root / entry)  # the folder first, while we hold its lock
                    _remove(self.tmp_root / f"{token}.lock")
            elif (self.tmp_root / token).exists():
                continue  # a lock file: handled with its folder above
            else:  # a lock file whose folder is gone (or not made yet: then its owner holds the lock)
                with _lock_if_gone(self.tmp_root, token) as gone:
                    if not gone:
                        continue
                    _remove(self.tmp_root / entry)
            swept.append(f"tmp/{entry}")
        return swept

    def _sweep_legacy(self) -> list[str]:
        """``.adp_<id>.tmp-*`` / ``.old-*`` folders: what atomic_dir left in adapters/ when killed."""
        swept = []
        for entry in sorted(os.listdir(self.adapters_dir)):
            if _LEGACY_TMP_RE.fullmatch(entry):
                _remove(self.adapters_dir / entry)
                swept.append(f"adapters/{entry}")
        return swept

    def _worker_alive(self, token: Any) -> bool:
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            return False  # no owner recorded (a version-1 store): nobody can still be running it
        if self._area is not None and token == self._area.token:
            return True
        with _lock_if_gone(self.tmp_root, token) as gone:
            return not gone

    def _fail_interrupted_jobs(self) -> list[str]:
        with self._write() as conn:
            rows = conn.execute("SELECT job_id, worker FROM jobs WHERE status = 'running'").fetchall()
            dead = [r["job_id"] for r in rows if not self._worker_alive(r["worker"])]
            conn.executemany("UPDATE jobs SET status = 'failed', message = ?, updated_at = ? WHERE job_id = ?",
                             [(INTERRUPTED, time.time(), job_id) for job_id in dead])
        return dead

    # ---- quotas -----------------------------------------------------------------------------

    def usage(self, user_id: str) -> dict[str, int]:
        """What ``user_id`` holds, in the units of :class:`Quotas`."""
        conn = self._conn()
        self._require_user(conn, user_id)
        items, size = _history_usage(conn, user_id)
        return {"jobs": _active_jobs(conn, user_id), "adapters": _adapter_count(conn, user_id),
                "history_items": items, "history_bytes": size}

    def require_adapter_slot(self, user_id: str, for_job: str | None = None) -> None:
        """Raise QuotaExceeded now if ``user_id`` could not store one more adapter (checked again,
        atomically, when it is stored): lets an upload be refused before it is unpacked."""
        conn = self._conn()
        self._require_user(conn, user_id)
        self._check_adapter_quota(conn, user_id, for_job)

    def _check_adapter_quota(self, conn: sqlite3.Connection, user_id: str, for_job: str | None = None) -> None:
        """Adapters stored plus jobs queued or running (each will store one), ``for_job``'s own slot aside."""
        used = _adapter_count(conn, user_id) + _active_jobs(conn, user_id, excluding=for_job)
        if used >= self.quotas.max_adapters_per_user:
            raise QuotaExceeded("max_adapters_per_user", self.quotas.max_adapters_per_user, used,
                                "Delete an adapter you no longer need (DELETE /v1/adapters/{id}), or wait for your "
                                "queued training jobs to finish (each stores one), then retry.")

    def _check_job_quota(self, conn: sqlite3.Connection, user_id: str) -> None:
        active = _active_jobs(conn, user_id)
        if active >= self.quotas.max_jobs_per_user:
            raise QuotaExceeded("max_jobs_per_user", self.quotas.max_jobs_per_user, active,
                                "Wait until one of your queued or running jobs finishes (GET /v1/jobs/{id}), "
                                "then retry.")

    def _check_history_quota(self, conn: sqlite3.Connection, user_id: str, items: int, size: int) -> None:
        used_items, used_bytes = _history_usage(conn, user_id)
        q = self.quotas
        if used_items + items > q.max_history_items:
            raise QuotaExceeded("max_history_items", q.max_history_items, used_items,
                                f"Send fewer items: this server keeps at most {q.max_history_items} history items "
                                "per user.", adding=items)
        if used_bytes + size > q.max_history_bytes:
            raise QuotaExceeded("max_history_bytes", q.max_history_bytes, used_bytes,
                                f"Send less text: this server keeps at most {q.max_history_bytes} bytes of history "
                                "per user.", adding=size)

    # ---- users and API keys -----------------------------------------------------------------

    def create_user(self) -> tuple[str, str]:
        """Create a user; return ``(user_id, api_key)``. The key is shown here once, never stored."""
        user_id = _new_id("usr")
        with self._write() as conn:
            conn.execute("INSERT INTO users VALUES (?, ?)", (user_id, time.time()))
            api_key = self._insert_key(conn, user_id)
        return user_id, api_key

    def _insert_key(self, conn: sqlite3.Connection, user_id: str) -> str:
        api_key = _KEY_PREFIX + secrets.token_urlsafe(32)  # 32 random bytes
        conn.execute("INSERT INTO api_keys VALUES (?, ?, ?)",
                     (_hash_key(api_key), user_id, time.time()))
        return api_key

    def authenticate(self, api_key: Any) -> str | None:
        """The user_id owning ``api_key``, or None for an unknown or malformed key."""
        if not isinstance(api_key, str) or not api_key.startswith(_KEY_PREFIX):
            return None
        digest = _hash_key(api_key)
        # Looking up by hash is safe: the hash of a 256-bit random token leaks nothing useful
        # through timing. The constant-time compare guards against any lookup quirk.
        row = self._conn().execute(
            "SELECT key_hash, user_id FROM api_keys WHERE key_hash = ?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        return row["user_id"]

    # ---- history ----------------------------------------------------------------------------

    def add_history(self, user_id: str, items: list[str | dict]) -> list[str]:
        """Append items (a text, or ``{"text", "kind"?, "metadata"?}``); return their item_ids.

        All or nothing: QuotaExceeded (max_history_items / max_history_bytes) appends none of them.
        """
        if not isinstance(items, (list, tuple)):
            raise ConfigError("items", "pass a list of texts or dicts", f"got {type(items).__name__}")
        rows = [history_row(i, item) for i, item in enumerate(items)]
        sizes = [sum(len(v.encode("utf-8")) for v in row if v is not None) for row in rows]
        ids = [_new_id("itm") for _ in rows]
        now = time.time()
        with self._write() as conn:
            self._require_user(conn, user_id)
            self._check_history_quota(conn, user_id, len(rows), sum(sizes))
            conn.executemany(
                "INSERT INTO history (item_id, user_id, text, kind, metadata, created_at, size)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(item_id, user_id, *row, now, size) for item_id, row, size in zip(ids, rows, sizes)])
        return ids

    def history(self, user_id: str, limit: int | None = None) -> list[dict]:
        """The user's items, oldest first; with ``limit``, only the newest ``limit`` of them."""
        self._require_user(self._conn(), user_id)  # unknown user: an error, not []
        if limit is not None and (type(limit) is not int or limit < 0):
            raise ConfigError("limit", "pass a non-negative integer or None", f"got {limit!r}")
        rows = self._conn().execute(
            "SELECT item_id, text, kind, metadata, created_at FROM history WHERE user_id = ?"
            " ORDER BY seq DESC LIMIT ?", (user_id, -1 if limit is None else limit)).fetchall()
        return [{**dict(r), "metadata": json.loads(r["metadata"]) if r["metadata"] else None}
                for r in reversed(rows)]

    # ---- adapters ---------------------------------------------------------------------------

    def put_adapter(self, user_id: str, src_dir: str | os.PathLike, adapter_type: str,
                    name: str, *, for_job: str | None = None) -> str:
        """Copy a flat directory of ``.json``/``.safetensors`` files in as a new adapter.

        The files are copied into the store's temp space and renamed into ``adapters/`` inside the
        transaction that inserts the record (and checks ``max_adapters_per_user``), so a record always
        points at complete files; a crash leaves at most a temp folder, which :meth:`recover` sweeps.
        ``for_job``: the job this adapter is the result of, whose reserved slot it takes.
        """
        check_name("adapter_type", adapter_type)
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ConfigError("name", "give a non-empty name of at most 200 characters")
        self.require_adapter_slot(user_id, for_job)  # fail before copying anything
        sources = list_adapter_files(Path(src_dir))
        adapter_id = _new_id("adp")
        with self.temp_dir("put-") as tmp:
            staged = tmp / adapter_id
            staged.mkdir()
            size, digest = copy_adapter_files(sources, staged)
            self._insert_adapter(staged, adapter_id, user_id, adapter_type, name, size, digest, for_job)
        return adapter_id

    def _insert_adapter(self, staged: Path, adapter_id: str, user_id: str, adapter_type: str, name: str,
                        size: int, digest: str, for_job: str | None) -> None:
        dest, moved = self._adapter_dir(adapter_id), False
        try:
            with self._write() as conn:
                self._require_user(conn, user_id)  # the user may have been deleted meanwhile
                self._check_adapter_quota(conn, user_id, for_job)
                conn.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, 'ready')",
                             (adapter_id, user_id, adapter_type, name, time.time(), size, digest))
                os.replace(staged, dest)  # under the write lock: no reader sees the record first
                moved = True
        except BaseException:
            if moved:  # the COMMIT failed after the rename
                shutil.rmtree(dest, ignore_errors=True)
            raise

    def _adapter_dir(self, adapter_id: str) -> Path:
        _check_id("adapter_id", adapter_id, "adp")  # defence in depth: callers checked already
        return self.adapters_dir / adapter_id

    def get_adapter(self, user_id: str, adapter_id: str) -> dict:
        """The adapter's record (adapter_id, adapter_type, name, created_at, size_bytes, ...)."""
        _check_id("user_id", user_id, "usr")
        _check_id("adapter_id", adapter_id, "adp")
        row = self._conn().execute(
            "SELECT * FROM adapters WHERE adapter_id = ? AND user_id = ?",
            (adapter_id, user_id)).fetchone()
        if row is None:
            raise NotFound("adapter_id")
        return dict(row)

    def adapter_path(self, user_id: str, adapter_id: str) -> Path:
        """The adapter's directory, only if it belongs to ``user_id``; else NotFound."""
        self.get_adapter(user_id, adapter_id)
        return self._adapter_dir(adapter_id)

    def verified_adapter_path(self, user_id: str, adapter_id: str) -> Path:
        """:meth:`adapter_path`, after checking the files still match the sha256 stored with them.

        Raises NotFound like adapter_path, or CorruptAdapter (field ``adapter``) if a file changed,
        vanished, was added or cannot be read. A check is remembered per adapter together with every
        file's (name, size, mtime, ctime, inode), so it is redone only when one of those changes: call
        it before every load of the adapter's files, it hashes once. Thread-safe.
        """
        record = self.get_adapter(user_id, adapter_id)
        path = self._adapter_dir(adapter_id)
        try:
            seen = (record["sha256"], tree_signature(path))  # before hashing: a change mid-hash shows next time
            with self._state_lock:
                if self._verified.get(adapter_id) == seen:
                    self._verified.move_to_end(adapter_id)
                    return path
            if adapter_digest(path) != record["sha256"]:
                raise CorruptAdapter(adapter_id, "its files no longer match the checksum recorded when it was stored")
        except OSError as exc:
            raise CorruptAdapter(adapter_id, f"its files cannot be read ({exc.strerror or exc})") from None
        self._remember_verified(adapter_id, seen)
        return path

    def _remember_verified(self, adapter_id: str, seen: tuple) -> None:
        with self._state_lock:
            self._verified[adapter_id] = seen
            self._verified.move_to_end(adapter_id)
            while len(self._verified) > _VERIFIED_CACHE:
                self._verified.popitem(last=False)

    def list_adapters(self, user_id: str) -> list[dict]:
        """The caller's adapter records, oldest first."""
        self._require_user(self._conn(), user_id)  # unknown user: an error, not []
        rows = self._conn().execute(
            "SELECT * FROM adapters WHERE user_id = ? ORDER BY created_at, adapter_id",
            (user_id,)).fetchall()
        return [dict(r) for r in rows]

    def delete_adapter(self, user_id: str, adapter_id: str) -> None:
        """Delete the record, then the files (an orphan directory is harmless; a dangling record
        would not be). The files are first moved into temp space, so a crash mid-delete leaves
        nothing half-deleted in ``adapters/``."""
        _check_id("user_id", user_id, "usr")
        _check_id("adapter_id", adapter_id, "adp")
        with self._write() as conn:
            cur = conn.execute("DELETE FROM adapters WHERE adapter_id = ? AND user_id = ?",
                               (adapter_id, user_id))
            if cur.rowcount == 0:
                raise NotFound("adapter_id")
        with self._state_lock:
            self._verified.pop(adapter_id, None)
        self._discard(self._adapter_dir(adapter_id))

    def _discard(self, path: Path) -> None:
        try:
            trash = Path(tempfile.mkdtemp(prefix="trash-", dir=self._temp_area().dir))
            os.replace(path, trash / path.name)
        except FileNotFoundError:
            return
        except OSError:  # another filesystem or no temp space: delete in place
            trash = path
        shutil.rmtree(trash, ignore_errors=True)

    # ---- training jobs ----------------------------------------------------------------------

    def create_job(self, user_id: str, kind: str, params: dict) -> str:
        """Queue a job of ``kind`` (e.g. 'lora') with JSON-serialisable ``params``; return job_id.

        QuotaExceeded if the user already has ``max_jobs_per_user`` jobs queued or running, or if its
        adapters plus those jobs fill ``max_adapters_per_user`` (each job stores one adapter).
        """
        check_name("kind", kind)
        if not isinstance(params, dict):
            raise ConfigError("params", "pass a dict of JSON values", f"got {type(params).__name__}")
        params_json = to_json("params", params)
        job_id, now = _new_id("job"), time.time()
        with self._write() as conn:
            self._require_user(conn, user_id)
            self._check_job_quota(conn, user_id)
            self._check_adapter_quota(conn, user_id)
            conn.execute("INSERT INTO jobs (job_id, user_id, kind, params, status, progress, message, created_at,"
                         " updated_at) VALUES (?, ?, ?, ?, 'queued', 0.0, '', ?, ?)",
                         (job_id, user_id, kind, params_json, now, now))
        return job_id

    def queued_jobs(self) -> list[dict]:
        """Internal (workers): every user's queued jobs, oldest first (to requeue them after a restart)."""
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE status = 'queued' ORDER BY created_at, rowid").fetchall()
        return [_job_dict(r) for r in rows]

    def claim_job(self, job_id: str, message: str = "") -> bool:
        """Internal (workers): mark a queued job ``running`` by this process; False if it is not queued
        (already claimed, e.g. queued twice, or finished), so a job never runs twice."""
        _check_id("job_id", job_id, "job")
        with self._claim_lock, self._write() as conn:
            worker = self._temp_area().token  # a job's owner is alive exactly while this lock is held
            cur = conn.execute("UPDATE jobs SET status = 'running', worker = ?, progress = 0.0, message = ?,"
                               " updated_at = ? WHERE job_id = ? AND status = 'queued'",
                               (worker, message, time.time(), job_id))
        return cur.rowcount == 1

    def update_job(self, job_id: str, *, status: str | None = None,
                   progress: float | None = None, message: str | None = None,
                   adapter_id: str | None = None) -> dict:
        """Internal (workers): change a job's fields; return the updated job.

        A finished job (succeeded/failed) is final. ``adapter_id`` must belong to the job's user.
        """
        _check_id("job_id", job_id, "job")
        new = job_changes(status, progress, message)
        with self._write() as conn:
            job = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if job is None:
                raise NotFound("job_id")
            if job["status"] in ("succeeded", "failed"):
                raise ConfigError("status", "create a new job instead",
                                  f"job {job_id} already {job['status']}")
            if adapter_id is not None:
                _check_id("adapter_id", adapter_id, "adp")
                if conn.execute("SELECT 1 FROM adapters WHERE adapter_id = ? AND user_id = ?",
                                (adapter_id, job["user_id"])).fetchone() is None:
                    raise NotFound("adapter_id")
                new["adapter_id"] = adapter_id
            sets = "".join(f"{k} = ?, " for k in new)  # keys come from job_changes, not callers
            conn.execute(f"UPDATE jobs SET {sets}updated_at = ? WHERE job_id = ?",
                         (*new.values(), time.time(), job_id))
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _job_dict(row)

    def get_job(self, user_id: str, job_id: str) -> dict:
        """The job, only if it belongs to ``user_id``; else NotFound."""
        _check_id("user_id", user_id, "usr")
        _check_id("job_id", job_id, "job")
        row = self._conn().execute("SELECT * FROM jobs WHERE job_id = ? AND user_id = ?",
                                   (job_id, user_id)).fetchone()
        if row is None:
            raise NotFound("job_id")
        return _job_dict(row)

    def list_jobs(self, user_id: str) -> list[dict]:
        """The caller's jobs, oldest first."""
        self._require_user(self._conn(), user_id)  # unknown user: an error, not []
        rows = self._conn().execute(
            "SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at, job_id",
            (user_id,)).fetchall()
        return [_job_dict(r) for r in rows]


def _job_dict(row: sqlite3.Row) -> dict:
    job = {**dict(row), "params": json.loads(row["params"])}
    job.pop("worker", None)  # which process ran it: internal to recovery
    return job


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a version-1 store up to date (columns only ever get added)."""
    for table, (column, decl) in _ADDED_COLUMNS.items():
        if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            if table == "history":
                conn.execute(f"UPDATE history SET size = {_HISTORY_SIZE_SQL}")


def _active_jobs(conn: sqlite3.Connection, user_id: str, excluding: str | None = None) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND {_ACTIVE} AND job_id IS NOT ?",
                        (user_id, excluding)).fetchone()[0]


def _adapter_count(conn: sqlite3.Connection, user_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM adapters WHERE user_id = ?", (user_id,)).fetchone()[0]


def _history_usage(conn: sqlite3.Connection, user_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM history WHERE user_id = ?",
                       (user_id,)).fetchone()
    return row[0], row[1]


# ---- a process's temp folder, owned through an flock ---------------------------------------

class _TempArea:
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
