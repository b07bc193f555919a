"""Input-aware pooling against a softmax written out by hand, and its two limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.persona import UserProfile, input_aware_persona

H = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])     # unit rows


def test_weights_are_a_softmax_of_cosine_over_tau():
    q = np.array([1.0, 0.0])
    e = [math.exp(s / 0.5) for s in (1.0, 0.0, 0.6)]
    mix = sum(w * h for w, h in zip(e, H)) / sum(e)
    np.testing.assert_allclose(input_aware_persona(H, q, tau=0.5), mix / np.linalg.norm(mix), rtol=1e-6)


def test_a_large_tau_is_the_mean_persona_and_a_small_one_the_nearest_item():
    q = np.array([0.0, 1.0])
    np.testing.assert_allclose(input_aware_persona(H, q, tau=1e6), UserProfile.from_history("u", H).persona, atol=1e-5)
    np.testing.assert_allclose(input_aware_persona(H, q, tau=1e-3), H[1], atol=1e-6)
    assert input_aware_persona(H, np.stack([q, q]), tau=0.1).shape == (2, 2)


def test_bad_inputs_name_their_field():
    with pytest.raises(ConfigError) as err:
        input_aware_persona(H, np.ones(3))
    assert err.value.field == "query"
    with pytest.raises(ConfigError) as err:
        input_aware_persona(H, np.ones(2), tau=0)
    assert err.value.field == "tau"
