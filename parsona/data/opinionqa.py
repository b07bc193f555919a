"""OpinionQA group answer distributions (Pew ATP, GPO format): one row per (question, group)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from parsona.data.paths import data_file, iter_jsonl, require, row_error

GROUPS = ("Overall", "Democrat", "Republican", "$100,000 or more", "Less than $30,000")


@dataclass(frozen=True)
class GroupOpinion:
    """How one demographic ``group`` answered one multiple-choice question.

    ``dist[i]`` is the (Pew-weighted) share of the group that picked ``options[i]``; it sums to 1.
    """

    qkey: str
    wave: str
    question: str
    options: tuple[str, ...]
    attribute: str
    group: str
    dist: tuple[float, ...]


_KEYS = {"qkey": str, "wave": str, "question": str, "options": list, "attribute": str, "group": str, "dist": list}


def read_opinionqa_file(path: str | Path) -> list[GroupOpinion]:
    """Read a GPO-format .jsonl file; a malformed row raises ConfigError naming file and line."""
    path = Path(path)
    rows = []
    for lineno, row in iter_jsonl(path):
        require(row, _KEYS, path, lineno)
        options, dist = row["options"], row["dist"]
        if len(options) != len(dist) or len(options) < 2:
            raise row_error(path, lineno, f"{len(options)} options but {len(dist)} dist values")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in dist):
            raise row_error(path, lineno, "'dist' must hold numbers")
        if not math.isclose(sum(dist), 1.0, abs_tol=1e-3):
            raise row_error(path, lineno, f"'dist' sums to {sum(dist):.4f}, not 1")
        rows.append(GroupOpinion(row["qkey"], row["wave"], row["question"], tuple(options),
                                 row["attribute"], row["group"], tuple(float(x) for x in dist)))
    return rows


def read_opinionqa() -> list[GroupOpinion]:
    """All 2,464 (question, group) rows: 493 questions x 5 groups (Democrat lacks one question)."""
    return read_opinionqa_file(data_file("opinionqa-groups", "opinionqa_5groups.jsonl"))


def by_group(rows: list[GroupOpinion]) -> dict[str, dict[str, GroupOpinion]]:
    """``{group: {qkey: row}}``, the shape a few-shot group predictor wants."""
    out: dict[str, dict[str, GroupOpinion]] = {}
    for row in rows:
        out.setdefault(row.group, {})[row.qkey] = row
    return out
