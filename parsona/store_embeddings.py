"""History embeddings in the store: one float32 vector per (history item, encoder), kept beside the
item so it is computed once, and deleted with it (``ON DELETE CASCADE``: a deleted user or item
leaves no vector behind).

Functions over a connection, used by :class:`parsona.store.Store`; every query joins ``history``
on ``user_id = ?``, so one user's vectors are never read or written through another user's id.
``encoder`` names the embedding model and its settings (``HistoryEncoder`` key): vectors of
another encoder are simply absent, so changing the encoder re-embeds instead of mixing spaces.
"""

from __future__ import annotations

import sqlite3

import numpy as np

from parsona.errors import ConfigError


def missing(conn: sqlite3.Connection, user_id: str, encoder: str, limit: int, *,
            table: str = "history_embeddings", by: str = "encoder") -> list[tuple[str, str]]:
    """(item_id, text) of the user's newest ``limit`` items that have no row from ``encoder`` in ``table``
    (whose producer column is ``by``: the intents' table has one per writer, ``parsona.store_intents``);
    blank items have nothing to derive and are left out. Newest first."""
    rows = conn.execute(
        f"SELECT h.item_id, h.text FROM (SELECT item_id, text, seq FROM history WHERE user_id = ?"
        f" ORDER BY seq DESC LIMIT ?) h LEFT JOIN {table} e ON e.item_id = h.item_id AND e.{by} = ?"
        " WHERE e.item_id IS NULL AND trim(h.text) != '' ORDER BY h.seq DESC", (user_id, limit, encoder)).fetchall()
    return [(r["item_id"], r["text"]) for r in rows]


def own_items(conn: sqlite3.Connection, user_id: str, item_ids: list[str]) -> set[str]:
    """Those of ``item_ids`` that are the user's history items (another user's, or a deleted one, are not)."""
    if not item_ids:
        return set()
    return {r["item_id"] for r in conn.execute(
        f"SELECT item_id FROM history WHERE user_id = ? AND item_id IN ({','.join('?' * len(item_ids))})",
        (user_id, *item_ids))}


def put(conn: sqlite3.Connection, user_id: str, encoder: str, item_ids: list[str], vectors: np.ndarray) -> int:
    """Store ``vectors`` (n, d) for the user's ``item_ids``; items that are not the user's (or are gone)
    are skipped, never written. Returns how many were stored."""
    X = np.ascontiguousarray(vectors, dtype=np.float32)
    if X.ndim != 2 or len(X) != len(item_ids) or not np.isfinite(X).all():
        raise ConfigError("vectors", "Pass one finite (d,) vector per item.", problem=f"shape {X.shape}, {len(item_ids)} items")
    mine = own_items(conn, user_id, item_ids)
    rows = [(i, encoder, x.tobytes()) for i, x in zip(item_ids, X) if i in mine]
    conn.executemany("INSERT OR REPLACE INTO history_embeddings (item_id, encoder, vector) VALUES (?, ?, ?)", rows)
    return len(rows)


def read(conn: sqlite3.Connection, user_id: str, encoder: str, limit: int) -> tuple[np.ndarray, float | None]:
    """The vectors (n, d) of the user's newest ``limit`` items that have one, and the newest item's time."""
    rows = conn.execute(
        "SELECT e.vector, h.created_at FROM history h JOIN history_embeddings e ON e.item_id = h.item_id"
        " WHERE h.user_id = ? AND e.encoder = ? ORDER BY h.seq DESC LIMIT ?", (user_id, encoder, limit)).fetchall()
    if not rows:
        return np.zeros((0, 0), dtype=np.float32), None
    return np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows]), float(rows[0]["created_at"])
