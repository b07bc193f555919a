"""How well do Parsona's Bradley-Terry reward models rank real HH-RLHF pairs?

For each objective, one ``BradleyTerryReward`` on frozen all-MiniLM-L6-v2 features is trained on
the *train* side of the HH-RLHF test files and scored on the held-out side: pairwise accuracy,
the fraction of pairs where r(chosen) > r(rejected), ties counting half.

Data (only the official test files exist offline, so they are split here):

  helpful   trained on --helpful-train files (default: all three helpful-* files), evaluated on
            the eval side of --helpful-eval (default: helpful-base)
  harmless  trained and evaluated on harmless-base (the only harmless file)

The split is ``parsona.data.split_of(prompt, --eval-fraction)``: sha256 of the prompt, so pairs
that share a prompt stay on one side, across files too. The crowdworker labels are used, not the
DPL GPT-3.5 relabels: they are what the published numbers below were measured on.

Printed next to the reward model, on the same eval pairs:

  tfidf      TF-IDF (1-2 grams) of the final reply, the same Bradley-Terry head, trained on the
             same train pairs: the lexical floor (the data README measured 0.618 harmless /
             0.585 helpful with 2-fold on the whole file)
  length     longer reply wins (no training)
  published  Ray2333/gpt2-large-{helpful,harmless}-reward_model on the full official test
             split (0.726 / 0.737): a fine-tuned 774M model, the gap to aim at

    .venv/bin/python bench/reward_accuracy.py                 # ~12 min on 2 CPU cores (encoding dominates)
    .venv/bin/python bench/reward_accuracy.py --max-pairs 200 # smoke run
    .venv/bin/python bench/reward_accuracy.py --save-dir runs/rewards   # keep the two rewards, for
        # bench/front_quality.py --reward-models helpful=runs/rewards/helpful,harmless=runs/rewards/harmless

Prints held-out pairwise accuracy per objective, the TF-IDF floor, the published GPT-2-large numbers,
and the command that reproduces the run.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from parsona.data import read_hh, train_eval_split  # noqa: E402
from parsona.errors import ConfigError  # noqa: E402
from parsona.objectives.features import SentenceEncoder  # noqa: E402
from parsona.objectives.rewards import BradleyTerryReward, LengthReward, pairwise_accuracy  # noqa: E402

PUBLISHED = {"helpful": 0.726, "harmless": 0.737}  # Ray2333/gpt2-large-*-reward_model, official test split
README_TFIDF = {"helpful": 0.585, "harmless": 0.618}  # data README, 2-fold on the whole file


@dataclass
class Config:
    """What to run. Every field is a flag: ``eval_fraction`` is ``--eval-fraction``."""

    eval_fraction: float = 0.2
    """Share of prompts (by sha256) held out for eval."""
    helpful_train: str = "helpful-base,helpful-online,helpful-rejection-sampled"
    """Comma-separated HH files whose train side trains the helpful reward."""
    helpful_eval: str = "helpful-base"
    """HH files whose eval side scores it."""
    harmless_train: str = "harmless-base"
    """HH files for the harmless reward's train side."""
    harmless_eval: str = "harmless-base"
    """HH files whose eval side scores it."""
    C: float = 0.3
    """Inverse L2 strength of the Bradley-Terry head (MiniLM features)."""
    tfidf_C: float = 1.0
    """Inverse L2 strength for the TF-IDF baseline."""
    encoder: str = ""
    """Sentence encoder dir or cached HF id; empty: packaged MiniLM."""
    batch_size: int = 64
    """Encoder batch size."""
    max_pairs: int = 0
    """Use only the first N pairs of each file (0: all); smoke runs."""
    save_dir: str = ""
    """Save each trained MiniLM reward to SAVE_DIR/<objective> (for front_quality.py --reward-models); empty: don't."""

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ConfigError("eval_fraction", "Use a fraction strictly between 0 and 1.",
                              problem=f"got {self.eval_fraction}")
        for name in ("C", "tfidf_C"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "Use a positive inverse L2 strength.", problem=f"got {getattr(self, name)}")
        if self.max_pairs < 0:
            raise ConfigError("max_pairs", "Use 0 (all) or a positive count.", problem=f"got {self.max_pairs}")


class CachedFeaturizer:
    """Remembers each (prompt, response)'s features, so scoring after fitting encodes nothing twice."""

    def __init__(self, featurizer):
        self.featurizer = featurizer
        self._rows: dict[tuple[str, str], np.ndarray] = {}

    def featurize(self, prompts, responses):
        keys = list(zip(prompts, responses))
        missing = list(dict.fromkeys(k for k in keys if k not in self._rows))
        if missing:
            feats = self.featurizer.featurize([p for p, _ in missing], [r for _, r in missing])
            self._rows.update(zip(missing, feats))
        return np.stack([self._rows[k] for k in keys])

    def get_config(self) -> dict:
        """The wrapped encoder's, so a saved reward reloads with a plain SentenceEncoder."""
        return self.featurizer.get_config()


class TfidfFeaturizer:
    """TF-IDF (1-2 grams, sublinear tf) of the response alone, vocabulary fitted on train replies."""

    def __init__(self, texts):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True).fit(texts)

    def featurize(self, prompts, responses):
        return self.vectorizer.transform(responses)  # scipy sparse (n, vocab)


def load_pairs(files: str, max_pairs: int):
    pairs = []
    for name in files.split(","):
        rows = read_hh(name.strip())
        pairs += rows[:max_pairs] if max_pairs else rows
    return pairs


def std_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy on n pairs."""
    return math.sqrt(acc * (1 - acc) / n)


def run_objective(objective: str, cfg: Config, featurizer) -> dict:
    """Fit both rewards for one objective and score them on its held-out pairs."""
    train, _ = train_eval_split(load_pairs(getattr(cfg, f"{objective}_train"), cfg.max_pairs), cfg.eval_fraction)
    _, held_out = train_eval_split(load_pairs(getattr(cfg, f"{objective}_eval"), cfg.max_pairs), cfg.eval_fraction)
    start = time.perf_counter()
    reward = BradleyTerryReward(featurizer=featurizer, C=cfg.C).fit(train)
    tfidf = TfidfFeaturizer([t for p in train for t in (p.chosen, p.rejected)])
    baseline = BradleyTerryReward(featurizer=tfidf, C=cfg.tfidf_C).fit(train)
    result = {
        "objective": objective, "reward": reward, "n_train": len(train), "n_eval": len(held_out),
        "minilm_bt": pairwise_accuracy(reward, held_out),
        "tfidf_bt": pairwise_accuracy(baseline, held_out),
        "length": pairwise_accuracy(LengthReward(), held_out),
        "train_acc": pairwise_accuracy(reward, train),
        "seconds": time.perf_counter() - start,
    }
    result["held_out"] = held_out
    return result


def command(cfg: Config) -> str:
    """The exact command line that reproduces ``cfg`` (every field spelled out)."""
    parts = [".venv/bin/python", "bench/reward_accuracy.py"]
    for f in dataclasses.fields(cfg):
        parts += ["--" + f.name.replace("_", "-"), str(getattr(cfg, f.name))]
    return " ".join(shlex.quote(p) for p in parts)


def print_table(results: list[dict]) -> None:
    print(f"\n{'objective':<10} {'train':>6} {'eval':>5}  {'MiniLM-BT':>14}  {'TF-IDF-BT':>9}  {'length':>6}  "
          f"{'published':>9}  {'gap':>6}  {'train acc':>9}")
    for r in results:
        se = std_error(r["minilm_bt"], r["n_eval"])
        gap = PUBLISHED[r["objective"]] - r["minilm_bt"]
        print(f"{r['objective']:<10} {r['n_train']:>6} {r['n_eval']:>5}  {r['minilm_bt']:>7.3f} ± {se:.3f}  "
              f"{r['tfidf_bt']:>9.3f}  {r['length']:>6.3f}  {PUBLISHED[r['objective']]:>9.3f}  {gap:>+6.3f}  "
              f"{r['train_acc']:>9.3f}")
    print("(± is one binomial standard error; 'published' is GPT-2-large on the full official test split, "
          f"not this split; README TF-IDF floor: {README_TFIDF})")


def print_cross(results: list[dict]) -> None:
    """Each objective's reward on the other objective's eval pairs: below 0.5 means they conflict."""
    if len(results) != 2:
        return
    a, b = results
    print(f"\ncross: {a['objective']} reward on {b['objective']} eval pairs: "
          f"{pairwise_accuracy(a['reward'], b['held_out']):.3f}; "
          f"{b['objective']} reward on {a['objective']} eval pairs: {pairwise_accuracy(b['reward'], a['held_out']):.3f}")


def main(cfg: Config) -> list[dict]:
    """Train, score and print; returns the per-objective results."""
    import transformers

    transformers.logging.set_verbosity_error()
    encoder = SentenceEncoder(model=cfg.encoder or None, batch_size=cfg.batch_size)
    featurizer = CachedFeaturizer(encoder)  # the two objectives share prompts only by chance; cache anyway
    results = []
    for objective in ("helpful", "harmless"):
        results.append(run_objective(objective, cfg, featurizer))
        r = results[-1]
        print(f"{objective}: MiniLM-BT {r['minilm_bt']:.3f}, TF-IDF-BT {r['tfidf_bt']:.3f} "
              f"on {r['n_eval']} held-out pairs ({r['seconds']:.0f} s)", flush=True)
        if cfg.save_dir:
            r["reward"].save(Path(cfg.save_dir) / objective)
            print(f"saved {Path(cfg.save_dir) / objective}")
    print_table(results)
    print_cross(results)
    print(f"\nreproduce: {command(cfg)}")
    return results


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
