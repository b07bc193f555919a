"""How sure is a front comparison? A paired bootstrap over the held-out pairs (reward fronts: prompts).

Every method of a comparison is scored on the same eval pairs, so one resample of pair indices
is applied to all of them at once (paired): what moves between resamples is which pairs were
drawn, not which method was lucky. Each resample recomputes every method's accuracy per λ from
its per-pair scores (:attr:`FrontResult.pair_correct`; a reward front: its per-prompt rewards,
:attr:`FrontResult.prompt_reward`), then the statistic (an HV ratio, a ρ).
The interval is scipy's percentile bootstrap.

    low, high = bootstrap_interval(results, lambda fronts: hypervolume(fronts["pref"], ref) /
                                                          hypervolume(fronts["soups"], ref))
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from parsona.errors import ConfigError
from parsona.evaluate import FrontResult

Statistic = Callable[[Mapping[str, np.ndarray]], float]


def resampled_fronts(results: Sequence[FrontResult], pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's (K, m) front over the eval pairs (or, for reward fronts, prompts) ``pairs``
    (indices, repeats allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": no labelled pair drawn (NaN)
        return {r.method: np.nanmean(r.unit_scores[:, pairs, :], axis=1) for r in results}  # (K, m) each


def bootstrap_interval(results: Sequence[FrontResult], statistic: Statistic, *, confidence: float = 0.95,
                       n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(low, high) of ``statistic(fronts)`` where ``fronts`` maps method -> (K, m) front (accuracies or
    mean rewards, as the results were scored)."""
    from scipy.stats import bootstrap

    n = _n_units(results)

    def on_sample(pairs: np.ndarray) -> float:
        return float(statistic(resampled_fronts(results, pairs.astype(int))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ratio over a resample whose HV is 0 is inf: kept
        res = bootstrap((np.arange(n),), on_sample, vectorized=False, n_resamples=n_resamples, method="percentile",
                        confidence_level=confidence, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def point_intervals(result: FrontResult, *, confidence: float = 0.95, n_resamples: int = 1000,
                    seed: int = 0) -> np.ndarray | None:
    """(K, m, 2) a percentile-bootstrap interval of every plotted value (each λ's accuracy or mean reward
    per objective), resampling the eval pairs (prompts) once for all λ; None when the result keeps no
    per-pair scores (built by hand, read from JSON)."""
    scores = result.unit_scores                                              # (K, N, m), NaN: unlabelled
    if scores is None or scores.shape[1] == 0:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, scores.shape[1], size=(n_resamples, scores.shape[1]))   # (B, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no labelled pair: NaN, skipped below
        means = np.stack([np.nanmean(scores[:, d, :], axis=1) for d in draws])      # (B, K, m)
        tail = 100 * (1 - confidence) / 2
        return np.moveaxis(np.nanpercentile(means, [tail, 100 - tail], axis=0), 0, -1)   # (K, m, 2)


def _n_units(results: Sequence[FrontResult]) -> int:
    """How many eval units (pairs, or prompts for reward fronts) every result was scored on."""
    if not results or any(r.unit_scores is None for r in results):
        raise ConfigError("results", "Bootstrap fronts from evaluate_front (they keep per-pair and per-prompt scores).",
                          problem="a result has no per-pair or per-prompt scores (built by hand or read back from JSON)")
    if len({r.metric for r in results}) != 1:
        raise ConfigError("results", "Compare fronts of one metric: all accuracies or all rewards.",
                          problem=f"got {sorted({r.metric for r in results})}")
    sizes = {r.unit_scores.shape[1] for r in results}
    unit = "prompts" if results[0].metric == "reward" else "pairs"
    if len(sizes) != 1:
        raise ConfigError("results", f"Evaluate every method on the same held-out {unit}.",
                          problem=f"{unit} counts {sorted(sizes)}")
    return sizes.pop()



def t_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` (e.g. per-user paired differences) and its Student-t interval: {mean, low, high}."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    half = t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return {"mean": float(v.mean()), "low": float(v.mean() - half), "high": float(v.mean() + half)}
