"""PAN-2011 "Small" authorship set: 4,236 Enron emails by 26 known authors (+ open-set docs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parsona.data.paths import data_file, iter_jsonl, require, row_error
from parsona.errors import ConfigError

ENRON_SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Email:
    """One email body. ``author_in_train`` is False for the open-set distractors in valid/test."""

    split: str
    doc_id: str
    author_id: str
    text: str
    author_in_train: bool


_KEYS = {"split": str, "doc_id": str, "author_id": str, "text": str, "author_in_train": bool}


def read_enron_file(path: str | Path) -> list[Email]:
    """Read a PAN-format .jsonl file; a malformed row raises ConfigError naming file and line."""
    path = Path(path)
    emails = []
    for lineno, row in iter_jsonl(path):
        require(row, _KEYS, path, lineno)
        if row["split"] not in ENRON_SPLITS:
            raise row_error(path, lineno, f"'split' is {row['split']!r}, expected one of {ENRON_SPLITS}")
        emails.append(Email(row["split"], row["doc_id"], row["author_id"], row["text"], row["author_in_train"]))
    return emails


def read_enron(split: str | None = None) -> list[Email]:
    """The emails of one split (train 3,001, valid 601, test 634), or all 4,236 when None."""
    if split is not None and split not in ENRON_SPLITS:
        raise ConfigError("split", f"use one of {', '.join(ENRON_SPLITS)} or None", problem=f"unknown split {split!r}")
    emails = read_enron_file(data_file("pan11-enron-authorship", "pan11_small.jsonl"))
    return [e for e in emails if split is None or e.split == split]


def texts_by_author(emails: list[Email]) -> dict[str, list[str]]:
    """``{author_id: [text, ...]}`` in file order."""
    out: dict[str, list[str]] = {}
    for email in emails:
        out.setdefault(email.author_id, []).append(email.text)
    return out


def users_split(min_train_emails: int = 30, max_users: int = 0, max_emails: int = 0):
    """Authors as users: (author ids, {author: train texts}, {author: test texts}) for the authors with at
    least ``min_train_emails`` train emails and a test email (18 at 30), most train emails first.
    ``max_users`` keeps the first n (0: all); ``max_emails`` cuts every list to n (0: all)."""
    train = texts_by_author(read_enron("train"))
    test = texts_by_author([e for e in read_enron("test") if e.author_in_train])
    authors = sorted((a for a in train if len(train[a]) >= min_train_emails and test.get(a)),
                     key=lambda a: (-len(train[a]), a))[: max_users or None]
    cut = slice(None, max_emails or None)
    return authors, {a: train[a][cut] for a in authors}, {a: test[a][cut] for a in authors}


def users_valid(authors: list[str], max_emails: int = 0) -> dict[str, list[str]]:
    """The valid-split emails (PAN-2011's own held-out set, apart from test) of each of ``authors`` that has
    any, cut to ``max_emails`` like :func:`users_split`'s lists (0: all): what early stopping checks."""
    valid = texts_by_author(read_enron("valid"))
    return {a: valid[a][: max_emails or None] for a in authors if valid.get(a)}
