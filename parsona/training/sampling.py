"""Which pairs and which preferences a step gets, as functions of (seed, step) alone.

Neither keeps RNG state: a run resumed at step s draws exactly what an uninterrupted run drew at s,
so a checkpoint needs no generator state.
"""

from __future__ import annotations

import random

import torch


def batches(n_pairs: int, pairs_per_step: int, seed: int, step: int) -> list[int]:
    """Pair indices for ``step``: epochs of a seeded permutation, so a resumed run sees the same data."""
    per_epoch = max(1, n_pairs // pairs_per_step)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(n_pairs))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[offset * pairs_per_step : (offset + 1) * pairs_per_step]


def step_preferences(rows: int, n_objectives: int, seed: int, step: int, dirichlet_alpha: float = 1.0,
                     vertex_prob: float = 0.2) -> torch.Tensor:
    """λ (rows, m) for ``step``: Dirichlet(``dirichlet_alpha``) draws, a row a vertex (one objective only)
    with probability ``vertex_prob`` (Panacea's extra mass on the vertices), from a generator seeded by
    (seed, step)."""
    from parsona.objectives import sample_simplex

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return sample_simplex(rows, n_objectives, alpha=dirichlet_alpha, vertex_prob=vertex_prob, generator=g)
