"""HH-RLHF and DPL relabel readers: parsing, counts from the data README, errors."""

from __future__ import annotations

import gzip
import json

import pytest

from parsona.data import hh_rlhf
from parsona.data.hh_rlhf import (
    MultiObjectivePair,
    parse_dialogue_pair,
    read_dpl_file,
    read_dpl_relabels,
    read_hh,
    read_objective,
    read_pairs_file,
    train_eval_split,
)
from parsona.data.paths import data_dir
from parsona.errors import ConfigError


def _have_data() -> bool:
    try:
        return (data_dir() / "hh-rlhf").is_dir()
    except ConfigError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="shared data dir not found (set PARSONA_DATA)")

DIALOGUE = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:"


def test_parse_hand_written_dialogue():
    pair = parse_dialogue_pair(DIALOGUE + " An apple.", DIALOGUE + " A chair.", "x:1")
    assert pair.prompt == DIALOGUE
    assert (pair.chosen, pair.rejected, pair.source) == ("An apple.", "A chair.", "x:1")


def test_parse_reply_that_contains_an_assistant_turn():
    # Real rows do this: the reply itself holds "\n\nAssistant:", so the split must be at the
    # last *shared* assistant turn, not the last one of each string.
    chosen = DIALOGUE + " Wait...\n\nAssistant: A pear."
    pair = parse_dialogue_pair(chosen, DIALOGUE + " A chair.")
    assert pair.prompt == DIALOGUE and pair.chosen == "Wait...\n\nAssistant: A pear."


def test_parse_without_shared_assistant_turn_fails():
    with pytest.raises(ValueError):
        parse_dialogue_pair("\n\nHuman: a", "\n\nHuman: b")


def _write_gz(path, rows):
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")


def test_malformed_row_names_file_and_line(tmp_path):
    good = {"chosen": DIALOGUE + " a", "rejected": DIALOGUE + " b"}
    path = tmp_path / "bad.jsonl.gz"
    _write_gz(path, [good, good, {"chosen": "x"}])
    with pytest.raises(ConfigError, match=r"bad\.jsonl\.gz:3.*rejected"):
        read_pairs_file(path)
    _write_gz(path, [good, "{not json"])
    with pytest.raises(ConfigError, match=r"bad\.jsonl\.gz:2.*JSON"):
        read_pairs_file(path)
    _write_gz(path, [{"chosen": "no turns", "rejected": "at all"}])
    with pytest.raises(ConfigError, match=r"bad\.jsonl\.gz:1"):
        read_pairs_file(path)


def test_malformed_row_through_env_var(tmp_path, monkeypatch):
    (tmp_path / "hh-rlhf").mkdir()
    _write_gz(tmp_path / "hh-rlhf" / "harmless-base.test.jsonl.gz", [{"chosen": 1, "rejected": "x"}])
    monkeypatch.setenv("PARSONA_DATA", str(tmp_path))
    with pytest.raises(ConfigError, match=r"harmless-base\.test\.jsonl\.gz:1"):
        read_hh("harmless-base")


def test_unknown_split_is_an_error():
    with pytest.raises(ConfigError, match="split"):
        read_hh("helpful-train")


def test_dpl_row_joins_relabel_and_crowd_label(tmp_path):
    row = {"prompt": "Human: hi", "responses": ["A", "B"], "label": 1, "original_label": 0,
           "objective": "helpful", "data_subset": "harmless", "Index": 3, "chosen": "", "rejected": ""}
    path = tmp_path / "helpful.test.jsonl.gz"
    _write_gz(path, [row, dict(row, label=2)])
    with pytest.raises(ConfigError, match=r"helpful\.test\.jsonl\.gz:2.*label"):
        read_dpl_file(path)
    _write_gz(path, [row])
    (pair,) = read_dpl_file(path)
    assert pair.prompt == "\n\nHuman: hi\n\nAssistant:"
    assert pair.labels == {"helpful": 1, "harmless": 0}
    assert pair.annotators == {"helpful": "gpt-3.5", "harmless": "crowd"}
    assert pair.preferred("helpful") == "B" and pair.to_preference_pair("harmless").chosen == "A"


@needs_data
@pytest.mark.parametrize("split,rows", [("helpful-base", 2354), ("helpful-online", 1137),
                                        ("helpful-rejection-sampled", 2749), ("harmless-base", 2312)])
def test_row_counts_match_readme(split, rows):
    pairs = read_hh(split)
    assert len(pairs) == rows
    assert all(p.prompt.startswith("\n\nHuman:") and p.prompt.endswith("\n\nAssistant:") for p in pairs)


@needs_data
def test_objective_groups_and_stable_split():
    helpful = read_objective("helpful")
    assert len(helpful) == 2354 + 1137 + 2749  # the README's helpful-* rows
    train, held_out = train_eval_split(read_hh("helpful-base"), 0.1)
    assert (len(train), len(held_out)) == (2126, 228)  # pinned: the split must not drift
    assert train_eval_split(read_hh("helpful-base"), 0.1)[1] == held_out


@needs_data
def test_dpl_relabel_counts_and_joins():
    pairs = read_dpl_relabels()
    assert len(pairs) == 2157 + 1886  # README counts
    assert all(isinstance(p, MultiObjectivePair) for p in pairs)
    both = [p for p in pairs if len(p.labels) == 2]
    # helpful.test holds 1,052 harmless-base pairs; they also carry the crowd's harmless label.
    assert sum(p.annotators.get("harmless") == "crowd" for p in both) == 1052
    # ...and 469 of those flip the original label (README).
    assert sum(p.labels["helpful"] != p.labels["harmless"] for p in both if p.annotators["harmless"] == "crowd") == 469
    # Relabeled prompts use the HH framing, so they share splits with read_hh.
    hh_prompts = {p.prompt for s in hh_rlhf.HH_SPLITS for p in read_hh(s)}
    assert sum(p.prompt in hh_prompts for p in pairs) > 0.99 * len(pairs)
