"""The one check of a preference vector λ on the simplex: λ_i ≥ 0, Σ λ_i = 1, m weights per row.

Every caller uses it: the preference LoRA (each forward block and ``merge``), the host (each
request), the objectives (``PreferenceVector``, indicators) and the front policies. It lives in
the foundation because both ``parsona.adapters`` and ``parsona.objectives`` need it and neither
may import the other. An off-simplex vector is an error, never renormalised (DESIGN §7).

One tolerance, :data:`SIMPLEX_ATOL` = 1e-5, on the sum computed in float64 from the values as
given (lists are never rounded to float32 first): it accepts weights written to 5 decimals
(``[0.33333, 0.33333, 0.33334]``) and any float32 tensor that was normalised, and refuses a
vector off by more, the same everywhere — request, merge, indicators and front policies.
"""

from __future__ import annotations

from typing import Any

import torch

from parsona.errors import ConfigError

SIMPLEX_ATOL = 1e-5
FIELD = "preference"


def check_preference(values: Any, n_objectives: int | None = None, *, batched: bool = False,
                     field: str = FIELD) -> torch.Tensor:
    """λ as a floating tensor, ``(m,)`` or ``(B, m)`` if ``batched``, or a ConfigError naming ``field``.

    Lists, numpy arrays and tensors are accepted; a floating tensor keeps its dtype and device,
    anything else becomes float32 on the CPU. Errors name the bad row of a batch.
    """
    lam, exact = _as_tensor(values, field)
    want, shape = (2, "(B, m)") if batched else (1, "(m,)")
    if lam.ndim != want:
        raise ConfigError(field, f"Pass shape {shape}: m weights{' per row, one row per sequence' if batched else ''}.",
                          problem=f"expected {'2 dimensions' if batched else 'a 1-D vector'}, got shape {tuple(lam.shape)}")
    m = lam.shape[-1]
    if n_objectives is not None and m != n_objectives:
        raise ConfigError(field, f"Give exactly {n_objectives} weights, one per objective.",
                          problem=f"shape {tuple(lam.shape)} has {m} weights but there are {n_objectives} objectives")
    if m < 2:
        raise ConfigError(field, "Use at least 2 objectives; one objective needs no preference.",
                          problem=f"has {m} weight(s)")
    if tracing():           # λ is a graph input now: the runtime that feeds it checks its values (OnnxGenerator)
        return lam
    checked = exact.detach().to("cpu", torch.float64).reshape(-1, m)   # (B, m); MPS has no float64
    _refuse_first(field, ~torch.isfinite(checked).all(1), checked, "has non-finite values", "Replace NaN/inf with finite weights.",
                  batched)
    _refuse_first(field, (checked < 0).any(1), checked, "has a negative weight", "Make every weight ≥ 0.", batched)
    sums = checked.sum(1)                                             # (B,)
    bad = (sums - 1).abs() > SIMPLEX_ATOL
    if bad.any():
        row = int(bad.nonzero()[0])
        where = f"row {row} sums to {float(sums[row]):.8g}" if batched else f"sums to {float(sums[row]):.8g}"
        raise ConfigError(field, "Make the weights sum to 1 (divide by their sum).", problem=where)
    return lam


def exporting() -> bool:
    """Whether ``torch.export`` (the ONNX exporter's tracer) is tracing; False on torch < 2.6, which lacks the flag."""
    flag = getattr(torch.compiler, "is_exporting", None)
    return bool(flag and flag())


def tracing() -> bool:
    """Whether torch is exporting or tracing a graph (not ``torch.compile``, which runs the checks as Python):
    values are symbols then, and a check of them cannot run."""
    return torch.jit.is_tracing() or exporting()


def _as_tensor(values: Any, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(what to return, what to check): a floating tensor is both; anything else is checked in
    float64 as given and returned as float32."""
    if isinstance(values, torch.Tensor):
        values = values if values.is_floating_point() else values.float()
        return values, values
    if isinstance(values, (str, bytes)) or values is None:
        raise ConfigError(field, "Pass a list of numbers, e.g. [0.3, 0.7].", problem=f"got {values!r:.40}")
    try:
        exact = torch.as_tensor(_plain(values), dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ConfigError(field, "Pass a list of numbers, e.g. [0.3, 0.7].", problem=f"got {values!r:.40}") from None
    return exact.float(), exact


def _plain(values: Any) -> Any:
    """Nested lists of Python numbers (booleans and strings are not weights)."""
    if isinstance(values, (list, tuple)):
        return [_plain(v) for v in values]
    if hasattr(values, "tolist") and not isinstance(values, (int, float)):  # numpy arrays and scalars
        return _plain(values.tolist())
    if isinstance(values, bool) or not isinstance(values, (int, float)) and not hasattr(values, "__float__"):
        raise TypeError(values)
    return values


def _refuse_first(field: str, bad: torch.Tensor, rows: torch.Tensor, what: str, fix: str, batched: bool) -> None:
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ConfigError(field, fix, problem=f"row {row} {what}: {rows[row].tolist()}" if batched
                          else f"{what}: {rows[row].tolist()}")
