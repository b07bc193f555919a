"""bench/front_quality.py keeps each scored front so a killed or split run does not score it twice."""

from __future__ import annotations

import argparse
import json

import numpy as np

from conftest import load_bench
from parsona.evaluate import FrontResult
from parsona.recipes.config_cli import add_config_arguments, config_from_args, run_recipe


def parse(bench, argv):
    """The bench's command line, parsed as ``python bench/front_quality.py ARGV`` parses it."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, bench.Config)
    return config_from_args(bench.Config, parser.parse_args(argv))


def test_a_scored_front_is_reused_only_under_the_same_settings(tmp_path):
    bench = load_bench("front_quality")
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, size=(3, 5, 2)).astype(float)
    correct[0, 1, 0] = np.nan                                           # an unlabelled pair survives as NaN
    result = FrontResult("pref_linear", ("helpful", "harmless"), np.array([[0, 1], [0.5, 0.5], [1, 0]]),
                         np.nanmean(correct, axis=1), rng.random((3, 2)), [4, 5], np.array([0.4, 0.4]),
                         pair_correct=correct, seconds=1.5)
    args = parse(bench, ["--eval-pairs", "5", "--n-partitions", "2"])
    settings = bench.eval_settings(args, "pref_linear")
    path = bench.cache_path(tmp_path, settings)
    bench.save_result(path, settings, result)

    back = bench.load_result(path, settings)
    for name in ("preferences", "accuracy", "dpo_loss", "reference_point", "pair_correct"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert (back.method, back.objectives, back.n_labelled, back.reward) == ("pref_linear", ("helpful", "harmless"), [4, 5], None)

    assert bench.load_result(path, bench.eval_settings(parse(bench, ["--eval-pairs", "6", "--n-partitions", "2"]),
                                                       "pref_linear")) is None        # other eval pairs: score again
    assert bench.load_result(path, bench.eval_settings(args, "soups_cat")) is None
    assert bench.eval_settings(parse(bench, ["--eval-pairs", "5", "--n-partitions", "2", "--seeds", "3",
                                            "--output-dir", "elsewhere"]), "pref_linear") == settings
    assert [p.name for p in path.parent.iterdir()] == [path.name]                     # no temp file left

    # a reward front keeps its per-prompt rewards (the bootstrap resamples them)
    rewarded = bench.eval_settings(parse(bench, ["--eval-pairs", "5", "--reward-models", "helpful=h,harmless=s"]),
                                   "pref_linear")
    result.prompt_reward = rng.normal(size=(3, 4, 2))
    result.reward = result.prompt_reward.mean(axis=1)
    bench.save_result(tmp_path / "r.npz", rewarded, result)
    back = bench.load_result(tmp_path / "r.npz", rewarded)
    np.testing.assert_array_equal(back.prompt_reward, result.prompt_reward)
    assert back.metric == "reward"
    (tmp_path / "r.npz").unlink()

    # another eval set-up of the same adapters gets its own file: the first front is kept
    other = bench.eval_settings(parse(bench, ["--eval-pairs", "6", "--n-partitions", "2"]), "pref_linear")
    assert bench.cache_path(tmp_path, other) != path and path.name.startswith("pref_linear-")
    bench.save_result(bench.cache_path(tmp_path, other), other, result)
    assert bench.load_result(path, settings) is not None and len(list(path.parent.iterdir())) == 2


def test_reward_fronts_share_one_reference_point_across_processes(tmp_path):
    bench = load_bench("front_quality")
    calls = []

    def fix():
        calls.append(1)
        return [-1.5, 0.5]

    cached = FrontResult("pref_linear", ("helpful", "harmless"), np.array([[0, 1], [1, 0]]), np.zeros((2, 2)),
                         np.zeros((2, 2)), [2, 2], np.array([-1.25, 0.75]), reward=np.zeros((2, 2)))
    kept = tmp_path / "reference.json"
    # a front scored before the file existed fixes it; no base generation
    np.testing.assert_array_equal(bench.shared_reference_point(kept, {"pref_linear": cached, "dps": None}, fix),
                                  [-1.25, 0.75])
    assert calls == []
    # another process (other --methods, nothing cached) reads the same point instead of generating
    np.testing.assert_array_equal(bench.shared_reference_point(kept, {"dps": None}, fix), [-1.25, 0.75])
    assert calls == []
    kept.unlink()
    np.testing.assert_array_equal(bench.shared_reference_point(kept, {"dps": None}, fix), [-1.5, 0.5])
    assert calls == [1] and json.loads(kept.read_text()) == [-1.5, 0.5]


def test_a_reward_refit_in_the_same_directory_is_another_eval(tmp_path):
    bench = load_bench("front_quality")
    for name in ("helpful", "harmless"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "reward.safetensors").write_bytes(b"w1")
    args = parse(bench, ["--reward-models", f"helpful={tmp_path / 'helpful'},harmless={tmp_path / 'harmless'}"])
    before, reference = bench.eval_settings(args, "pref_linear"), bench.reference_file(args)
    assert bench.eval_settings(args, "pref_linear") == before                       # same files: same key
    (tmp_path / "harmless" / "reward.safetensors").write_bytes(b"w2")
    assert bench.eval_settings(args, "pref_linear") != before and bench.reference_file(args) != reference
    plain = parse(bench, [])
    assert "reward_files" not in bench.eval_settings(plain, "pref_linear")           # accuracy fronts keep their keys


def test_several_seeds_are_judged_on_the_ratio_of_mean_hypervolumes():
    bench = load_bench("front_quality")

    def row(hv, rho, steps):
        return dict(hypervolume=hv, igd_plus=0.01, spearman_helpful=rho, spearman_harmless=rho, train_s=10.0,
                    eval_seconds=5.0, train_steps=steps, train_tokens=100 * steps, metric="accuracy")

    per_seed = {0: {"pref_linear": row(0.02, 0.8, 120), "soups_linear": row(0.03, 0.9, 120), "dps": row(0.02, 1, 360)},
                1: {"pref_linear": row(0.04, 1.0, 120), "soups_linear": row(0.03, 0.9, 120), "dps": row(0.03, 1, 360)}}
    text = "\n".join(bench.across_seeds(per_seed))
    assert "pref_linear   0.03 ± 0.014" in text                        # mean 0.03, sd(0.02, 0.04) = 0.01414
    assert "HV(pref_linear) / HV(soups_linear) = 1.000" in text and "per seed: 0.667, 1.333" in text
    assert "HV(pref_linear) / HV(dps) = 1.200 at 0.333" in text        # 0.03 / 0.025
    assert "ρ(λ_helpful, accuracy_helpful) = 0.900  (target ≥ 0.9: MET" in text


def test_the_bench_runs_end_to_end_and_a_rerun_trains_and_scores_nothing_again(tiny_dir, tmp_path, capsys):
    bench = load_bench("front_quality")
    argv = ["--model", tiny_dir, "--max-steps", "2", "--eval-pairs", "4", "--n-partitions", "2", "--dps-partitions", "1",
            "--max-length", "64", "--seeds", "0,1", "--methods", "pref_linear,soups_linear,dps", "--output-dir", str(tmp_path)]
    run_recipe(bench.Config, bench.main, argv)
    out = capsys.readouterr().out
    assert "reusing" not in out and "mean ± sd over seeds 0,1" in out and "HV(pref_linear) / HV(dps)" in out
    results = {s: json.loads((tmp_path / f"seed{s}" / "results.json").read_text()) for s in (0, 1)}
    assert [r["method"] for r in results[0]] == ["pref_linear", "soups_linear", "dps"]
    assert [len(r["rows"]) for r in results[0]] == [3, 3, 2]                      # simplex_grid(2, 2), (2, 1)
    weights = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    assert len(weights) >= 2 * 4                                                   # per seed: pref, 2 soups, 2 dps

    run_recipe(bench.Config, bench.main, argv)
    again = capsys.readouterr().out
    assert again.count("reusing") == 2 * 3                                         # every front of both seeds
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == weights   # nothing retrained
    assert {s: json.loads((tmp_path / f"seed{s}" / "results.json").read_text()) for s in (0, 1)} == results


def test_the_interval_on_the_means_over_seeds_brackets_the_ratio_of_mean_hypervolumes():
    bench = load_bench("front_quality")
    rng = np.random.default_rng(0)

    def front(method, level):       # one λ point, 40 pairs scored 1 (right) with probability level
        scores = (rng.random((1, 40, 2)) < level).astype(float)                     # (K, N, m)
        return FrontResult(method, ("helpful", "harmless"), np.array([[0.5, 0.5]]), scores.mean(1), np.zeros((1, 2)),
                           [40, 40], np.array([0.4, 0.4]), pair_correct=scores)

    by_seed = {0: [front("pref_linear", 0.75), front("soups_linear", 0.6)],
               1: [front("pref_linear", 0.65), front("soups_linear", 0.62)]}
    hv = {m: np.mean([np.prod(r.accuracy[0] - 0.4) for s in by_seed for r in by_seed[s] if r.method == m])
          for m in ("pref_linear", "soups_linear")}                                 # boxes over (0.4, 0.4), by hand
    point = hv["pref_linear"] / hv["soups_linear"]
    line = bench.seed_intervals(by_seed, n_resamples=200)[1]
    low, high = (float(x) for x in line.split("[")[1].rstrip("]").split(","))
    assert "means over seeds" in line and low < point < high
    one_seed = bench.intervals(by_seed[0], n_resamples=200)[1]
    assert line.split(":")[-1] != one_seed.split(":")[-1]                          # both seeds pooled, not seed 0's
