"""GroupPreferenceReward: a group's predicted preference among the responses to one prompt."""

from __future__ import annotations

import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.objectives import GroupPreferenceReward, Reward


def shares_by_length(prompt, responses):
    n = np.array([len(r) for r in responses], dtype=float)
    return n / n.sum()


def test_responses_to_one_prompt_are_ranked_by_the_groups_shares():
    reward = GroupPreferenceReward(shares_by_length)
    assert isinstance(reward, Reward)
    scores = reward.score(["p", "q", "p", "p"], ["aa", "only", "a", "aaa"])
    np.testing.assert_allclose(scores, [3 * 2 / 6, 1.0, 3 * 1 / 6, 3 * 3 / 6])   # K × share; a lone reply: 1


def test_bad_shares_and_mismatched_inputs_are_refused():
    with pytest.raises(ConfigError, match="^shares"):
        GroupPreferenceReward("not a function")
    with pytest.raises(ConfigError, match="^shares"):
        GroupPreferenceReward(lambda p, r: [0.5]).score(["p", "p"], ["a", "b"])
    with pytest.raises(ConfigError, match="^responses"):
        GroupPreferenceReward(shares_by_length).score(["p"], ["a", "b"])
