"""Rewards: anything that scores (prompt, response) pairs, higher is better.

* :class:`Reward` is the protocol: ``score(prompts, responses) -> (n,)``.
* Lexical rewards say exactly what they measure (:class:`LengthReward`, :class:`BrevityReward`);
  they are cheap signals and baselines, not judgements of quality.
* :class:`BradleyTerryReward` is a trained reward model: a linear Bradley-Terry head on frozen
  features (a sentence encoder or a causal LM's hidden state, see ``features.py``).
* :class:`GroupPreferenceReward` scores responses by a group's predicted preference among the responses to
  the same prompt (a group predictor's output), so best-of-n reranking answers as that group would prefer.
* :func:`pairwise_accuracy` is the standard reward-model metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np
import scipy.sparse as sp

from parsona.errors import ConfigError
from parsona.io import atomic_dir

FORMAT_VERSION = 1
CONFIG_NAME = "reward_config.json"
WEIGHTS_NAME = "reward.safetensors"


@runtime_checkable
class Reward(Protocol):
    """Scores responses to prompts; higher is better (every Parsona objective is maximised)."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:  # (n,)
        ...


def _check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ConfigError("responses", "pass one response per prompt",
                          problem=f"{len(prompts)} prompts but {len(responses)} responses")


class LengthReward:
    """Response length in characters (``unit="chars"``) or whitespace words (``unit="words"``).

    On HH-RLHF, longer wins 60% of helpful-base pairs and loses on harmless-base (0.445): a
    cheap, honest proxy for helpfulness, and a sign that the two objectives conflict.
    """

    def __init__(self, unit: str = "chars"):
        if unit not in ("chars", "words"):
            raise ConfigError("unit", 'use "chars" or "words"', problem=f"got {unit!r}")
        self.unit = unit

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, responses)
        count = len if self.unit == "chars" else (lambda r: len(r.split()))
        return np.array([count(r) for r in responses], dtype=np.float64)


class BrevityReward(LengthReward):
    """Minus the response length: shorter is better."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return -super().score(prompts, responses)


def _as_triples(pairs: Iterable[Any]) -> tuple[list[str], list[str], list[str]]:
    """(prompts, chosen, rejected) from (prompt, chosen, rejected) tuples or objects with those fields."""
    prompts, chosen, rejected = [], [], []
    for i, pair in enumerate(pairs):
        if hasattr(pair, "chosen"):
            p, c, r = pair.prompt, pair.chosen, pair.rejected
        else:
            try:
                p, c, r = pair
            except (TypeError, ValueError):
                raise ConfigError(f"pairs[{i}]", "pass (prompt, chosen, rejected) tuples or PreferencePair objects",
                                  problem=f"got {type(pair).__name__}") from None
        prompts.append(p)
        chosen.append(c)
        rejected.append(r)
    return prompts, chosen, rejected


class GroupPreferenceReward:
    """A group's predicted preference among the responses to one prompt: higher is what the group prefers.

    The responses given for one prompt are the options of one question; ``shares(prompt, responses)``
    returns the group's predicted shares of them, (K,) summing to 1 (e.g. ``functools.partial(
    predictor.shares_for, encoder, context)`` of a ``parsona.persona.GroupPreferencePredictor``), and a
    response scores K × its share: 1 where the group is indifferent among the K, above 1 where it prefers
    it. A prompt with a single response scores it 1. Scores compare responses to the same prompt only.
    """

    def __init__(self, shares):
        if not callable(shares):
            raise ConfigError("shares", "Pass a function (prompt, responses) -> the group's shares of them.",
                              problem=f"got {type(shares).__name__}")
        self.shares = shares

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        _check_lengths(prompts, responses)
        out = np.ones(len(responses))
        rows: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            rows.setdefault(p, []).append(i)
        for prompt, idx in rows.items():
            if len(idx) > 1:
                shares = np.asarray(self.shares(prompt, [responses[i] for i in idx]), dtype=np.float64)
                if shares.shape != (len(idx),) or not np.isfinite(shares).all():
                    raise ConfigError("shares", "Return one finite share per response.", problem=f"shape {shares.shape}")
                out[idx] = len(idx) * shares
        return out


def pairwise_accuracy(reward: Reward, pairs: Iterable[Any]) -> float:
    """Fraction of pairs where ``reward`` scores chosen above rejected; a tie counts half."""
    prompts, chosen, rejected = _as_triples(pairs)
    if not prompts:
        raise ConfigError("pairs", "pass at least one pair", problem="empty")
    # One call over both halves lets a featurizer embed each prompt once.
    scores = reward.score(prompts + prompts, chosen + rejected)
    s_chosen, s_rejected = scores[: len(prompts)], scores[len(prompts) :]
    return float(np.mean((s_chosen > s_rejected) + 0.5 * (s_chosen == s_rejected)))


def _default_featurizer():
    from parsona.objectives.features import SentenceEncoder  # loads torch/transformers lazily

    return SentenceEncoder()


class BradleyTerryReward:
    """A linear Bradley-Terry reward model on frozen features: r(p, y) = w . phi(p, y).

    ``fit`` maximises sum log sigmoid(w . (phi(p, chosen) - phi(p, rejected))) with L2 penalty
    1/C, using scikit-learn's LogisticRegression on the feature differences. Each difference is
    also added negated with label 0, so the problem is symmetric and needs no intercept (an
    intercept would only say "the first reply wins", which means nothing here).

    ``featurizer`` has ``featurize(prompts, responses) -> (n, d)`` (dense or scipy sparse); None
    means :class:`parsona.objectives.features.SentenceEncoder` (all-MiniLM-L6-v2). Learned
    state: ``coef_`` (d,), ``n_features_in_``, ``n_pairs_``.
    """

    def __init__(self, featurizer=None, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-6):
        self.featurizer = featurizer
        self.C = C
        self.max_iter = max_iter
        self.tol = tol

    def _featurizer(self):
        if self.featurizer is None:
            self.featurizer = _default_featurizer()
        return self.featurizer

    def _features(self, prompts: Sequence[str], responses: Sequence[str]):
        _check_lengths(prompts, responses)
        return self._featurizer().featurize(list(prompts), list(responses))

    def fit(self, pairs: Iterable[Any]) -> "BradleyTerryReward":
        """Fit on (prompt, chosen, rejected) triples or PreferencePair-like objects; returns self."""
        from sklearn.linear_model import LogisticRegression

        if not self.C > 0:
            raise ConfigError("C", "pass a positive inverse regularisation strength", problem=f"got {self.C}")
        prompts, chosen, rejected = _as_triples(pairs)
        n = len(prompts)
        if n == 0:
            raise ConfigError("pairs", "pass at least one preference pair", problem="empty")
        phi = self._features(prompts + prompts, chosen + rejected)  # (2n, d)
        diff = phi[:n] - phi[n:]  # (n, d): chosen minus rejected
        X = sp.vstack([diff, -diff]).tocsr() if sp.issparse(diff) else np.concatenate([diff, -diff])
        y = np.concatenate([np.ones(n), np.zeros(n)])
        head = LogisticRegression(C=self.C, fit_intercept=False, max_iter=self.max_iter, tol=self.tol)
        head.fit(X, y)
        self.coef_ = head.coef_[0].astype(np.float32)  # (d,)
        self.n_features_in_ = int(X.shape[1])
        self.n_pairs_ = n
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise ConfigError("BradleyTerryReward", "call fit(pairs) or BradleyTerryReward.load(path) first",
                              problem="not fitted")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """The logit w . phi(prompt, response), shape (n,); differences are BT log-odds."""
        self._check_fitted()
        phi = self._features(prompts, responses)
        if phi.shape[1] != self.n_features_in_:
            raise ConfigError("featurizer", "use the featurizer the reward was fitted with",
                              problem=f"it gives {phi.shape[1]} features, the reward expects {self.n_features_in_}")
        return np.asarray(phi @ self.coef_, dtype=np.float64).ravel()

    def preference_probability(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """P(a preferred to b) = sigmoid(r(p, a) - r(p, b)), shape (n,)."""
        n = len(prompts)
        scores = self.score(list(prompts) * 2, list(a) + list(b))
        return 1.0 / (1.0 + np.exp(-(scores[:n] - scores[n:])))

    def save(self, path: str | Path) -> None:
        """Write ``reward_config.json`` and ``reward.safetensors`` to directory ``path``, atomically."""
        from safetensors.numpy import save_file

        self._check_fitted()
        get_config = getattr(self.featurizer, "get_config", None)
        config = {
            "reward_type": type(self).__name__,
            "format_version": FORMAT_VERSION,
            "hyperparameters": {"C": self.C, "max_iter": self.max_iter, "tol": self.tol},
            "featurizer": get_config() if get_config else {"type": type(self.featurizer).__name__},
            "n_features_in": self.n_features_in_,
            "n_pairs": self.n_pairs_,
        }
        with atomic_dir(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            save_file({"coef": self.coef_}, str(tmp / WEIGHTS_NAME))

    @classmethod
    def load(cls, path: str | Path, featurizer=None) -> "BradleyTerryReward":
        """Load a saved reward. ``featurizer`` is needed unless it was a rebuildable SentenceEncoder."""
        from safetensors.numpy import load_file

        path = Path(path)
        config = _read_config(path)
        feat = config.get("featurizer", {})
        if featurizer is None:
            if feat.get("type") != "SentenceEncoder":
                raise ConfigError("featurizer", f"pass featurizer= (a {feat.get('type')} like the one used in fit)",
                                  problem=f"{path} was fitted with a featurizer that cannot be rebuilt from its config")
            from parsona.objectives.features import SentenceEncoder

            featurizer = SentenceEncoder.from_config(feat)
        reward = cls(featurizer=featurizer, **config["hyperparameters"])
        reward.coef_ = load_file(str(path / WEIGHTS_NAME))["coef"].astype(np.float32)
        reward.n_features_in_ = int(config["n_features_in"])
        reward.n_pairs_ = int(config["n_pairs"])
        return reward


def _read_config(path: Path) -> dict:
    """The saved config, checked for type and format version."""
    file = path / CONFIG_NAME
    if not file.is_file():
        raise ConfigError(str(path), "pass a directory written by BradleyTerryReward.save", problem=f"no {CONFIG_NAME}")
    config = json.loads(file.read_text())
    if config.get("reward_type") != BradleyTerryReward.__name__:
        raise ConfigError("reward_type", "load it with the class that saved it",
                          problem=f"{file} holds a {config.get('reward_type')!r}")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError("format_version", "upgrade parsona to read this reward",
                          problem=f"{file} has format {config['format_version']}, this version reads {FORMAT_VERSION}")
    return config
