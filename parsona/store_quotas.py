"""Per-user quotas of :mod:`parsona.store`: the limits, the error, and the usage queries they check.

Each check runs on the connection of the write transaction it guards (``BEGIN IMMEDIATE`` holds the
write lock), so concurrent requests (threads or processes) can never pass a limit together.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from parsona.errors import ConfigError

_ACTIVE = "status IN ('queued', 'running')"


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


# ---- what a user holds ------------------------------------------------------------------------

def usage_of(conn: sqlite3.Connection, user_id: str) -> dict[str, int]:
    """What ``user_id`` holds, in the units of :class:`Quotas`."""
    items, size = _history_usage(conn, user_id)
    return {"jobs": _active_jobs(conn, user_id), "adapters": _adapter_count(conn, user_id),
            "history_items": items, "history_bytes": size}


def _active_jobs(conn: sqlite3.Connection, user_id: str, excluding: str | None = None) -> int:
    return conn.execute(f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND {_ACTIVE} AND job_id IS NOT ?",
                        (user_id, excluding)).fetchone()[0]


def _adapter_count(conn: sqlite3.Connection, user_id: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM adapters WHERE user_id = ?", (user_id,)).fetchone()[0]


def _history_usage(conn: sqlite3.Connection, user_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM history WHERE user_id = ?",
                       (user_id,)).fetchone()
    return row[0], row[1]


# ---- the checks: QuotaExceeded if the write would pass a limit --------------------------------

def check_adapter_quota(conn: sqlite3.Connection, quotas: Quotas, user_id: str,
                        for_job: str | None = None) -> None:
    """Adapters stored plus jobs queued or running (each will store one), ``for_job``'s own slot aside."""
    used = _adapter_count(conn, user_id) + _active_jobs(conn, user_id, excluding=for_job)
    if used >= quotas.max_adapters_per_user:
        raise QuotaExceeded("max_adapters_per_user", quotas.max_adapters_per_user, used,
                            "Delete an adapter you no longer need (DELETE /v1/adapters/{id}), or wait for your "
                            "queued training jobs to finish (each stores one), then retry.")


def check_job_quota(conn: sqlite3.Connection, quotas: Quotas, user_id: str) -> None:
    active = _active_jobs(conn, user_id)
    if active >= quotas.max_jobs_per_user:
        raise QuotaExceeded("max_jobs_per_user", quotas.max_jobs_per_user, active,
                            "Wait until one of your queued or running jobs finishes (GET /v1/jobs/{id}), "
                            "then retry.")


def check_history_quota(conn: sqlite3.Connection, quotas: Quotas, user_id: str, items: int, size: int) -> None:
    used_items, used_bytes = _history_usage(conn, user_id)
    if used_items + items > quotas.max_history_items:
        raise QuotaExceeded("max_history_items", quotas.max_history_items, used_items,
                            f"Send fewer items: this server keeps at most {quotas.max_history_items} history "
                            "items per user.", adding=items)
    if used_bytes + size > quotas.max_history_bytes:
        raise QuotaExceeded("max_history_bytes", quotas.max_history_bytes, used_bytes,
                            f"Send less text: this server keeps at most {quotas.max_history_bytes} bytes of "
                            "history per user.", adding=size)
