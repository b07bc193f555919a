"""The front pictures: what they draw is checked against hand-computed fronts, areas and intervals."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from matplotlib.figure import Figure

from parsona.bootstrap import point_intervals
from parsona.evaluate import FrontResult
from parsona.plots import plot_front, plot_front_3d, plot_simplex, write_plots

OBJECTIVES = ("helpful", "harmless")
PNG = b"\x89PNG\r\n\x1a\n"


def front(method, points, grid=None, objectives=OBJECTIVES, pair_correct=None):
    points = np.asarray(points, float)
    k, m = points.shape
    grid = np.asarray(grid if grid is not None else [[1 - t, t] for t in np.linspace(0, 1, k)], float)
    return FrontResult(method, objectives, grid, points, np.zeros_like(points), [10] * m, np.full(m, 0.4),
                       pair_correct=pair_correct)


# λ order zig-zags: (0.5, 0.5) is dominated by (0.6, 0.55); the rest are non-dominated
ZIGZAG = [[0.7, 0.45], [0.5, 0.5], [0.6, 0.55], [0.45, 0.65]]


def polygon_area(xs, ys) -> float:
    return 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))   # the shoelace formula


def test_the_front_joins_non_dominated_points_in_objective_order_and_shades_exactly_the_hypervolume(tmp_path):
    backend = matplotlib.get_backend()
    fig = plot_front([front("pref", ZIGZAG)], tmp_path / "front.png")
    assert isinstance(fig, Figure) and (tmp_path / "front.png").read_bytes()[:8] == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["front.png"]                     # no temp file left
    assert matplotlib.get_backend() == backend                                       # no global backend switch
    ax = fig.axes[0]
    line = next(l for l in ax.get_lines() if l.get_label().startswith("pref"))
    np.testing.assert_allclose(line.get_xydata(), [[0.45, 0.65], [0.6, 0.55], [0.7, 0.45]])   # x ascending
    # the dominated region above (0.4, 0.4), by hand: 0.05·0.25 + 0.15·0.15 + 0.1·0.05
    region = ax.patches[0].get_xy()
    assert polygon_area(region[:, 0], region[:, 1]) == pytest.approx(0.0125 + 0.0225 + 0.005)
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(["λ=(1, 0)", "λ=(0.33, 0.67)", "λ=(0, 1)"])      # the non-dominated λ
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["pref  (HV 0.04)", "HV reference point (0.4, 0.4)"]
    assert ax.get_xlabel() == "helpful: held-out preference accuracy (fraction of pairs)"


def test_points_below_the_reference_point_shade_nothing():
    fig = plot_front([front("low", [[0.3, 0.9], [0.9, 0.35]])])
    region = fig.axes[0].patches[0].get_xy()
    assert polygon_area(region[:, 0], region[:, 1]) == pytest.approx(0.0)


def test_each_point_carries_the_bootstrap_interval_of_its_mean():
    rng = np.random.default_rng(0)
    scores = (rng.random((1, 400, 2)) < [0.7, 0.5]).astype(float)                  # (K, N, m) pairs right or wrong
    result = front("pref", scores.mean(1), grid=[[0.5, 0.5]], pair_correct=scores)
    bounds = point_intervals(result, n_resamples=2000)                             # (K, m, 2)
    p = scores.mean(1)[0]
    half = 1.96 * np.sqrt(p * (1 - p) / 400)                                       # the normal approximation
    np.testing.assert_allclose(bounds[0, :, 0], p - half, atol=0.01)
    np.testing.assert_allclose(bounds[0, :, 1], p + half, atol=0.01)
    assert point_intervals(front("by hand", [[0.6, 0.6]], grid=[[0.5, 0.5]])) is None
    ax = plot_front([result]).axes[0]
    bars = [c for c in ax.containers if c.has_xerr and c.has_yerr]
    assert len(bars) == 1
    drawn = point_intervals(result)                                                 # what plot_front computes
    (x_segments, y_segments) = (bars[0].lines[2][0].get_segments(), bars[0].lines[2][1].get_segments())
    np.testing.assert_allclose([x_segments[0][0][0], x_segments[0][1][0]], drawn[0, 0], atol=1e-9)
    np.testing.assert_allclose([y_segments[0][0][1], y_segments[0][1][1]], drawn[0, 1], atol=1e-9)


def test_unlabelled_pairs_are_left_out_of_a_points_interval():
    scores = np.ones((1, 6, 2))
    scores[0, 3:, 1] = np.nan                                                      # objective 2: 3 pairs unlabelled
    bounds = point_intervals(front("pref", [[1.0, 1.0]], grid=[[0.5, 0.5]], pair_correct=scores))
    np.testing.assert_allclose(bounds[0], [[1.0, 1.0], [1.0, 1.0]])


THREE = ("helpful", "harmless", "brevity")


def simplex_result(method="pref"):
    from parsona.objectives import simplex_grid

    grid = np.asarray(simplex_grid(3, 3), float)                                   # (10, 3)
    return FrontResult(method, THREE, grid, 0.4 + 0.3 * grid, np.zeros_like(grid), [5, 5, 5], np.full(3, 0.4))


def test_three_objectives_get_a_3d_scatter_and_a_simplex_heat_map_per_objective(tmp_path):
    result = simplex_result()
    fig = plot_simplex(result)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 3                     # one panel per objective
    corners = [t for t in fig.axes[0].texts]
    np.testing.assert_allclose([t.xy for t in corners], [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
    assert [t.get_text() for t in corners] == ["λ_helpful = 1", "λ_harmless = 1", "λ_brevity = 1"]
    assert plot_front_3d([result]).axes[0].get_zlabel() == "brevity"
    paths = write_plots([result, simplex_result("../escape"), simplex_result("pref")], tmp_path)
    assert [p.name for p in paths] == ["front.png", "front_3d.png", "simplex_pref.png", "simplex_1.png", "simplex_2.png"]
    assert all(p.read_bytes()[:8] == PNG for p in paths) and sorted(tmp_path.iterdir()) == sorted(paths)


def test_a_simplex_heat_map_needs_a_grid_spanning_the_triangle():
    from parsona.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        plot_simplex(front("two", ZIGZAG))
    assert err.value.field == "preferences"
    edge = FrontResult("edge", THREE, np.array([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0.0]]), np.full((3, 3), 0.5),
                       np.zeros((3, 3)), [5, 5, 5], np.full(3, 0.4))
    with pytest.raises(ConfigError):
        plot_simplex(edge)                                                     # all λ on one edge: no triangle


def test_with_three_objectives_the_legend_gives_the_shaded_2d_hypervolume():
    result = simplex_result()
    legend = [t.get_text() for t in plot_front([result]).axes[0].get_legend().get_texts()]
    P = result.points[:, :2]
    from parsona.objectives import hypervolume

    assert legend[0] == f"pref  (2-D HV {hypervolume(P, np.full(2, 0.4)):.3g})"
