"""The embedded default store: users, API keys, history, adapters and training jobs.

One SQLite file (``<root>/parsona.sqlite3``) holds the records; adapter files live in
``<root>/adapters/<adapter_id>/``. Three rules keep users apart:

- every user-facing query carries ``WHERE user_id = ?``;
- ids are generated here (``secrets.token_hex``) and checked against a strict pattern before any
  query or path is built, so a request string never becomes a path;
- a malformed, missing or someone else's id all raise the same :class:`NotFound`, so a caller
  learns nothing about other users' data (HTTP handlers map it to 404).

SQLite runs in WAL mode with one connection per thread; every write is an explicit
``BEGIN IMMEDIATE`` transaction, which takes the write lock up front instead of upgrading a read
lock mid-transaction (the upgrade is what produces "database is locked" under concurrency).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from parsona.errors import ConfigError
from parsona.io import atomic_dir
from parsona.store_checks import (check_name, copy_adapter_files, history_row, job_changes,
                                  list_adapter_files, to_json)

SCHEMA_VERSION = 1

# fullmatch, never `$`: `$` also matches before a trailing newline.
_ID_RE = re.compile(r"(usr|adp|job|itm)_[0-9a-f]{32}")
_KEY_PREFIX = "psk_"

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
    text TEXT NOT NULL, kind TEXT, metadata TEXT, created_at REAL NOT NULL);
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
    adapter_id TEXT REFERENCES adapters(adapter_id) ON DELETE SET NULL);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs(user_id, created_at);
"""


class NotFound(LookupError):
    """No such record *for this user*: missing, someone else's and malformed ids look the same."""

    def __init__(self, field: str):
        self.field = field
        super().__init__(f"{field}: not found for this user. Use an id this user was given.")


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
    on one machine (SQLite file locking). Call :meth:`close` when done.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.adapters_dir = self.root / "adapters"
        self.adapters_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "parsona.sqlite3"
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._closed = False
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
            if row is None:
                conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row["version"] > SCHEMA_VERSION:
                raise ConfigError(str(self.db_path), "upgrade parsona to open this store",
                                  f"schema version {row['version']} > {SCHEMA_VERSION}")

    def close(self) -> None:
        """Close every thread's connection. The store cannot be used afterwards."""
        self._closed = True
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _require_user(self, conn: sqlite3.Connection, user_id: Any) -> str:
        _check_id("user_id", user_id, "usr")
        if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
            raise NotFound("user_id")
        return user_id

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
        """Append items (a text, or ``{"text", "kind"?, "metadata"?}``); return their item_ids."""
        if not isinstance(items, (list, tuple)):
            raise ConfigError("items", "pass a list of texts or dicts", f"got {type(items).__name__}")
        rows = [history_row(i, item) for i, item in enumerate(items)]
        ids = [_new_id("itm") for _ in rows]
        now = time.time()
        with self._write() as conn:
            self._require_user(conn, user_id)
            conn.executemany(
                "INSERT INTO history (item_id, user_id, text, kind, metadata, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(item_id, user_id, *row, now) for item_id, row in zip(ids, rows)])
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
                    name: str) -> str:
        """Copy a flat directory of ``.json``/``.safetensors`` files in as a new adapter.

        The files land atomically (temp dir, then rename); the record is inserted afterwards and
        the files are removed again if that fails, so a record always points at complete files.
        """
        check_name("adapter_type", adapter_type)
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ConfigError("name", "give a non-empty name of at most 200 characters")
        self._require_user(self._conn(), user_id)  # fail before copying anything
        sources = list_adapter_files(Path(src_dir))
        adapter_id = _new_id("adp")
        dest = self._adapter_dir(adapter_id)
        with atomic_dir(dest) as tmp:
            size, digest = copy_adapter_files(sources, tmp)
        try:
            self._insert_adapter(adapter_id, user_id, adapter_type, name, size, digest)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return adapter_id

    def _insert_adapter(self, adapter_id: str, user_id: str, adapter_type: str, name: str,
                        size: int, digest: str) -> None:
        with self._write() as conn:
            self._require_user(conn, user_id)  # the user may have been deleted meanwhile
            conn.execute("INSERT INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, 'ready')",
                         (adapter_id, user_id, adapter_type, name, time.time(), size, digest))

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

    def list_adapters(self, user_id: str) -> list[dict]:
        """The caller's adapter records, oldest first."""
        self._require_user(self._conn(), user_id)  # unknown user: an error, not []
        rows = self._conn().execute(
            "SELECT * FROM adapters WHERE user_id = ? ORDER BY created_at, adapter_id",
            (user_id,)).fetchall()
        return [dict(r) for r in rows]

    def delete_adapter(self, user_id: str, adapter_id: str) -> None:
        """Delete the record, then the files (an orphan directory is harmless; a dangling record
        would not be)."""
        _check_id("user_id", user_id, "usr")
        _check_id("adapter_id", adapter_id, "adp")
        with self._write() as conn:
            cur = conn.execute("DELETE FROM adapters WHERE adapter_id = ? AND user_id = ?",
                               (adapter_id, user_id))
            if cur.rowcount == 0:
                raise NotFound("adapter_id")
        shutil.rmtree(self._adapter_dir(adapter_id), ignore_errors=True)

    # ---- training jobs ----------------------------------------------------------------------

    def create_job(self, user_id: str, kind: str, params: dict) -> str:
        """Queue a job of ``kind`` (e.g. 'lora') with JSON-serialisable ``params``; return job_id."""
        check_name("kind", kind)
        if not isinstance(params, dict):
            raise ConfigError("params", "pass a dict of JSON values", f"got {type(params).__name__}")
        params_json = to_json("params", params)
        job_id, now = _new_id("job"), time.time()
        with self._write() as conn:
            self._require_user(conn, user_id)
            conn.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, 'queued', 0.0, '', ?, ?, NULL)",
                         (job_id, user_id, kind, params_json, now, now))
        return job_id

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
    return {**dict(row), "params": json.loads(row["params"])}
