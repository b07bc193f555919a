"""SG-LoRA's expert weights: the top K by cosine, a softmax over them, the limits of τ."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.persona import expert_weights

BANK = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])


def test_the_top_k_by_cosine_weighted_by_a_softmax_over_tau():
    rows, w = expert_weights(BANK, [1.0, 0.0], k=2, tau=0.5)
    assert rows.tolist() == [0, 1]
    e = [math.exp(1.0 / 0.5), math.exp(0.8 / 0.5)]
    np.testing.assert_allclose(w, [e[0] / sum(e), e[1] / sum(e)])


def test_tau_limits_and_a_k_beyond_the_bank():
    assert expert_weights(BANK, [0.0, 1.0], k=3, tau=1e-4)[1].round(6).tolist() == [1.0, 0.0, 0.0]
    np.testing.assert_allclose(expert_weights(BANK, [0.0, 1.0], k=2, tau=1e6)[1], [0.5, 0.5], atol=1e-6)
    rows, w = expert_weights(BANK, [0.0, 1.0], k=10)
    assert sorted(rows.tolist()) == [0, 1, 2, 3] and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, field", [(dict(k=0), "k"), (dict(tau=0.0), "tau")])
def test_bad_arguments_are_named(kwargs, field):
    with pytest.raises(ConfigError) as err:
        expert_weights(BANK, [1.0, 0.0], **kwargs)
    assert err.value.field == field
