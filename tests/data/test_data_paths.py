"""Where the data is found, the stable split, and that reading never writes to the data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from parsona.data import paths
from parsona.data.paths import data_dir, split_of
from parsona.errors import ConfigError


def _have_data() -> bool:
    try:
        data_dir()
        return True
    except ConfigError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="shared data dir not found (set PARSONA_DATA)")


def _independent_split(key: str, eval_fraction: float) -> str:
    """The documented rule, written out again: first 8 sha256 bytes, big-endian, over 2**64."""
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "train"


KNOWN = {
    # Hard-coded from hashlib once; a change in the rule (or a switch to hash()) breaks these.
    "\n\nHuman: What is DVT?\n\nAssistant:": "train",
    "\n\nHuman: How much do solar panels cost?\n\nAssistant:": "train",
    "\n\nHuman: Where is the biggest river on earth\n\nAssistant:": "eval",
    "\n\nHuman: Which musician is Beyonce married to?\n\nAssistant:": "eval",
    "hello": "train",
}


def test_split_is_stable_and_matches_sha256():
    for key, expected in KNOWN.items():
        assert split_of(key, 0.1) == expected == _independent_split(key, 0.1)
        assert split_of(key, 0.1) == split_of(key, 0.1)


def test_split_fraction_is_roughly_honoured():
    keys = [f"prompt {i}" for i in range(4000)]
    share = sum(split_of(k, 0.25) == "eval" for k in keys) / len(keys)
    assert abs(share - 0.25) < 0.03
    assert all(_independent_split(k, 0.25) == split_of(k, 0.25) for k in keys[:200])


def test_split_rejects_bad_fraction():
    with pytest.raises(ConfigError, match="eval_fraction"):
        split_of("x", 1.5)


def test_env_var_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSONA_DATA", str(tmp_path))
    assert data_dir() == tmp_path


def test_env_var_to_missing_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSONA_DATA", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="PARSONA_DATA"):
        data_dir()


def test_missing_data_dir_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("PARSONA_DATA", raising=False)
    monkeypatch.setattr(paths, "_candidates", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ConfigError) as err:
        data_dir()
    assert str(tmp_path / "a") in str(err.value) and "PARSONA_DATA" in str(err.value)


def test_missing_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PARSONA_DATA", str(tmp_path))
    from parsona.data.enron import read_enron

    with pytest.raises(ConfigError, match="pan11_small.jsonl"):
        read_enron()


@needs_data
def test_reading_everything_never_writes_to_the_data():
    from parsona import data

    root = data_dir()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    data.read_objective("helpful"), data.read_hh("harmless-base"), data.read_dpl_relabels()
    data.read_opinionqa(), data.read_enron(), data.read_ratings(), data.read_tags(), data.read_movies()
    after = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert before == after  # no file changed, none added or removed
