"""PAN-2011 Enron authorship emails: counts from the data README, errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from parsona.data.enron import read_enron, read_enron_file, texts_by_author
from parsona.data.paths import data_dir
from parsona.errors import ConfigError


def _have_data() -> bool:
    try:
        return (data_dir() / "pan11-enron-authorship").is_dir()
    except ConfigError:
        return False


needs_data = pytest.mark.skipif(not _have_data(), reason="shared data dir not found (set PARSONA_DATA)")


@needs_data
def test_counts_match_readme():
    emails = read_enron()
    assert len(emails) == 4236
    assert Counter(e.split for e in emails) == {"train": 3001, "valid": 601, "test": 634}
    assert len(texts_by_author(read_enron("train"))) == 26
    open_set = Counter(e.split for e in emails if not e.author_in_train)
    assert open_set == {"valid": 116, "test": 121}


def test_bad_split_names_file_and_line(tmp_path):
    row = {"split": "train", "doc_id": "a", "author_id": "1", "text": "hi", "author_in_train": True}
    path = tmp_path / "e.jsonl"
    path.write_text(json.dumps(row) + "\n\n" + json.dumps(dict(row, split="dev")) + "\n")
    with pytest.raises(ConfigError, match=r"e\.jsonl:3"):
        read_enron_file(path)


def test_users_split_gives_the_authors_with_enough_train_emails_most_first():
    from parsona.data.enron import read_enron, users_split

    authors, train, test = users_split(30)
    counts = {}
    for e in read_enron("train"):
        counts[e.author_id] = counts.get(e.author_id, 0) + 1
    assert len(authors) == 18 and all(counts[a] >= 30 for a in authors)          # the README's 18
    assert [len(train[a]) for a in authors] == sorted((len(train[a]) for a in authors), reverse=True)
    assert all(test[a] for a in authors)
    few, train2, _ = users_split(30, max_users=2, max_emails=3)
    assert few == authors[:2] and all(len(t) == 3 for t in train2.values())


def test_users_valid_gives_each_authors_valid_emails_apart_from_test():
    from parsona.data.enron import read_enron, users_split, users_valid

    authors, _, test = users_split(30)
    valid = users_valid(authors)
    assert set(valid) == set(authors)                                      # all 18 have valid emails (4–96)
    every = [e for e in read_enron("valid") if e.author_id == authors[0]]
    assert valid[authors[0]] == [e.text for e in every] and not set(valid[authors[0]]) & set(test[authors[0]])
    assert all(len(v) <= 2 for v in users_valid(authors, max_emails=2).values())
