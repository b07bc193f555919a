"""UserProfile: the persona is the normalised mean of the history; no history is its own state."""

from __future__ import annotations

import numpy as np

from parsona.persona import UserProfile


def test_the_persona_is_the_normalised_mean_of_unit_history_rows():
    X = np.array([[3.0, 0.0], [0.0, 2.0]])                          # unit rows: (1, 0), (0, 1)
    profile = UserProfile.from_history("alice", X, updated_at=5.0)
    np.testing.assert_allclose(profile.persona, [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    assert profile.summary() == {"history_count": 2, "persona": True, "persona_dim": 2, "updated_at": 5.0}


def test_a_user_without_history_has_no_persona():
    profile = UserProfile.from_history("bob", np.zeros((0, 384)))
    assert profile.persona is None and profile.summary() == {"history_count": 0, "persona": False,
                                                             "persona_dim": None, "updated_at": None}
