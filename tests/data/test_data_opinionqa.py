"""OpinionQA group distributions: counts from the data README, errors."""

from __future__ import annotations

import json

import pytest

from parsona.data.opinionqa import GROUPS, by_group, read_opinionqa, read_opinionqa_file
from parsona.data.paths import data_dir
from parsona.errors import ConfigError


def _have_data() -> bool:
    try:
        return (data_dir() / "opinionqa-groups").is_dir()
    except ConfigError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="shared data dir not found (set PARSONA_DATA)")


@needs_data
def test_counts_match_readme():
    rows = read_opinionqa()
    assert len(rows) == 2464
    assert len({r.qkey for r in rows}) == 493
    groups = by_group(rows)
    assert set(groups) == set(GROUPS)
    assert len(groups["Democrat"]) == 492 and len(groups["Overall"]) == 493  # Democrat misses one
    assert all(len(r.options) == len(r.dist) for r in rows)


def test_bad_dist_names_file_and_line(tmp_path):
    row = {"qkey": "Q", "wave": "W1", "question": "?", "options": ["a", "b"], "attribute": "A",
           "group": "G", "dist": [0.5, 0.5]}
    path = tmp_path / "o.jsonl"
    path.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, dist=[1.0])) + "\n")
    with pytest.raises(ConfigError, match=r"o\.jsonl:2"):
        read_opinionqa_file(path)
