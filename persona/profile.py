"""What Parsona knows about one user, as a value: no I/O (the host's store reads and writes it).

    profile = UserProfile.from_history("alice", X, updated_at=time.time())   # X (n, d) history embeddings
    profile.summary()     # {"history_count": n, "persona": True, "persona_dim": d, "updated_at": ...}

``persona`` is the input-free persona: the normalised mean of the history embeddings (the input-aware
pooling of Persona-Plug weighs the same rows per request). A user with no history has
``history_count == 0`` and ``persona is None``: a documented state, never a zero vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parsona.errors import ConfigError
from parsona.persona.index import unit_rows


@dataclass(frozen=True, eq=False)   # eq=False: an ndarray field has no single truth value to compare by
class UserProfile:
    user_id: str
    history_count: int = 0
    persona: np.ndarray | None = None          # (d,) float32 unit vector, None without history
    updated_at: float | None = None            # seconds since the epoch, of the newest history item

    @classmethod
    def from_history(cls, user_id: str, embeddings, updated_at: float | None = None) -> "UserProfile":
        """The profile of a user whose history items embed to ``embeddings`` (n, d); n may be 0."""
        X = np.asarray(embeddings, dtype=np.float32)
        if X.size == 0:
            return cls(user_id, 0, None, updated_at)
        X = unit_rows(X, "embeddings")                                           # (n, d)
        mean = X.mean(0)                                                          # (d,)
        if not np.linalg.norm(mean) > 1e-6:
            raise ConfigError("embeddings", "The history's embeddings cancel out: no direction to call a persona.",
                              problem=f"{len(X)} items whose mean is ~0")
        persona = unit_rows(mean, "embeddings")[0]
        persona.setflags(write=False)                                            # a value: nobody edits it in place
        return cls(user_id, len(X), persona, updated_at)

    def summary(self) -> dict:
        """What the user may see about themselves (never the vector itself: it is derived data)."""
        return {"history_count": self.history_count, "persona": self.persona is not None,
                "persona_dim": None if self.persona is None else int(self.persona.shape[0]),
                "updated_at": self.updated_at}
