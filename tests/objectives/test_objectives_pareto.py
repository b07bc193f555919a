"""Pareto indicators. Reference values are published minimisation numbers (moocore's docs and
dataset); each test negates them ONCE, here, and calls Parsona's maximising functions."""

import math

import moocore
import numpy as np
import pytest
import torch

from parsona.errors import ConfigError
from parsona.objectives import (
    expected_utility,
    hypervolume,
    hypervolume_info,
    igd_plus,
    inner_product,
    non_dominated,
    spacing,
    sparsity,
)


# --- hypervolume ------------------------------------------------------------------------------

@pytest.mark.parametrize("set_id, expected", [(1, 90.46272765), (2, 53.969708954)])
def test_hypervolume_moocore_input1(set_id, expected):
    data = moocore.get_dataset("input1.dat")  # columns: f1, f2, set number
    minimised = data[data[:, -1] == set_id, :-1]
    value, method = hypervolume_info(-minimised, reference_point=-np.array([10.0, 10.0]))
    assert method == "exact"
    assert value == pytest.approx(expected, abs=1e-8)


def test_hypervolume_3d():
    minimised = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert hypervolume(-minimised, -np.array([2.0, 2.0, 2.0])) == pytest.approx(5.0, abs=1e-12)


def test_hypervolume_reference_policy_non_dominating_points_contribute_zero():
    front = np.array([[3.0, 1.0], [1.0, 3.0]])
    base = hypervolume(front, [0.0, 0.0])
    assert base == pytest.approx(3 + 3 - 1)
    # a point below the reference on one objective adds nothing, and raises nothing
    assert hypervolume(np.vstack([front, [[10.0, -1.0]]]), [0.0, 0.0]) == pytest.approx(base)
    assert hypervolume(np.vstack([front, [[10.0, 0.0]]]), [0.0, 0.0]) == pytest.approx(base)  # on the boundary
    assert hypervolume([[-1.0, -1.0]], [0.0, 0.0]) == 0.0


def test_hypervolume_exact_up_to_5_then_approximate():
    box5 = hypervolume_info(np.full((1, 5), 0.5), np.zeros(5))
    assert box5 == (pytest.approx(0.5 ** 5, abs=1e-15), "exact")
    value, method = hypervolume_info(np.full((1, 6), 0.5), np.zeros(6))
    assert method.startswith("approx")
    assert value == pytest.approx(0.5 ** 6, rel=1e-3)
    assert hypervolume(np.full((1, 6), 0.5), np.zeros(6)) == value  # deterministic


def test_hypervolume_accepts_torch():
    pts = torch.tensor([[3.0, 1.0], [1.0, 3.0]], requires_grad=True)
    assert hypervolume(pts, torch.zeros(2)) == pytest.approx(5.0)


# --- IGD+ -------------------------------------------------------------------------------------

# Ishibuchi et al. 2015, example 4 (minimisation), as in moocore's docs
REF_FRONT = np.array([[10, 0], [6, 1], [2, 2], [1, 6], [0, 10]], dtype=float)
SET_A = np.array([[4, 2], [3, 3], [2, 4]], dtype=float)
SET_B = np.array([[8, 2], [4, 4], [2, 8]], dtype=float)


def test_igd_plus_ishibuchi_example():
    igd_a = igd_plus(-SET_A, reference_front=-REF_FRONT)
    igd_b = igd_plus(-SET_B, reference_front=-REF_FRONT)
    assert igd_a == pytest.approx(1.482842712474619, abs=1e-12)
    assert igd_b == pytest.approx(2.260112615949154, abs=1e-12)
    assert igd_a < igd_b  # A dominates B; IGD+ (unlike IGD) agrees


# --- non_dominated ----------------------------------------------------------------------------

def test_non_dominated_maximisation():
    pts = np.array([[1.0, 1.0], [3.0, 1.0], [2.0, 2.0], [1.0, 3.0], [2.0, 2.0], [0.0, 0.5]])
    # (1,1) and (0,0.5) are dominated; the duplicate (2,2) is kept
    assert non_dominated(pts).tolist() == [1, 2, 3, 4]
    assert non_dominated(-pts).tolist() == [5]  # read as minimisation, (0, 0.5) beats all


# --- preference-based: EU, inner product ------------------------------------------------------

def test_expected_utility_hand_value():
    pts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.6]])
    lam = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    # λ=(1,0): max(1, 0, .6) = 1; λ=(.5,.5): max(.5, .5, .6) = .6; λ=(0,1): 1
    assert expected_utility(pts, lam) == pytest.approx((1 + 0.6 + 1) / 3)


def test_inner_product_hand_value():
    lam = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    f = np.array([[0.9, 0.1], [0.5, 0.4], [0.2, 0.8]])  # f_k: what the model did for λ_k
    assert inner_product(f, lam) == pytest.approx((0.9 + 0.45 + 0.8) / 3)
    # following the preference scores higher than ignoring it
    assert inner_product(f, lam) > inner_product(f[::-1], lam)


# --- spread: sparsity, spacing ----------------------------------------------------------------

def test_sparsity_hand_value():
    pts = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2]])
    # sorted f1: 0, .5, 1 -> gaps .5, .5 ; sorted f2: 0, .2, 1 -> gaps .2, .8
    expected = (0.25 + 0.25 + 0.04 + 0.64) / (3 - 1)
    assert sparsity(pts) == pytest.approx(expected)
    assert sparsity([[1.0, 2.0]]) == 0.0


def test_spacing_hand_value():
    pts = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.2]])
    # nearest L1 neighbours: 1.3, 0.7, 0.7 ; mean 0.9
    d = [1.3, 0.7, 0.7]
    expected = math.sqrt(sum((x - 0.9) ** 2 for x in d) / 3)
    assert spacing(pts) == pytest.approx(expected)
    assert spacing(np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]])) == pytest.approx(0.0)  # even


# --- bad input --------------------------------------------------------------------------------

GOOD = np.array([[1.0, 2.0], [2.0, 1.0]])
LAM = np.array([[0.5, 0.5], [1.0, 0.0]])

INDICATORS = {
    "hypervolume": lambda p: hypervolume(p, np.zeros(np.shape(p)[-1] if np.ndim(p) == 2 else 2)),
    "igd_plus": lambda p: igd_plus(p, GOOD),
    "expected_utility": lambda p: expected_utility(p, LAM),
    "inner_product": lambda p: inner_product(p, LAM),
    "non_dominated": non_dominated,
    "sparsity": sparsity,
    "spacing": spacing,
}


@pytest.mark.parametrize("name", INDICATORS)
@pytest.mark.parametrize("bad, problem", [
    (np.zeros((0, 2)), "empty"),
    (np.array([[1.0], [2.0]]), "objective(s)"),  # m = 1
    (np.array([[1.0, np.nan], [2.0, 1.0]]), "non-finite"),
    (np.array([1.0, 2.0]), "2 dimensions"),
])
def test_bad_points_raise_config_error(name, bad, problem):
    with pytest.raises(ConfigError) as err:
        INDICATORS[name](bad)
    assert err.value.field == "points"
    assert problem in str(err.value)


@pytest.mark.parametrize("call, field", [
    (lambda: hypervolume(GOOD, [0.0, 0.0, 0.0]), "reference_point"),
    (lambda: hypervolume(GOOD, [0.0, np.nan]), "reference_point"),
    (lambda: igd_plus(GOOD, np.zeros((3, 3))), "reference_front"),
    (lambda: igd_plus(GOOD, np.zeros((0, 2))), "reference_front"),
    (lambda: expected_utility(GOOD, [[0.2, 0.3, 0.5]]), "preference"),
    (lambda: expected_utility(GOOD, [[0.2, 0.3]]), "preference"),  # off the simplex
    (lambda: inner_product(GOOD, [[0.5, 0.5]]), "preference"),  # not row-aligned
])
def test_mismatched_inputs_raise_config_error(call, field):
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.field == field
