"""Which experts, and how much of each: SG-LoRA's weights over a bank of expert LoRAs for a new user.

    rows, weights = expert_weights(bank, query, k=4)      # bank (n, d) expert descriptions, query (d,) the user's

    top K experts by cosine similarity (``NeighborIndex``), then w = softmax(cos / τ) over those K

On unit vectors the inner product is the cosine. τ → 0 picks the single nearest expert; τ → ∞ mixes
the K nearest evenly. ``k`` beyond the bank uses every expert.
"""

from __future__ import annotations

import numpy as np

from parsona.errors import ConfigError
from parsona.persona.index import NeighborIndex

K = 4
TAU = 0.1


def expert_weights(bank, query, k: int = K, tau: float = TAU) -> tuple[np.ndarray, np.ndarray]:
    """(rows (k,) into ``bank``, weights (k,) summing to 1), the most similar expert first."""
    if not tau > 0:
        raise ConfigError("tau", "Use a positive temperature (0.1 favours the nearest experts).", problem=f"got {tau!r}")
    if k < 1:
        raise ConfigError("k", "Blend at least one expert.", problem=f"got {k!r}")
    index = NeighborIndex().fit(bank)                                           # ids are the row numbers
    ids, cos = index.kneighbors(np.asarray(query, dtype=np.float32)[None], k=k)  # (1, k) each, best first
    logits = cos[0].astype(np.float64) / tau
    if not np.isfinite(logits).all():
        raise ConfigError("tau", "Use a temperature that keeps cos / τ finite (e.g. 0.01 or more).", problem=f"got {tau!r}")
    w = np.exp(logits - logits.max())
    return ids[0].astype(int), w / w.sum()
