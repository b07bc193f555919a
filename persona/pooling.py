"""Persona-Plug's input-aware pooling: which of a user's history items matter for this input.

    persona = input_aware_persona(H, q)          # H (n, d) the user's history embeddings, q (d,) the input's

    w = softmax(H q / τ)                          (n,)  attention of the input over the history
    persona = normalise(Σ_i w_i H_i)              (d,)

On unit vectors H q is the cosine similarity; τ → ∞ gives the plain mean (``UserProfile.persona``),
τ → 0 the single most similar item. Rows of a (q, d) query give one persona each.
"""

from __future__ import annotations

import numpy as np

from parsona.errors import ConfigError
from parsona.persona.index import unit_rows

TAU = 0.1


def input_aware_persona(history, query, tau: float = TAU) -> np.ndarray:
    """(d,) for a (d,) query, (q, d) for a (q, d) one; float32 unit rows."""
    if not tau > 0:
        raise ConfigError("tau", "Use a positive temperature (0.1 weighs similar items most).", problem=f"got {tau!r}")
    H = unit_rows(history, "history")                                           # (n, d)
    single = np.ndim(query) == 1
    Q = unit_rows(query, "query", H.shape[1])                                   # (q, d)
    logits = Q @ H.T / tau                                                       # (q, n)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)                                            # (q, n) softmax over the history
    P = unit_rows(w @ H, "history")                                              # (q, d)
    return P[0] if single else P
