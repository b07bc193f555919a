"""History intents in the store: what each of a user's texts is for, in one sentence (the steering-rules
agent's intents, arXiv 2410.03731), kept beside the item so the large model summarises it once, and
deleted with it (``ON DELETE CASCADE``).

Functions over a connection, used by :class:`parsona.store.Store`, as ``parsona.store_embeddings`` is for
vectors: every query joins ``history`` on ``user_id = ?``, so one user's intents are never read or written
through another user's id. ``writer`` names the model and prompt that wrote them (``parsona.personalize.
Intents.key``): another writer's intents are absent, so a changed model re-summarises instead of mixing.

An item keeps the intent of the last writer that summarised it (``put`` drops the others'), so a user's
intents are bounded by their history's count whatever writers come and go. An intent may be close to a
sentence of the user's (the extractive fallback is one), so it is the user's data like the history itself:
never listed to anyone, and never put into an agent's saved state.
"""

from __future__ import annotations

import sqlite3

from parsona.errors import ConfigError
from parsona.store_embeddings import missing, own_items

MAX_INTENT_CHARS = 400   # a one-sentence summary

__all__ = ["MAX_INTENT_CHARS", "missing_intents", "put", "read"]


def missing_intents(conn: sqlite3.Connection, user_id: str, writer: str, limit: int) -> list[tuple[str, str]]:
    """(item_id, text) of the user's newest ``limit`` non-blank items with no intent from ``writer``, newest first."""
    return missing(conn, user_id, writer, limit, table="history_intents", by="writer")


def put(conn: sqlite3.Connection, user_id: str, writer: str, item_ids: list[str], intents: list[str]) -> int:
    """Store one intent per item for the user's ``item_ids`` (others' items are skipped); returns how many."""
    if len(intents) != len(item_ids):
        raise ConfigError("intents", "Pass one intent per item.", problem=f"{len(intents)} for {len(item_ids)} items")
    for intent in intents:
        if not isinstance(intent, str) or not intent.strip() or len(intent) > MAX_INTENT_CHARS:
            raise ConfigError("intents", f"Each intent is a non-blank string of at most {MAX_INTENT_CHARS} characters.",
                              problem=f"got {type(intent).__name__} of length {len(intent) if isinstance(intent, str) else '-'}")
    mine = own_items(conn, user_id, item_ids)
    rows = [(i, writer, intent) for i, intent in zip(item_ids, intents) if i in mine]
    conn.executemany("DELETE FROM history_intents WHERE item_id = ?", [(i,) for i, _, _ in rows])   # one writer's each
    conn.executemany("INSERT INTO history_intents (item_id, writer, intent) VALUES (?, ?, ?)", rows)
    return len(rows)


def read(conn: sqlite3.Connection, user_id: str, writer: str, limit: int) -> list[tuple[str, str]]:
    """(text, intent) of those of the user's newest ``limit`` items that have an intent from ``writer``, newest
    first: the window ``missing_intents`` fills, so what a call returns never depends on an earlier one's limit."""
    rows = conn.execute(
        "SELECT h.text, i.intent FROM (SELECT item_id, text, seq FROM history WHERE user_id = ? ORDER BY seq DESC"
        " LIMIT ?) h JOIN history_intents i ON i.item_id = h.item_id WHERE i.writer = ? ORDER BY h.seq DESC",
        (user_id, limit, writer)).fetchall()
    return [(r["text"], r["intent"]) for r in rows]
