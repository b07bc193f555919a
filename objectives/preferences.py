"""Preference vectors λ on the probability simplex: validation, sampling and grids.

A preference λ weighs the m objectives: λ_i ≥ 0 and Σ_i λ_i = 1 (m ≥ 2). One preference is a
:class:`PreferenceVector`; a batch is a ``(B, m)`` tensor checked by :func:`validate_preferences`.
An off-simplex vector is an error, never silently renormalised (DESIGN.md §7).

* :func:`sample_simplex`: Dirichlet(α) rows, optionally replaced by one-hot vertices, as Panacea
  (arXiv 2402.02030) oversamples the extreme points while training.
* :func:`simplex_grid`: the Das–Dennis lattice from pymoo, for evaluation sweeps.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from parsona.errors import ConfigError
from parsona.simplex import SIMPLEX_ATOL, check_preference  # noqa: F401  (the one check and tolerance, shared with the adapters)


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


class PreferenceVector:
    """One validated preference λ ∈ Δ^{m-1}, stored as an immutable float tuple.

    ``PreferenceVector([0.7, 0.3])``; ``n_objectives`` (optional) is the length it must have.
    Raises :class:`ConfigError` (field ``preference``) for the wrong length, m < 2, NaN/inf,
    negative entries or a sum off 1 by more than ``SIMPLEX_ATOL`` (1e-6).
    """

    __slots__ = ("values",)

    def __init__(self, values, n_objectives: int | None = None):
        lam = check_preference(torch.from_numpy(np.ascontiguousarray(_to_numpy(values))), n_objectives)   # (m,) float64
        self.values: tuple[float, ...] = tuple(float(v) for v in lam)

    @classmethod
    def from_any(cls, values, n_objectives: int | None = None) -> "PreferenceVector":
        """Build from a list, tuple, numpy array, torch tensor or another PreferenceVector."""
        if isinstance(values, PreferenceVector):
            values = values.values
        return cls(values, n_objectives=n_objectives)

    @property
    def m(self) -> int:
        return len(self.values)

    def as_tensor(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        return torch.tensor(self.values, dtype=dtype, device=device)  # (m,)

    def as_numpy(self) -> np.ndarray:
        return np.asarray(self.values, dtype=np.float64)  # (m,)

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[float]:
        return iter(self.values)

    def __eq__(self, other) -> bool:
        return isinstance(other, PreferenceVector) and self.values == other.values

    def __hash__(self) -> int:
        return hash(self.values)

    def __repr__(self) -> str:
        return f"PreferenceVector({list(self.values)})"


def validate_preferences(preference, n_objectives: int) -> torch.Tensor:
    """Check a batch of preferences ``(B, m)`` and return it as a floating tensor.

    Used by adapters and the host on every request. Errors (field ``preference``) name the bad
    row: wrong ndim, wrong m, NaN/inf, negative weights, or a row sum off 1 by more than 1e-6.
    Integer/numpy input becomes float32; floating tensors keep their dtype and device.
    """
    if n_objectives < 2:
        raise ConfigError("n_objectives", "set n_objectives >= 2", f"got {n_objectives}")
    if not isinstance(preference, torch.Tensor):
        preference = torch.as_tensor(np.asarray(preference, dtype=np.float32))
    return check_preference(preference, n_objectives, batched=True)

def sample_simplex(n: int, m: int, alpha: float = 1.0, vertex_prob: float = 0.0,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample ``n`` preferences ``(n, m)`` float32: Dirichlet(α·1) rows, each replaced with
    probability ``vertex_prob`` by a uniformly chosen one-hot vertex (Panacea, arXiv 2402.02030,
    oversamples the extreme points so single-objective behaviour is learned too).

    α = 1 is uniform on the simplex; α < 1 pushes mass to the edges, α > 1 to the centre.
    ``generator`` (a seeded CPU ``torch.Generator``) makes the draw reproducible; without one the
    global torch RNG is used, so ``torch.manual_seed`` controls it. The result is on the CPU.
    """
    if n < 1 or m < 2:
        raise ConfigError("n_objectives", "ask for n >= 1 rows and m >= 2 objectives", f"got n={n}, m={m}")
    if not alpha > 0:
        raise ConfigError("alpha", "use a Dirichlet concentration alpha > 0", f"got {alpha}")
    if not 0.0 <= vertex_prob <= 1.0:
        raise ConfigError("vertex_prob", "use a probability in [0, 1]", f"got {vertex_prob}")
    # torch's Dirichlet cannot take a Generator, so the torch generator seeds a numpy one:
    # one stream of randomness, reproducible from a single torch seed.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    lam = torch.from_numpy(rng.dirichlet(np.full(m, alpha), size=n)).float()  # (n, m)
    lam = lam / lam.sum(dim=1, keepdim=True)  # renormalise after the float32 cast
    is_vertex = torch.rand(n, generator=generator) < vertex_prob  # (n,)
    corner = torch.randint(0, m, (n,), generator=generator)  # (n,)
    vertices = torch.nn.functional.one_hot(corner, m).float()  # (n, m)
    return torch.where(is_vertex[:, None], vertices, lam)  # (n, m)


def simplex_grid(m: int, n_partitions: int) -> np.ndarray:
    """The Das–Dennis lattice on the simplex: all λ with entries in {0, 1/p, ..., 1}, p = n_partitions.

    Returns ``(C(m+p-1, p), m)`` float64 rows from pymoo's
    ``get_reference_directions("das-dennis", m, n_partitions=p)``, snapped to exact multiples of
    1/p and sorted lexicographically ascending by (λ_1, λ_2, ...). For m = 2 the order therefore
    runs from (0, 1) to (1, 0).
    """
    from pymoo.util.ref_dirs import get_reference_directions  # pymoo import is slowish; only here

    if m < 2:
        raise ConfigError("n_objectives", "use m >= 2 objectives", f"got m={m}")
    if n_partitions < 1:
        raise ConfigError("n_partitions", "use n_partitions >= 1", f"got {n_partitions}")
    grid = get_reference_directions("das-dennis", m, n_partitions=n_partitions)  # (n, m)
    grid = np.round(grid * n_partitions) / n_partitions  # exact lattice, no 0.30000000000000004
    order = np.lexsort(grid.T[::-1])  # lexsort keys: last key is primary, so reverse the columns
    return grid[order]
