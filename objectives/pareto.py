"""Pareto-front quality indicators for sets of objective vectors.

Convention: every point is a row of m objectives that are all MAXIMISED (rewards, utilities),
like everywhere in ``parsona.objectives``. moocore and pymoo minimise, so THE one sign flip
between the two conventions is :func:`_to_min` in this module; nothing else in Parsona negates
objectives for them.

Points are ``(n, m)`` arrays (numpy, torch or nested lists), m >= 2, finite. Bad input raises
:class:`ConfigError` naming the field (``points``, ``reference_point``, ``reference_front``,
``preference``).

Indicators (small functions, pymoo style):

* :func:`hypervolume` (higher is better), :func:`hypervolume_info` (value, method)
* :func:`igd_plus` (lower is better; needs a reference front)
* :func:`expected_utility`, :func:`inner_product` (higher is better; need preferences)
* :func:`sparsity` (PGMORL), :func:`spacing` (Schott) (lower is more even)
* :func:`non_dominated` (indices of the Pareto-optimal rows)
"""

from __future__ import annotations

import moocore
import numpy as np
import torch

from parsona.errors import ConfigError

from .preferences import validate_preferences

EXACT_HV_MAX_OBJECTIVES = 5  # beyond this moocore's exact HV grows like n^(m-2): approximate
HV_APPROX_METHOD = "Rphi-FWE+"  # deterministic quasi-Monte-Carlo: same answer on every run


def _to_min(points: np.ndarray) -> np.ndarray:
    """Maximised objectives -> the minimised ones moocore/pymoo expect. The only sign flip."""
    return -points


def _as_array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _points(points, field: str = "points", m: int | None = None) -> np.ndarray:
    arr = _as_array(points)
    if arr.ndim != 2:
        raise ConfigError(field, "pass an (n_points, n_objectives) array, one row per point",
                          f"expected 2 dimensions, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ConfigError(field, "pass at least one point", "the point set is empty")
    if arr.shape[1] < 2:
        raise ConfigError(field, "use at least 2 objectives; with one, just take the max",
                          f"has {arr.shape[1]} objective(s)")
    if m is not None and arr.shape[1] != m:
        raise ConfigError(field, f"give {m} objectives per row to match points",
                          f"has {arr.shape[1]} objectives")
    if not np.isfinite(arr).all():
        raise ConfigError(field, "remove NaN/inf rows (check the rewards that produced them)",
                          "contains non-finite values")
    return arr


def _vector(x, field: str, m: int) -> np.ndarray:
    arr = _as_array(x)
    if arr.shape != (m,):
        raise ConfigError(field, f"pass one value per objective, shape ({m},)", f"got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(field, "use finite values", f"is {arr.tolist()}")
    return arr


def non_dominated(points) -> np.ndarray:
    """Sorted row indices of the points no other point dominates (maximisation).

    Duplicates of a non-dominated point are all kept (neither dominates the other).
    """
    P = _points(points)  # (n, m)
    mask = moocore.is_nondominated(_to_min(P), keep_weakly=True)  # (n,)
    return np.flatnonzero(mask)


def hypervolume_info(points, reference_point, *,
                     exact_max_objectives: int = EXACT_HV_MAX_OBJECTIVES) -> tuple[float, str]:
    """Hypervolume and how it was computed: ``(value, method)``.

    The hypervolume is the volume of the region dominated by ``points`` and bounded below by
    ``reference_point`` (m,). Points that do not strictly exceed the reference point on every
    objective contribute 0 (moocore's rule); nothing is raised for them.

    method is ``"exact"`` (moocore.hypervolume) for m <= ``exact_max_objectives`` (5) and
    ``"approx:Rphi-FWE+"`` (moocore.hv_approx, deterministic) beyond.
    """
    P = _points(points)  # (n, m)
    ref = _vector(reference_point, "reference_point", P.shape[1])  # (m,)
    if P.shape[1] <= exact_max_objectives:
        return float(moocore.hypervolume(_to_min(P), ref=_to_min(ref))), "exact"
    value = moocore.hv_approx(_to_min(P), ref=_to_min(ref), method=HV_APPROX_METHOD)
    return float(value), f"approx:{HV_APPROX_METHOD}"


def hypervolume(points, reference_point) -> float:
    """Hypervolume of maximised ``points`` (n, m) above ``reference_point`` (m,). Higher is better.

    Exact up to 5 objectives, a deterministic approximation beyond: call
    :func:`hypervolume_info` to also get which. Points not strictly above the reference point
    on every objective contribute 0.
    """
    return hypervolume_info(points, reference_point)[0]


def igd_plus(points, reference_front) -> float:
    """IGD+ (Ishibuchi et al. 2015): the mean over reference-front points z of the distance to
    the nearest point p, counting only the objectives where p falls short of z. Lower is better;
    weakly Pareto compliant, unlike IGD. Computed by moocore.igd_plus.
    """
    P = _points(points)  # (n, m)
    Z = _points(reference_front, "reference_front", P.shape[1])  # (k, m)
    return float(moocore.igd_plus(_to_min(P), ref=_to_min(Z)))


def expected_utility(points, preferences) -> float:
    """Expected utility (Zintgraf et al. 2015): mean over λ of max over points of λ·p.

    ``preferences`` (K, m) rows on the simplex, e.g. :func:`simplex_grid`. Higher is better.
    """
    P = _points(points)  # (n, m)
    L = validate_preferences(_as_array(preferences), P.shape[1]).double().numpy()  # (K, m)
    utilities = L @ P.T  # (K, n)
    return float(utilities.max(axis=1).mean())


def inner_product(points, preferences) -> float:
    """Panacea's inner product (IP, arXiv 2402.02030): mean over k of λ_k · f_k.

    Row k of ``points`` is f_k, the objectives the model reached when asked for preference
    λ_k (row k of ``preferences``); so both are (K, m), row-aligned. Higher means the model
    follows its preference more. Objectives are used as given: normalise them first if their
    scales differ.
    """
    P = _points(points)  # (K, m)
    L = validate_preferences(_as_array(preferences), P.shape[1]).double().numpy()  # (K, m)
    if L.shape[0] != P.shape[0]:
        raise ConfigError("preference", "pass one preference per point (row-aligned)",
                          f"{L.shape[0]} preferences for {P.shape[0]} points")
    return float((L * P).sum(axis=1).mean())


def sparsity(points) -> float:
    """PGMORL's sparsity (Xu et al., ICML 2020): with P̃_j the j-th objective sorted,

        S = 1 / (n - 1) · Σ_j Σ_i (P̃_j[i] - P̃_j[i+1])^2

    Lower means a denser front. Computed on the points as given (pass the front, e.g.
    ``points[non_dominated(points)]``); 0 for a single point.
    """
    P = _points(points)  # (n, m)
    n = P.shape[0]
    if n == 1:
        return 0.0
    gaps = np.diff(np.sort(P, axis=0), axis=0)  # (n-1, m)
    return float((gaps ** 2).sum() / (n - 1))


def spacing(points) -> float:
    """Schott's spacing via pymoo's SpacingIndicator: the standard deviation of each point's
    L1 distance to its nearest neighbour, sqrt(1/n Σ_i (d_i - mean d)^2). Lower is more even;
    0 for a single point. pymoo divides by n; Schott (1995) by n - 1.

    Distances do not depend on the sign convention, so no flip is needed.
    """
    from pymoo.indicators.spacing import SpacingIndicator  # pymoo import is slowish; only here

    P = _points(points)  # (n, m)
    if P.shape[0] == 1:
        return 0.0
    return float(SpacingIndicator()(P))
