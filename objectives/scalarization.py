"""Scalarizations: turn m objective values and a preference λ into one number per example.

Sign convention (the same as all of ``parsona.objectives``): every ``values`` entry is an
objective to MAXIMISE (a reward, a utility, a negative loss) and the returned scalar is to be
MAXIMISED too. A trainer that minimises should pass ``values = -losses`` and minimise
``-scalarization(values, preference)``.

Shapes: ``values`` (B, m); ``preference`` and ``ideal`` are (B, m) or (m,) (broadcast over the
batch); the result is (B,). All functions are plain torch and differentiable in ``values``.
"""

from __future__ import annotations

import torch

from parsona.errors import ConfigError


def _check(values: torch.Tensor, **others: torch.Tensor | None) -> None:
    if values.ndim != 2 or values.shape[1] < 2:
        raise ConfigError("values", "pass a (batch, n_objectives) tensor with n_objectives >= 2",
                          f"got shape {tuple(values.shape)}")
    m = values.shape[1]
    for name, t in others.items():
        if t.shape != values.shape and t.shape != (m,):
            raise ConfigError(name, f"pass shape {tuple(values.shape)} or ({m},) to match values",
                              f"got shape {tuple(t.shape)}")
    for name, t in {"values": values, **others}.items():
        if not torch.isfinite(t).all():  # one host sync per batch: cheap next to a forward pass
            raise ConfigError(name, "remove NaN/inf (check the reward model's outputs)",
                              "contains non-finite entries")


def linear(values: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """Weighted sum Σ_i λ_i v_i (linear scalarization). ``(B, m), (B, m) -> (B,)``, maximised.

    Only reaches the convex part of a Pareto front; Panacea (arXiv 2402.02030) proves it
    suffices there for its SVD-LoRA model.
    """
    _check(values, preference=preference)
    return (preference * values).sum(dim=-1)  # (B,)


def tchebycheff(values: torch.Tensor, preference: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
    """Weighted Tchebycheff for maximisation: -max_i λ_i (z*_i - v_i). ``(B, m) -> (B,)``, maximised.

    ``ideal`` z* should be at least every value (an upper bound per objective). The gap is not
    put in |.|, so a value above z* still raises the score (monotone) instead of being punished.
    Unlike :func:`linear` it can reach non-convex parts of a front (Miettinen 1999).
    """
    _check(values, preference=preference, ideal=ideal)
    gap = ideal - values  # (B, m), >= 0 when z* bounds the values
    return -(preference * gap).amax(dim=-1)  # (B,)


def augmented_tchebycheff(values: torch.Tensor, preference: torch.Tensor, ideal: torch.Tensor,
                          rho: float = 0.01) -> torch.Tensor:
    """Augmented Tchebycheff (Steuer & Choo 1983) for maximisation:
    -(max_i λ_i (z*_i - v_i) + ρ Σ_i (z*_i - v_i)). ``(B, m) -> (B,)``, maximised.

    The small ρ-weighted sum breaks the ties of plain Tchebycheff, so its maximisers are
    Pareto optimal rather than only weakly Pareto optimal, and every objective gets a gradient.
    """
    _check(values, preference=preference, ideal=ideal)
    gap = ideal - values  # (B, m)
    worst = (preference * gap).amax(dim=-1)  # (B,)
    return -(worst + rho * gap.sum(dim=-1))  # (B,)
