"""Which pairs and which preferences a step gets, as functions of (seed, step) alone.

Neither keeps RNG state: a run resumed at step s draws exactly what an uninterrupted run drew at s,
so a checkpoint needs no generator state. Both draw the step's global batch, the same on every
process; :func:`local_rows` is the contiguous share of it one process trains on.
"""

from __future__ import annotations

import random

import torch

from parsona.errors import ConfigError


def batches(n_pairs: int, pairs_per_step: int, seed: int, step: int) -> list[int]:
    """Pair indices for ``step`` (:func:`batch_rows` of them): epochs of a seeded permutation, so a
    resumed run sees the same data."""
    per_epoch = max(1, n_pairs // pairs_per_step)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(n_pairs))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[offset * pairs_per_step : (offset + 1) * pairs_per_step]


def batch_rows(n_pairs: int, pairs_per_step: int) -> int:
    """How many pairs :func:`batches` gives every step: ``pairs_per_step``, or all when there are fewer."""
    return min(n_pairs, pairs_per_step)


def local_rows(rows: int, process_index: int, num_processes: int) -> slice:
    """Process ``process_index``'s contiguous share of a global batch of ``rows``: rank r of W takes
    rows [r·rows/W, (r+1)·rows/W). Equal shares, so the mean of the per-process mean losses (what DDP's
    gradient average computes) is the global batch's mean; unequal ones would weight pairs unevenly."""
    if rows % num_processes:
        raise ConfigError("pairs_per_step", f"Use a multiple of the {num_processes} processes (the global batch is "
                          "split evenly across them), or launch a number of processes that divides it.",
                          problem=f"{rows} pairs per step over {num_processes} processes")
    share = rows // num_processes
    return slice(process_index * share, (process_index + 1) * share)


def step_preferences(rows: int, n_objectives: int, seed: int, step: int, dirichlet_alpha: float = 1.0,
                     vertex_prob: float = 0.2) -> torch.Tensor:
    """λ (rows, m) for ``step``: Dirichlet(``dirichlet_alpha``) draws, a row a vertex (one objective only)
    with probability ``vertex_prob`` (Panacea's extra mass on the vertices), from a generator seeded by
    (seed, step)."""
    from parsona.objectives import sample_simplex

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return sample_simplex(rows, n_objectives, alpha=dirichlet_alpha, vertex_prob=vertex_prob, generator=g)
