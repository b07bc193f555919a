"""Anthropic HH-RLHF preference pairs and the DPL per-objective relabels of them.

Each HH row holds two whole dialogues, ``chosen`` and ``rejected``, that share every turn but
the last assistant reply::

    "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <final reply>"

:func:`parse_dialogue_pair` splits a row into the shared prompt (up to and including the last
``"\\n\\nAssistant:"``) and the two final replies. The relabeled files (Siththaranjan et al. 2023)
hold the same dialogues as ``prompt`` + ``responses`` with a GPT-3.5 label for one objective and
the crowdworker's original label for the split the pair came from; :func:`read_dpl_relabels`
turns each row into a :class:`MultiObjectivePair` with both.

Only the official *test* files exist offline, so training code splits them with
:func:`parsona.data.paths.split_of` on the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from parsona.data.paths import data_file, iter_jsonl, require, row_error, split_of
from parsona.errors import ConfigError

ASSISTANT = "\n\nAssistant:"
HUMAN = "\n\nHuman:"
HH_SPLITS = ("helpful-base", "helpful-online", "helpful-rejection-sampled", "harmless-base")
OBJECTIVES = ("helpful", "harmless")
# Which objective the crowdworkers judged in each HH split (the DPL files call it data_subset).
OBJECTIVE_OF_SPLIT = {
    "helpful-base": "helpful",
    "helpful-online": "helpful",
    "helpful-rejection-sampled": "helpful",
    "harmless-base": "harmless",
}


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: ``chosen`` was preferred to ``rejected`` as a reply to ``prompt``.

    ``prompt`` ends with ``"\\n\\nAssistant:"``; replies have the one separating space removed,
    so ``prompt + " " + chosen`` is the original dialogue. ``source`` is ``"<file>:<line>"``.
    """

    prompt: str
    chosen: str
    rejected: str
    source: str


@dataclass(frozen=True)
class MultiObjectivePair:
    """Two replies to one prompt, with who-wins labels under one or more objectives.

    ``labels[objective]`` is the index (0 for ``response_a``, 1 for ``response_b``) of the
    preferred reply. ``annotators[objective]`` says who gave that label: ``"gpt-3.5"`` (the DPL
    relabel) or ``"crowd"`` (the original HH crowdworker).
    """

    prompt: str
    response_a: str
    response_b: str
    labels: dict[str, int]
    annotators: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def preferred(self, objective: str) -> str:
        """The reply preferred under ``objective``."""
        return self.response_b if self.labels[objective] else self.response_a

    def to_preference_pair(self, objective: str) -> PreferencePair:
        """This comparison as a chosen/rejected pair under ``objective``."""
        a_wins = self.labels[objective] == 0
        chosen, rejected = (self.response_a, self.response_b) if a_wins else (self.response_b, self.response_a)
        return PreferencePair(self.prompt, chosen, rejected, self.source)


def _strip_separator(reply: str) -> str:
    """Drop the single space the Anthropic format puts after ``"Assistant:"``."""
    return reply[1:] if reply.startswith(" ") else reply


def parse_dialogue_pair(chosen: str, rejected: str, source: str = "") -> PreferencePair:
    """Split two Anthropic-format dialogues into (prompt, chosen reply, rejected reply).

    The prompt is the longest shared prefix that ends with ``"\\n\\nAssistant:"``. Splitting at
    the last ``"\\n\\nAssistant:"`` of each string alone is not enough: 17 of the 8,552 test rows
    have a reply that itself contains ``"\\n\\nAssistant:"``. Raises ValueError when the two
    dialogues share no assistant turn.
    """
    common = _common_prefix(chosen, rejected)
    cut = common.rfind(ASSISTANT)
    if cut < 0 or HUMAN not in common[:cut]:
        raise ValueError('chosen and rejected share no "\\n\\nHuman: ...\\n\\nAssistant:" prefix')
    end = cut + len(ASSISTANT)
    return PreferencePair(
        prompt=chosen[:end],
        chosen=_strip_separator(chosen[end:]),
        rejected=_strip_separator(rejected[end:]),
        source=source,
    )


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def read_pairs_file(path: str | Path) -> list[PreferencePair]:
    """Read an HH-format ``{"chosen", "rejected"}`` .jsonl(.gz) file into PreferencePairs.

    A malformed row raises ConfigError naming the file and line number.
    """
    path = Path(path)
    pairs = []
    for lineno, row in iter_jsonl(path):
        require(row, {"chosen": str, "rejected": str}, path, lineno)
        source = f"{path.name}:{lineno}"
        try:
            pairs.append(parse_dialogue_pair(row["chosen"], row["rejected"], source))
        except ValueError as e:
            raise row_error(path, lineno, str(e)) from None
    return pairs


def read_hh(split: str) -> list[PreferencePair]:
    """All pairs of one HH-RLHF test file, e.g. ``read_hh("harmless-base")`` (2,312 pairs)."""
    if split not in HH_SPLITS:
        raise ConfigError("split", f"use one of {', '.join(HH_SPLITS)}", problem=f"unknown HH-RLHF split {split!r}")
    return read_pairs_file(data_file("hh-rlhf", f"{split}.test.jsonl.gz"))


def read_objective(objective: str) -> list[PreferencePair]:
    """Every crowdworker pair judged under ``objective``: the three helpful-* files or harmless-base."""
    if objective not in OBJECTIVES:
        raise ConfigError("objective", f"use one of {', '.join(OBJECTIVES)}", problem=f"unknown objective {objective!r}")
    return [p for s in HH_SPLITS if OBJECTIVE_OF_SPLIT[s] == objective for p in read_hh(s)]


_DPL_KEYS = {"prompt": str, "responses": list, "label": int, "original_label": int, "objective": str, "data_subset": str}


def read_dpl_file(path: str | Path) -> list[MultiObjectivePair]:
    """Read one DPL relabel file (``relabeled-dpl/<objective>.test.jsonl.gz``).

    Each row becomes a MultiObjectivePair labelled under ``objective`` by GPT-3.5 and, when
    ``data_subset`` names the other objective, under that one by the original crowdworker.
    Where both name the same objective the GPT-3.5 label is kept (it is what the file is for).
    """
    path = Path(path)
    pairs = []
    for lineno, row in iter_jsonl(path):
        pairs.append(_dpl_pair(row, path, lineno))
    return pairs


def _dpl_pair(row: dict, path: Path, lineno: int) -> MultiObjectivePair:
    require(row, _DPL_KEYS, path, lineno)
    responses, objective, subset = row["responses"], row["objective"], row["data_subset"]
    if len(responses) != 2 or not all(isinstance(r, str) for r in responses):
        raise row_error(path, lineno, "'responses' must be a list of two strings")
    for key, value in (("objective", objective), ("data_subset", subset)):
        if value not in OBJECTIVES:
            raise row_error(path, lineno, f"{key!r} is {value!r}, expected one of {OBJECTIVES}")
    for key in ("label", "original_label"):
        if row[key] not in (0, 1):
            raise row_error(path, lineno, f"{key!r} is {row[key]!r}, expected 0 or 1")
    labels = {subset: row["original_label"], objective: row["label"]}  # the relabel wins a tie
    annotators = {subset: "crowd", objective: "gpt-3.5"}
    # The file drops the Anthropic framing; restore it so prompts (and their splits) match read_hh.
    prompt = "\n\n" + row["prompt"] + ASSISTANT
    return MultiObjectivePair(prompt, responses[0], responses[1], labels, annotators, f"{path.name}:{lineno}")


def read_dpl_relabels(objectives: tuple[str, ...] = OBJECTIVES) -> list[MultiObjectivePair]:
    """The DPL relabels for each objective, concatenated (2,157 helpful + 1,886 harmless rows).

    No pair appears in both files, so a pair never carries two GPT-3.5 labels; the second
    objective's label, where there is one, is the crowdworker's.
    """
    pairs = []
    for objective in objectives:
        if objective not in OBJECTIVES:
            raise ConfigError("objectives", f"use names from {OBJECTIVES}", problem=f"unknown objective {objective!r}")
        pairs += read_dpl_file(data_file("hh-rlhf", "relabeled-dpl", f"{objective}.test.jsonl.gz"))
    return pairs


def train_eval_split(pairs, eval_fraction: float = 0.1) -> tuple[list, list]:
    """Split pairs (anything with a ``.prompt``) into (train, eval) by :func:`split_of` on the prompt."""
    train, held_out = [], []
    for pair in pairs:
        (held_out if split_of(pair.prompt, eval_fraction) == "eval" else train).append(pair)
    return train, held_out
