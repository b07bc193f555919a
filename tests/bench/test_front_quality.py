"""bench/front_quality.py keeps each scored front so a killed or split run does not score it twice."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from parsona.evaluate import FrontResult

BENCH = Path(__file__).resolve().parents[2] / "bench" / "front_quality.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("front_quality", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_scored_front_is_reused_only_under_the_same_settings(tmp_path):
    bench = load_bench()
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, size=(3, 5, 2)).astype(float)
    correct[0, 1, 0] = np.nan                                           # an unlabelled pair survives as NaN
    result = FrontResult("pref_linear", ("helpful", "harmless"), np.array([[0, 1], [0.5, 0.5], [1, 0]]),
                         np.nanmean(correct, axis=1), rng.random((3, 2)), [4, 5], np.array([0.4, 0.4]),
                         pair_correct=correct, seconds=1.5)
    args = bench.parse(["--eval-pairs", "5", "--n-partitions", "2"])
    settings = bench.eval_settings(args, "pref_linear")
    path = tmp_path / "eval" / "pref_linear.npz"
    bench.save_result(path, settings, result)

    back = bench.load_result(path, settings)
    for name in ("preferences", "accuracy", "dpo_loss", "reference_point", "pair_correct"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert (back.method, back.objectives, back.n_labelled, back.reward) == ("pref_linear", ("helpful", "harmless"), [4, 5], None)

    assert bench.load_result(path, bench.eval_settings(bench.parse(["--eval-pairs", "6", "--n-partitions", "2"]),
                                                       "pref_linear")) is None        # other eval pairs: score again
    assert bench.load_result(path, bench.eval_settings(args, "soups_cat")) is None
    assert bench.eval_settings(bench.parse(["--eval-pairs", "5", "--n-partitions", "2", "--seeds", "3",
                                            "--output-dir", "elsewhere"]), "pref_linear") == settings
    assert [p.name for p in path.parent.iterdir()] == ["pref_linear.npz"]             # no temp file left
