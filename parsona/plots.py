"""Pictures of trade-off fronts: what ``parsona eval front``, ``bench/front_quality.py`` and the
notebooks all draw, from :class:`~parsona.evaluate.FrontResult` s scored on the same data.

    fig = plot_front([pref, soups, dps])              # a matplotlib Figure; shows itself in a notebook
    plot_front([pref, soups, dps], "front.png")       # ... and written atomically
    write_plots([pref, soups, dps], out_dir)          # front.png; front_3d.png for m ≥ 3; simplex_*.png for m = 3

Each method's non-dominated points are joined in objective order (not λ order, which zig-zags
wherever λ stops mattering), labelled with their λ, and the region they dominate above the
hypervolume's reference point is shaded; dominated points are drawn hollow. Where a result keeps
per-pair scores, every point carries its 95 % bootstrap interval on both axes.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's
global state: nothing here picks a backend, so a notebook's inline display and ``plt.show()`` keep
working, and a server draws without a display.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from parsona.errors import ConfigError
from parsona.evaluate import FrontResult

AXIS_UNITS = {"accuracy": "held-out preference accuracy (fraction of pairs)",
              "reward": "mean reward of greedy replies (reward-model score)"}
SIMPLEX_CORNERS = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])   # λ = e1, e2, e3 on the page


def plot_front(results: Sequence[FrontResult], path: str | Path | None = None, *, objectives: tuple[int, int] = (0, 1),
               intervals: bool = True, ax=None, title: str | None = None) -> Figure:
    """Each method's front on two objectives (indices into ``results[0].objectives``); see the module
    docstring. The legend's HV is that of the two plotted objectives (the shaded area; "2-D HV" when
    there are more). ``ax``: draw into an existing Axes. Returns the Figure (saved to ``path`` if given)."""
    from parsona.bootstrap import point_intervals
    from parsona.objectives import hypervolume

    fig, ax = _figure_and_axes(ax, (6.4, 5.0))
    i, j = objectives
    ref = results[0].reference_point
    projected = len(results[0].objectives) > 2
    for r, color in zip(results, _colors(len(results))):
        P = r.points[:, [i, j]]                                                  # (K, 2)
        hv = hypervolume(P, r.reference_point[[i, j]])                           # the shaded area, these two objectives
        front = _front_order(P)                                                  # indices, x ascending
        ax.fill(*_dominated_region(P[front], ref[[i, j]]), color=color, alpha=0.10, linewidth=0)
        ax.plot(P[front, 0], P[front, 1], "-o", color=color, markersize=4, linewidth=1.2,
                label=f"{r.method}  ({'2-D ' if projected else ''}HV {hv:.3g})")
        rest = np.setdiff1d(np.arange(len(P)), front)
        ax.scatter(P[rest, 0], P[rest, 1], s=16, facecolors="none", edgecolors=color, linewidths=0.8)
        bounds = point_intervals(r) if intervals else None                       # (K, m, 2) or None
        if bounds is not None:
            ax.errorbar(P[:, 0], P[:, 1], xerr=_error(P[:, 0], bounds[:, i]), yerr=_error(P[:, 1], bounds[:, j]),
                        fmt="none", ecolor=color, elinewidth=0.6, alpha=0.45)
        for k in front:
            ax.annotate(_lambda_label(r.preferences[k]), P[k], fontsize=6, color=color, xytext=(3, 3),
                        textcoords="offset points")
    ax.scatter([ref[i]], [ref[j]], marker="x", s=40, color="black", zorder=3,
               label=f"HV reference point ({ref[i]:.3g}, {ref[j]:.3g})")
    names, metric = results[0].objectives, results[0].metric
    ax.set_xlabel(f"{names[i]}: {AXIS_UNITS[metric]}")
    ax.set_ylabel(f"{names[j]}: {AXIS_UNITS[metric]}")
    note = "shaded: the region each front dominates; hollow: dominated λ"
    ax.set_title(title or note, fontsize=8)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))   # off the axes: fronts fill every corner
    ax.grid(alpha=0.3)
    return _saved(fig, path)


def plot_front_3d(results: Sequence[FrontResult], path: str | Path | None = None) -> Figure:
    """Three objectives as a 3-D scatter: non-dominated points filled, dominated ones hollow."""
    from parsona.objectives import hypervolume, non_dominated

    fig = Figure(figsize=(6.4, 5.6))
    ax = fig.add_subplot(projection="3d")
    for r, color in zip(results, _colors(len(results))):
        P = r.points[:, :3]                                                      # (K, 3)
        front = non_dominated(P)
        rest = np.setdiff1d(np.arange(len(P)), front)
        ax.scatter(*P[front].T, color=color, s=18, depthshade=False,
                   label=f"{r.method}  (HV {hypervolume(r.points, r.reference_point):.3g})")
        ax.scatter(*P[rest].T, facecolors="none", edgecolors=color, s=18, depthshade=False)
    ref = results[0].reference_point[:3]
    ax.scatter(*ref, marker="x", s=40, color="black", label=f"HV reference point {tuple(round(float(x), 3) for x in ref)}")
    names, unit = results[0].objectives, AXIS_UNITS[results[0].metric].split(" (")[0]
    ax.set_xlabel(names[0], fontsize=8)
    ax.set_ylabel(names[1], fontsize=8)
    ax.set_zlabel(names[2], fontsize=8)
    ax.set_title(f"{unit}; hollow: dominated λ", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return _saved(fig, path)


def plot_simplex(result: FrontResult, path: str | Path | None = None) -> Figure:
    """A ternary heat map per objective: its value (colour) at every λ of a 3-objective grid, with
    the simplex's corners the pure preferences. Shows where on the simplex each objective is won."""
    from matplotlib.tri import Triangulation

    if not spans_simplex(result.preferences):
        raise ConfigError("preferences", "Score a grid of 3 objectives whose λ span the triangle (simplex_grid(3, n)).",
                          problem=f"grid of shape {np.shape(result.preferences)}, or all λ on one line")
    lam = np.asarray(result.preferences, dtype=float)
    xy = (lam / lam.sum(1, keepdims=True)) @ SIMPLEX_CORNERS                    # (K, 2) barycentric -> page
    grid = Triangulation(xy[:, 0], xy[:, 1])
    fig = Figure(figsize=(12.0, 3.8))
    for n, ax in enumerate(fig.subplots(1, 3)):
        shaded = ax.tripcolor(grid, result.points[:, n], shading="gouraud", cmap="viridis")
        ax.plot(*xy.T, "k.", markersize=2)
        ax.fill(*SIMPLEX_CORNERS.T, fill=False, edgecolor="black", linewidth=0.8)
        for corner, name in zip(SIMPLEX_CORNERS, result.objectives):
            ax.annotate(f"λ_{name} = 1", corner, fontsize=7, ha="center", xytext=(0, -10 if corner[1] == 0 else 4),
                        textcoords="offset points")
        ax.set_title(f"{result.method}: {result.objectives[n]} over λ", fontsize=8)
        ax.set(xlim=(-0.2, 1.2), ylim=(-0.12, 1.0), aspect="equal")      # room for the corner labels
        ax.axis("off")
        fig.colorbar(shaded, ax=ax, shrink=0.8, label=f"{result.objectives[n]} ({result.metric})")
    return _saved(fig, path)


def spans_simplex(preferences) -> bool:
    """Whether a grid is 3 objectives' λ not all on one line (a triangulation of them exists)."""
    lam = np.asarray(preferences, dtype=float)
    return lam.ndim == 2 and lam.shape[1] == 3 and len(lam) >= 3 and np.linalg.matrix_rank(lam - lam[0]) == 2


def write_plots(results: Sequence[FrontResult], out: str | Path) -> list[Path]:
    """The pictures a front evaluation leaves in ``out``: front.png (the first two objectives) and,
    with three or more objectives, front_3d.png (the first three) and, for exactly three, one
    simplex_<method>.png per method whose grid spans the triangle (a name unsafe in a file name, or
    taken twice, is replaced by the method's index)."""
    out = Path(out)
    paths = [out / "front.png"]
    plot_front(results, paths[0])
    if len(results[0].objectives) >= 3:
        paths.append(out / "front_3d.png")
        plot_front_3d(results, paths[-1])
        for n, r in enumerate(results):
            if len(r.objectives) == 3 and spans_simplex(r.preferences):
                name = _file_part(r.method, n)
                paths.append(out / f"simplex_{name if out / f'simplex_{name}.png' not in paths else n}.png")
                plot_simplex(r, paths[-1])
    return paths


# -- pieces -----------------------------------------------------------------------------------

def _front_order(P: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of (K, 2) ``P``, left to right (maximisation: y falls as x grows)."""
    from parsona.objectives import non_dominated

    front = non_dominated(P)
    return front[np.lexsort((-P[front, 1], P[front, 0]))]


def _dominated_region(front: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polygon (xs, ys) of what the sorted 2-D ``front`` dominates above ``ref``: the union of the
    boxes [ref, p], a staircase (its area is the hypervolume). Points not above ``ref`` add nothing."""
    p = np.maximum(front, ref)                                                   # (n, 2), clipped to the box
    xs, ys = [ref[0], ref[0]], [ref[1], p[0, 1]]
    for k in range(len(p)):
        xs += [p[k, 0], p[k, 0]]
        ys += [p[k, 1], p[k + 1, 1] if k + 1 < len(p) else ref[1]]
    return np.array(xs), np.array(ys)


def _error(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(2, K) errorbar lengths below and above ``values`` (K,) from ``bounds`` (K, 2); none where NaN."""
    return np.clip(np.nan_to_num(np.stack([values - bounds[:, 0], bounds[:, 1] - values])), 0, None)


def _lambda_label(lam: np.ndarray) -> str:
    return "λ=(" + ", ".join(f"{x:.2g}" for x in lam) + ")"


def _colors(n: int) -> list:
    from matplotlib import colormaps

    return [colormaps["tab10"](k % 10) for k in range(n)]


def _figure_and_axes(ax, size: tuple[float, float]):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size)
    return fig, fig.subplots()


def _file_part(method: str, n: int) -> str:
    """A method name safe in a file name (names come from directory listings): else its index."""
    return method if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", method) and not method.startswith(".") else str(n)


def _saved(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        from parsona.io import atomic_file

        with atomic_file(path, "wb") as f:
            fig.savefig(f, format="png", dpi=130, bbox_inches="tight")
    return fig
