"""Training jobs in the store: queued by a user, claimed and updated by the workers, read back by their
owner only. Mixed into :class:`parsona.store.Store` (it uses its connections, write transactions,
temp-area token and quotas); a job's adapter slot is reserved by the quota check at creation.
"""

from __future__ import annotations

import json
import sqlite3
import time

from parsona.errors import ConfigError
from parsona.store_checks import check_name, job_changes, to_json
from parsona.store_ids import NotFound, check_id, new_id
from parsona.store_quotas import check_adapter_quota, check_job_quota


class JobStore:
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
        job_id, now = new_id("job"), time.time()
        with self._write() as conn:
            self._require_user(conn, user_id)
            check_job_quota(conn, self.quotas, user_id)
            check_adapter_quota(conn, self.quotas, user_id)
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
        check_id("job_id", job_id, "job")
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
        check_id("job_id", job_id, "job")
        new = job_changes(status, progress, message)
        with self._write() as conn:
            job = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if job is None:
                raise NotFound("job_id")
            if job["status"] in ("succeeded", "failed"):
                raise ConfigError("status", "create a new job instead",
                                  f"job {job_id} already {job['status']}")
            if adapter_id is not None:
                check_id("adapter_id", adapter_id, "adp")
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
        check_id("user_id", user_id, "usr")
        check_id("job_id", job_id, "job")
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
