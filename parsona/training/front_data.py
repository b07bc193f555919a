"""Pairs labelled under several objectives at once, for learning a whole trade-off front.

Sources (all real HH-RLHF test data, split by a stable hash of the prompt):
- the DPL relabels: the same pair labelled for helpfulness and for harmlessness;
- helpful-base and harmless-base: crowdworker labels for one objective each.
A pair found in several sources keeps every label it has (the DPL relabel wins a clash).

``brevity`` is a lexical objective computed from the pair itself (the shorter reply wins, ties
carry no label); it gives a third objective for m = 3 runs.
"""

from __future__ import annotations

import hashlib
import random
from typing import Sequence

from parsona.data.hh_rlhf import MultiObjectivePair, read_dpl_relabels, read_hh, train_eval_split
from parsona.data.paths import data_dir
from parsona.errors import ConfigError

HH_OBJECTIVES = ("helpful", "harmless")
KNOWN_OBJECTIVES = (*HH_OBJECTIVES, "brevity")
BASE_SPLITS = {"helpful-base": "helpful", "harmless-base": "harmless"}


def front_pairs(objectives: Sequence[str] = HH_OBJECTIVES, eval_fraction: float = 0.1):
    """(train, eval) lists of MultiObjectivePair with labels for (a subset of) ``objectives``."""
    unknown = [o for o in objectives if o not in KNOWN_OBJECTIVES]
    if unknown or len(set(objectives)) != len(objectives) or len(objectives) < 2:
        raise ConfigError("objectives", f"Pick 2 or more distinct names from {KNOWN_OBJECTIVES}.",
                          problem=f"got {tuple(objectives)}")
    merged: dict[tuple[str, frozenset], MultiObjectivePair] = {}
    for split, objective in BASE_SPLITS.items():
        for p in read_hh(split):
            _merge(merged, MultiObjectivePair(p.prompt, p.chosen, p.rejected, {objective: 0}, {objective: "crowd"}, p.source))
    for pair in read_dpl_relabels():
        _merge(merged, pair)
    pairs = []
    for pair in merged.values():
        labels = {o: v for o, v in pair.labels.items() if o in objectives}
        if "brevity" in objectives and len(pair.response_a) != len(pair.response_b):
            labels["brevity"] = int(len(pair.response_b) < len(pair.response_a))
        if labels and pair.response_a != pair.response_b:
            pairs.append(MultiObjectivePair(pair.prompt, pair.response_a, pair.response_b, labels, pair.annotators, pair.source))
    return train_eval_split(pairs, eval_fraction)


def fully_labelled(pairs: list[MultiObjectivePair], objectives: Sequence[str]) -> list[MultiObjectivePair]:
    """The pairs labelled for every objective (Panacea's data has all labels: no row's λ is wasted)."""
    kept = [p for p in pairs if all(o in p.labels for o in objectives)]
    if not kept:
        raise ConfigError("all_labels_only", "No training pair has a label for every objective; set it to false.",
                          problem=f"objectives {tuple(objectives)}")
    return kept


def training_pairs(cfg) -> list[MultiObjectivePair]:
    """The train side of :func:`front_pairs` as a recipe's ``cfg`` asks for it (both recipes share
    this, so a comparison trains on the same pairs): ``all_labels_only`` keeps the fully-labelled
    pairs, ``max_train_pairs`` a seeded sample of that many. ``cfg`` is any object with the fields
    objectives, eval_fraction, all_labels_only, max_train_pairs and seed (every recipe Config has them)."""
    train, _ = front_pairs(cfg.objectives, cfg.eval_fraction)
    if cfg.all_labels_only:
        train = fully_labelled(train, cfg.objectives)
    if cfg.max_train_pairs:
        random.Random(cfg.seed).shuffle(train)
        train = train[: cfg.max_train_pairs]
    return train


def _merge(merged: dict, pair: MultiObjectivePair) -> None:
    key = (pair.prompt, frozenset((pair.response_a, pair.response_b)))
    old = merged.get(key)
    if old is None:
        merged[key] = pair
        return
    # Express the new labels in the old pair's a/b order before combining.
    flip = pair.response_a != old.response_a
    labels = {o: (1 - v if flip else v) for o, v in pair.labels.items()}
    merged[key] = MultiObjectivePair(old.prompt, old.response_a, old.response_b, {**old.labels, **labels},
                                     {**old.annotators, **pair.annotators}, old.source)


def data_fingerprint() -> dict[str, str]:
    """sha256 (first 16 hex) of every HH file the pairs come from, for training summaries."""
    root = data_dir() / "hh-rlhf"
    files = [root / f"{s}.test.jsonl.gz" for s in BASE_SPLITS] + sorted((root / "relabeled-dpl").glob("*.jsonl.gz"))
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}
