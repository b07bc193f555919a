"""bench/group_predictor.py end to end on a tiny encoder: every method scored on both datasets, fits reused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_it_scores_every_method_on_both_datasets_and_reuses_its_fits(tiny_encoder_dir, tmp_path, capsys):
    bench = load_bench("group_predictor")
    argv = ["--encoder", str(tiny_encoder_dir), "--steps", "2", "--draws", "1", "--mixed-groups", "3",
            "--ml-users", "30", "--ml-max-queries", "5", "--output-dir", str(tmp_path)]
    r = run_recipe(bench.Config, bench.main, argv)
    printed = capsys.readouterr().out
    assert "goal (gpo_prior beats every baseline on Democrat and Republican)" in printed
    assert "MovieLens: 6 held-out users" in printed and "gpo_prior − mf" in printed
    groups = r["opinionqa"]["groups"]
    assert set(groups) == {"Democrat", "Republican", "$100,000 or more", "Less than $30,000"}
    methods = {"uniform", "overall", "knn", "knn_prior", "ridge", "ridge_prior", "gpo", "gpo_prior"}
    assert all(set(s) == methods for s in groups.values())
    assert all(0 <= v <= 1 for s in groups.values() for v in np.concatenate(list(s.values())))
    ml = r["movielens"]["per_user"]
    assert len(ml) == 6 and all(set(u) == {"item_mean", "user_mean", "item_knn", "mf", "gpo", "gpo_prior",
                                                   "gpo_mean", "gpo_prior_mean"}
                                for u in ml.values())
    for u in ml.values():                                            # the point read: same mean, no spread charged
        assert u["gpo_prior_mean"][0] == pytest.approx(u["gpo_prior"][0])
        assert u["gpo_prior_mean"][1] <= u["gpo_prior"][1] + 1e-9
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert len(models) == 4 * 2 + 2                                  # leave-one-group-out × 2, MovieLens × 2
    run_recipe(bench.Config, bench.main, argv)                       # a rerun loads every fit it saved
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == models
    run_recipe(bench.Config, bench.main, [*argv, "--parts", "opinionqa", "--mix-random-scale"])
    assert len(list((tmp_path / "models").iterdir())) == len(models) + 4      # new gpo_prior fits; gpo's reused


def test_users_split_without_overlap_and_scores_match_by_hand():
    ml = load_bench("group_predictor_movielens")
    population, held = ml.split_users(list(range(10)), 0.2, seed=0)
    assert len(held) == 2 and not set(population) & set(held) and len(population) == 8
    sq, w1 = ml.scores(np.array([4.0, 2.0]), np.array([5.0, 2.0]))
    np.testing.assert_allclose(sq, [1.0, 0.0]) and np.testing.assert_allclose(w1, [1.0, 0.0])
    dist = np.zeros((1, 10))
    dist[0, [5, 7]] = 0.5                                            # half 3.0, half 4.0 stars
    sq, w1 = ml.scores(dist, np.array([4.0]))
    np.testing.assert_allclose(sq, [0.25]) and np.testing.assert_allclose(w1, [0.5])


def test_a_point_read_scores_as_the_two_levels_either_side_of_the_mean_and_never_worse_on_w1():
    ml = load_bench("group_predictor_movielens")
    dist = np.zeros((1, 10))
    dist[0, [5, 6]] = 0.6, 0.4                                       # 3.0 and 3.5 stars: mean 3.2
    for rating in (0.5, 3.0, 3.5, 5.0):
        _, w1 = ml.scores(dist, np.array([rating]))
        _, point = ml.scores(np.array([3.2]), np.array([rating]))
        np.testing.assert_allclose(w1, point)
        np.testing.assert_allclose(point, [abs(3.2 - rating)])
    spread = np.random.default_rng(0).dirichlet(np.ones(10), size=200)
    ratings = np.random.default_rng(1).integers(1, 11, 200) * 0.5
    sq, w1 = ml.scores(spread, ratings)
    sq_point, w1_point = ml.scores(spread @ np.arange(1, 11) * 0.5, ratings)
    np.testing.assert_allclose(sq, sq_point)                         # the same mean
    assert (w1_point <= w1 + 1e-12).all() and (w1_point < w1 - 1e-3).mean() > 0.5      # Jensen: spread costs W1


def test_the_loss_is_a_setting_of_its_own_fits_and_an_unknown_one_names_the_field(tiny_encoder_dir, tmp_path):
    bench = load_bench("group_predictor")
    argv = ["--encoder", str(tiny_encoder_dir), "--steps", "2", "--parts", "movielens", "--ml-users", "30",
            "--ml-max-queries", "5", "--output-dir", str(tmp_path)]
    ce = run_recipe(bench.Config, bench.main, argv)
    w1 = run_recipe(bench.Config, bench.main, [*argv, "--loss", "ordinal_w1"])
    fits = [json.loads(p.read_text()) for p in (tmp_path / "models").rglob("group_predictor.json")]
    assert sorted(f["loss"] for f in fits) == ["cross_entropy"] * 2 + ["ordinal_w1"] * 2      # gpo, gpo_prior each
    assert ce["movielens"]["per_user"] != w1["movielens"]["per_user"]
    with pytest.raises(SystemExit):
        run_recipe(bench.Config, bench.main, [*argv, "--loss", "mse"])


def test_mean_shift_makes_fits_of_their_own_that_read_it(tiny_encoder_dir, tmp_path):
    bench = load_bench("group_predictor")
    argv = ["--encoder", str(tiny_encoder_dir), "--steps", "2", "--parts", "movielens", "--ml-users", "30",
            "--ml-max-queries", "5", "--output-dir", str(tmp_path)]
    plain = run_recipe(bench.Config, bench.main, argv)["movielens"]["per_user"]
    shifted = run_recipe(bench.Config, bench.main, [*argv, "--mean-shift"])["movielens"]["per_user"]
    fits = [json.loads(p.read_text())["params"] for p in (tmp_path / "models").rglob("group_predictor.json")]
    assert sorted(f["mean_shift"] for f in fits) == [False, False, True, True]        # gpo, gpo_prior each
    assert plain != shifted


def test_item_factors_join_the_movie_vectors_standardised_and_make_fits_of_their_own(tiny_encoder_dir, tmp_path):
    from types import SimpleNamespace as R

    ml = load_bench("group_predictor_movielens")
    rng = np.random.default_rng(0)
    history = {u: [R(movie_id=m, rating=float(rng.integers(1, 11)) / 2) for m in rng.choice(40, 15, replace=False)]
               for u in range(30)}
    cf = ml.Collaborative(history, list(range(30)), factors=4, seed=0)
    vectors = {m: np.ones(3, dtype=np.float32) for m in [*cf.items, 999]}          # 999: rated by no one
    joined = cf.with_item_factors(vectors)
    factors = np.stack([joined[m][3:] for m in cf.items])
    np.testing.assert_allclose(factors.std(0), 1.0, rtol=1e-5)
    np.testing.assert_allclose(factors.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(factors * cf.V.std(0) + cf.V.mean(0), cf.V, atol=1e-5)   # the MF's own factors
    assert (joined[999][3:] == 0).all() and (joined[999][:3] == 1).all()

    bench = load_bench("group_predictor")
    argv = ["--encoder", str(tiny_encoder_dir), "--steps", "2", "--parts", "movielens", "--ml-users", "30",
            "--ml-max-queries", "5", "--ml-factors", "4", "--output-dir", str(tmp_path)]
    plain = run_recipe(bench.Config, bench.main, argv)
    with_factors = run_recipe(bench.Config, bench.main, [*argv, "--ml-item-factors"])
    dims = sorted(json.loads(p.read_text())["dim"] for p in (tmp_path / "models").rglob("group_predictor.json"))
    assert len(dims) == 4 and dims[2] == dims[0] + 4                                 # gpo, gpo_prior each
    assert plain["movielens"]["per_user"] != with_factors["movielens"]["per_user"]


def test_an_ensemble_averages_its_seeds_fits_and_keeps_the_single_fit_it_extends(tiny_encoder_dir, tmp_path):
    bench = load_bench("group_predictor")
    argv = ["--encoder", str(tiny_encoder_dir), "--steps", "3", "--parts", "movielens", "--ml-users", "30",
            "--ml-max-queries", "5", "--output-dir", str(tmp_path)]
    one = run_recipe(bench.Config, bench.main, argv)["movielens"]["per_user"]
    fits = {p.parent.name for p in (tmp_path / "models").rglob("group_predictor.json")}
    two = run_recipe(bench.Config, bench.main, [*argv, "--ensemble", "2"])["movielens"]["per_user"]
    fits_two = {p.parent.name for p in (tmp_path / "models").rglob("group_predictor.json")}
    assert fits < fits_two and len(fits_two) == 3                    # seed 0's fits reused, one more for seed 1
    assert all(one[u]["gpo"] == two[u]["gpo"] for u in one)          # gpo stays one predictor
    assert any(one[u]["gpo_prior"] != two[u]["gpo_prior"] for u in one)

    class Fixed:                                                     # the average of two known predictors
        def __init__(self, p):
            self.p = np.asarray(p)

        def predict(self, context, queries):
            return [self.p for _ in queries]

    mean = bench.Averaged([Fixed([1.0, 0.0]), Fixed([0.5, 0.5])]).predict([], [None, None])
    np.testing.assert_allclose(mean, [[0.75, 0.25]] * 2)
    with pytest.raises(SystemExit):
        run_recipe(bench.Config, bench.main, [*argv, "--ensemble", "0"])
