"""The public bank of expert LoRAs in the store (generated LoRAs, SG-LoRA): each expert a PEFT LoRA with
a text description and that description's embedding.

The operator builds the bank (``parsona/recipes/build_expert_bank.py``); every user may blend from it,
and no user can add to it, change it or delete from it. Its files live in ``<root>/experts/<expert_id>/``,
copied in through the store's temp space and renamed into place inside the transaction that inserts
the record (so a record always points at complete files), and their checksum is verified before each
load, as a user's adapter's is. ``encoder`` is the embedding's key (``Personas.encoder_key``): a query
is only ever compared with vectors of the same encoder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from parsona.errors import ConfigError
from parsona.store_checks import copy_adapter_files, list_adapter_files
from parsona.store_ids import NotFound, check_id, new_id

MAX_DESCRIPTION = 4000  # characters: a paragraph or two


class ExpertBank:
    """``store.experts``: add, list, find and delete the public experts."""

    def __init__(self, store):
        self.store = store
        self.dir = store.root / "experts"
        self.dir.mkdir(exist_ok=True)

    def add(self, src_dir: str | os.PathLike, name: str, description: str, vector, encoder: str) -> str:
        """Copy a PEFT LoRA directory in as a public expert described by ``description`` (its ``vector``
        under ``encoder``); returns the expert_id."""
        from parsona.adapters.peft_format import read_peft_lora

        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ConfigError("name", "Give a non-empty name of at most 200 characters.", problem=f"got {name!r:.40}")
        if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
            raise ConfigError("description", f"Describe the expert in at most {MAX_DESCRIPTION} characters.",
                              problem=f"got {type(description).__name__} of length {len(description) if isinstance(description, str) else '?'}")
        v = np.ascontiguousarray(vector, dtype=np.float32)
        if v.ndim != 1 or not len(v) or not np.isfinite(v).all():
            raise ConfigError("vector", "Give the description's embedding: one finite (d,) vector.", problem=f"shape {v.shape}")
        read_peft_lora(src_dir)                                   # a valid PEFT LoRA, or a ConfigError naming the fault
        sources = list_adapter_files(Path(src_dir))
        expert_id = new_id("exp")
        with self.store.temp_dir("expert-") as tmp:
            staged = tmp / expert_id
            staged.mkdir()
            size, digest = copy_adapter_files(sources, staged)
            moved = False
            try:
                with self.store._write() as conn:
                    conn.execute("INSERT INTO experts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (expert_id, name, description, encoder, v.tobytes(), size, digest, time.time()))
                    os.replace(staged, self.dir / expert_id)   # under the write lock: no reader sees the record first
                    moved = True
            except BaseException:
                if moved:                                      # the COMMIT failed after the rename
                    shutil.rmtree(self.dir / expert_id, ignore_errors=True)
                raise
        return expert_id

    def list(self, encoder: str | None = None) -> list[dict]:
        """Every public expert (id, name, description, encoder, size_bytes, created_at), oldest first."""
        rows = self.store._conn().execute(
            "SELECT expert_id, name, description, encoder, size_bytes, created_at FROM experts"
            + (" WHERE encoder = ?" if encoder else "") + " ORDER BY created_at, expert_id",
            (encoder,) if encoder else ()).fetchall()
        return [dict(r) for r in rows]

    def vectors(self, encoder: str) -> tuple[list[str], np.ndarray]:
        """(expert ids, their description vectors (n, d)) under ``encoder``, oldest first."""
        rows = self.store._conn().execute(
            "SELECT expert_id, vector FROM experts WHERE encoder = ? ORDER BY created_at, expert_id", (encoder,)).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r["expert_id"] for r in rows], np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows])

    def path(self, expert_id: str, field: str = "expert_id") -> Path:
        """The expert's directory, its files checked against their checksum (NotFound, CorruptAdapter)."""
        check_id(field, expert_id, "exp")
        row = self.store._conn().execute("SELECT sha256 FROM experts WHERE expert_id = ?", (expert_id,)).fetchone()
        if row is None:
            raise NotFound(field)
        return self.store._verified_dir(expert_id, self.dir / expert_id, row["sha256"])

    def delete(self, expert_id: str) -> None:
        """Delete the record, then the files (moved out through temp space first, as an adapter's)."""
        check_id("expert_id", expert_id, "exp")
        with self.store._write() as conn:
            if conn.execute("DELETE FROM experts WHERE expert_id = ?", (expert_id,)).rowcount == 0:
                raise NotFound("expert_id")
        self.store._verified.forget(expert_id)
        self.store._temp.discard(self.dir / expert_id)
