"""Paired bootstrap over eval pairs: intervals of the width statistics says, paired across methods."""

from __future__ import annotations

import numpy as np
import pytest

from parsona.bootstrap import bootstrap_interval, resampled_fronts
from parsona.errors import ConfigError
from parsona.evaluate import FrontResult
from parsona.objectives import hypervolume

REF = np.full(2, 0.4)


def result(method: str, pair_correct: np.ndarray) -> FrontResult:
    K, _, m = pair_correct.shape
    grid = np.stack([np.linspace(0, 1, K), 1 - np.linspace(0, 1, K)], axis=1)
    acc = np.nanmean(pair_correct, axis=1)
    return FrontResult(method, ("helpful", "harmless"), grid, acc, np.zeros_like(acc), [1, 1], REF,
                       pair_correct=pair_correct)


def random_scores(seed: int, K: int = 3, N: int = 400, p: float = 0.5) -> np.ndarray:
    return (np.random.default_rng(seed).random((K, N, 2)) < p).astype(float)   # (K, N, m)


def test_interval_of_a_mean_accuracy_matches_the_normal_approximation():
    r = result("a", random_scores(0))
    low, high = bootstrap_interval([r], lambda f: f["a"][0, 0], n_resamples=2000)
    p, n = r.accuracy[0, 0], r.pair_correct.shape[1]
    half = 1.96 * np.sqrt(p * (1 - p) / n)                                    # ≈ 0.049 for p = ½, n = 400
    assert low < p < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)


def test_methods_are_resampled_together():
    # the same scores under two names: every resample gives both the same front, so the ratio is exactly 1
    scores = random_scores(1, p=0.6)
    pair = [result("pref", scores), result("soups", scores.copy())]
    ratio = bootstrap_interval(pair, lambda f: hypervolume(f["pref"], REF) / hypervolume(f["soups"], REF))
    assert ratio == (1.0, 1.0)
    # independent scores of the same quality do vary
    other = [result("pref", scores), result("soups", random_scores(2, p=0.6))]
    low, high = bootstrap_interval(other, lambda f: hypervolume(f["pref"], REF) / hypervolume(f["soups"], REF))
    assert low < 1 < high


def test_unlabelled_pairs_do_not_count():
    scores = np.ones((1, 4, 2))
    scores[0, :2, 1] = np.nan                                                 # two pairs lack a harmless label
    scores[0, 2, 1] = 0.0
    fronts = resampled_fronts([result("a", scores)], np.arange(4))
    np.testing.assert_allclose(fronts["a"], [[1.0, 0.5]])


def test_results_without_pair_scores_or_on_other_pairs_are_refused():
    bare = result("a", random_scores(0))
    bare.pair_correct = None
    with pytest.raises(ConfigError) as err:
        bootstrap_interval([bare], lambda f: 0.0)
    assert err.value.field == "results"
    with pytest.raises(ConfigError, match="same held-out pairs"):
        bootstrap_interval([result("a", random_scores(0, N=10)), result("b", random_scores(0, N=12))], lambda f: 0.0)


def test_reward_fronts_are_resampled_over_prompts_not_pairs():
    rng = np.random.default_rng(3)
    per_prompt = rng.normal(size=(3, 300, 2))                                 # (K, P, m) rewards
    rewarded = result("a", random_scores(0))                                  # 400 pairs, 300 prompts
    rewarded.prompt_reward, rewarded.reward = per_prompt, per_prompt.mean(axis=1)
    np.testing.assert_allclose(resampled_fronts([rewarded], np.arange(300))["a"], rewarded.reward)
    low, high = bootstrap_interval([rewarded], lambda f: f["a"][0, 0], n_resamples=2000)
    half = 1.96 * per_prompt[0, :, 0].std() / np.sqrt(300)                    # normal approximation of a mean
    assert low < rewarded.reward[0, 0] < high and (high - low) / 2 == pytest.approx(half, rel=0.15)
    # a reward front without per-prompt rewards, or compared with an accuracy front, is refused
    with pytest.raises(ConfigError, match="one metric"):
        bootstrap_interval([rewarded, result("b", random_scores(1))], lambda f: 0.0)
    rewarded.prompt_reward = None
    with pytest.raises(ConfigError) as err:
        bootstrap_interval([rewarded], lambda f: 0.0)
    assert err.value.field == "results"


def test_t_interval_is_scipys_student_interval():
    from scipy import stats

    from parsona.bootstrap import t_interval

    v = np.array([0.3, -0.1, 0.25, 0.4, 0.05])
    low, high = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    got = t_interval(v)
    assert (got["low"], got["mean"], got["high"]) == pytest.approx((low, v.mean(), high))
