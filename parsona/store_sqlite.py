"""How :mod:`parsona.store` uses SQLite: the schema and its migration, connection settings, write
transactions.

SQLite runs in WAL mode with one connection per thread (:class:`Connections`); every write is an
explicit ``BEGIN IMMEDIATE`` transaction, which takes the write lock up front instead of upgrading a
read lock mid-transaction (the upgrade is what produces "database is locked" under concurrency).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from parsona.errors import ConfigError

SCHEMA_VERSION = 5  # 2: jobs.worker (who runs it), history.size (bytes, for the quota); 3: history_embeddings;
#                     4: experts, rules; 5: history_intents

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
CREATE TABLE IF NOT EXISTS history_embeddings (
    item_id TEXT NOT NULL REFERENCES history(item_id) ON DELETE CASCADE,
    encoder TEXT NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (item_id, encoder));
CREATE TABLE IF NOT EXISTS history_intents (
    item_id TEXT NOT NULL REFERENCES history(item_id) ON DELETE CASCADE,
    writer TEXT NOT NULL, intent TEXT NOT NULL,
    PRIMARY KEY (item_id, writer));
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
CREATE TABLE IF NOT EXISTS rules (
    user_id TEXT PRIMARY KEY REFERENCES users(user_id) ON DELETE CASCADE,
    rules TEXT NOT NULL, source TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS experts (
    expert_id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL,
    encoder TEXT NOT NULL, vector BLOB NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created_at REAL NOT NULL);
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


def connect(db_path: Path) -> sqlite3.Connection:
    """A new connection to ``db_path`` with the store's settings (rows as :class:`sqlite3.Row`)."""
    # isolation_level=None: we issue BEGIN ourselves, so the module never opens an
    # implicit deferred transaction behind our back.
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; safe with WAL
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Connections:
    """One connection per thread to ``db_path``, opened on first use; :meth:`close` closes them all."""

    def __init__(self, db_path: Path):
        self.db_path = db_path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise RuntimeError("Store is closed; open a new Store(root).")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.db_path)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)  # so close() can reach connections of other threads
        return conn

    def close(self) -> None:
        """Close every thread's connection; :meth:`get` refuses from now on."""
        self._closed = True
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction on ``conn`` holding the write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # also after a failed COMMIT, so the next BEGIN can run
            conn.execute("ROLLBACK")
        raise


def create_schema(conn: sqlite3.Connection, db_path: Path) -> None:
    """Create the tables, or bring an older store's up to date; inside a :func:`write` transaction.

    ConfigError if the store was written by a newer parsona (a higher schema version).
    """
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is not None and row["version"] > SCHEMA_VERSION:
        raise ConfigError(str(db_path), "upgrade parsona to open this store",
                          f"schema version {row['version']} > {SCHEMA_VERSION}")
    _add_missing_columns(conn)
    for statement in _INDEXES.split(";"):
        if statement.strip():
            conn.execute(statement)
    if row is None:
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif row["version"] < SCHEMA_VERSION:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a version-1 store up to date (columns only ever get added)."""
    for table, (column, decl) in _ADDED_COLUMNS.items():
        if column not in {r["name"] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            if table == "history":
                conn.execute(f"UPDATE history SET size = {_HISTORY_SIZE_SQL}")
