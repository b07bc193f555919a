import math

import numpy as np
import pytest
import torch

from parsona.errors import ConfigError
from parsona.objectives import PreferenceVector, sample_simplex, simplex_grid, validate_preferences


# --- PreferenceVector -------------------------------------------------------------------------

def test_preference_vector_holds_values_and_converts():
    p = PreferenceVector([0.7, 0.3], n_objectives=2)
    assert p.m == 2 and len(p) == 2
    assert list(p) == [0.7, 0.3]
    t = p.as_tensor()
    assert t.dtype == torch.float32 and t.shape == (2,)
    assert torch.allclose(t, torch.tensor([0.7, 0.3]))


@pytest.mark.parametrize("raw", [[0.25, 0.75], (0.25, 0.75), np.array([0.25, 0.75]),
                                 torch.tensor([0.25, 0.75], dtype=torch.float64)])
def test_from_any_accepts_list_tuple_numpy_torch(raw):
    p = PreferenceVector.from_any(raw)
    assert p.values == (0.25, 0.75)
    assert PreferenceVector.from_any(p, n_objectives=2) == p


@pytest.mark.parametrize("raw, expected_m, problem", [
    ([0.5, 0.5], 3, "objectives"),          # wrong length
    ([1.0], None, "1 weight"),              # m = 1
    ([1.2, -0.2], None, "negative"),
    ([0.5, 0.6], None, "sums to"),
    ([float("nan"), 1.0], None, "non-finite"),
    ([float("inf"), 0.0], None, "non-finite"),
    ([[0.5, 0.5]], None, "1-D"),
])
def test_preference_vector_rejects_bad_input(raw, expected_m, problem):
    with pytest.raises(ConfigError) as err:
        PreferenceVector(raw, n_objectives=expected_m)
    assert err.value.field == "preference"
    assert problem in str(err.value)
    assert err.value.fix  # says how to fix it


def test_one_sum_tolerance_everywhere_1e5_on_the_values_as_given():
    from parsona.simplex import check_preference

    PreferenceVector([0.33333, 0.33333, 0.33334])                 # 5 decimals pass
    PreferenceVector([0.5, 0.5 + 9e-6])
    with pytest.raises(ConfigError):
        PreferenceVector([0.5, 0.5 + 2e-5])
    # a batch, a single vector and a list are judged alike (a list is not rounded to float32 first)
    check_preference([[0.5, 0.5 + 9e-6]], batched=True)
    with pytest.raises(ConfigError):
        check_preference([[0.5, 0.5 + 2e-5]], batched=True)
    with pytest.raises(ConfigError):
        validate_preferences([[0.5, 0.5 + 2e-5]], 2)
    assert PreferenceVector(np.array([0.75, 0.25])[::-1]).values == (0.25, 0.75)   # a strided view


# --- validate_preferences --------------------------------------------------------------------

def test_validate_preferences_passes_good_batch_through():
    lam = torch.tensor([[0.2, 0.8], [1.0, 0.0]], dtype=torch.float64)
    out = validate_preferences(lam, 2)
    assert out is lam  # floating tensors keep dtype and identity
    out = validate_preferences([[0, 1], [1, 0]], 2)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("lam, problem", [
    (torch.tensor([0.5, 0.5]), "2 dimensions"),
    (torch.tensor([[0.2, 0.3, 0.5]]), "3 weights"),
    (torch.tensor([[0.5, 0.5], [1.2, -0.2]]), "row 1"),
    (torch.tensor([[0.5, 0.5], [0.5, 0.5], [float("nan"), 0.5]]), "row 2"),
    (torch.tensor([[0.5, 0.5], [0.5, 0.6]]), "row 1 sums to"),
])
def test_validate_preferences_errors_name_the_problem(lam, problem):
    with pytest.raises(ConfigError) as err:
        validate_preferences(lam, 2)
    assert err.value.field == "preference"
    assert problem in str(err.value)


def test_validate_preferences_float32_rounding_is_accepted():
    lam = torch.full((4, 7), 1 / 7, dtype=torch.float32)  # float32 sums miss 1 by ~1e-7
    validate_preferences(lam, 7)
    with pytest.raises(ConfigError):
        validate_preferences(lam + 1e-5, 7)  # off by 7e-5 in total


# --- sample_simplex --------------------------------------------------------------------------

def test_sample_simplex_rows_on_simplex():
    lam = sample_simplex(500, 4, alpha=0.5, vertex_prob=0.2, generator=torch.Generator().manual_seed(0))
    assert lam.shape == (500, 4) and lam.dtype == torch.float32
    assert (lam >= 0).all()
    assert torch.allclose(lam.sum(1), torch.ones(500), atol=1e-6)
    validate_preferences(lam, 4)


def test_sample_simplex_reproducible_with_seeded_generator():
    a = sample_simplex(64, 3, alpha=2.0, vertex_prob=0.3, generator=torch.Generator().manual_seed(7))
    b = sample_simplex(64, 3, alpha=2.0, vertex_prob=0.3, generator=torch.Generator().manual_seed(7))
    c = sample_simplex(64, 3, alpha=2.0, vertex_prob=0.3, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_simplex_vertex_prob():
    g = torch.Generator().manual_seed(1)
    lam = sample_simplex(300, 3, vertex_prob=1.0, generator=g)
    assert ((lam == 0) | (lam == 1)).all() and (lam.sum(1) == 1).all()
    assert set(lam.argmax(1).tolist()) == {0, 1, 2}  # every vertex drawn
    lam = sample_simplex(300, 3, vertex_prob=0.0, generator=g)
    assert not (lam == 1).any()  # Dirichlet(1) never lands exactly on a vertex


@pytest.mark.parametrize("kwargs", [dict(n=4, m=1), dict(n=4, m=2, alpha=0.0),
                                    dict(n=4, m=2, vertex_prob=1.5)])
def test_sample_simplex_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        sample_simplex(**kwargs)


# --- simplex_grid ----------------------------------------------------------------------------

def test_simplex_grid_m2():
    grid = simplex_grid(2, 10)
    assert grid.shape == (11, 2)
    np.testing.assert_allclose(grid.sum(1), 1.0, atol=1e-12)
    assert (grid >= 0).all()
    np.testing.assert_array_equal(grid[0], [0.0, 1.0])  # documented order: (0,1) -> (1,0)
    np.testing.assert_array_equal(grid[-1], [1.0, 0.0])
    np.testing.assert_allclose(grid[:, 0], np.arange(11) / 10)


def test_simplex_grid_m3_counts_and_sorted():
    grid = simplex_grid(3, 4)
    assert grid.shape == (math.comb(3 + 4 - 1, 4), 3)  # 15
    assert len({tuple(r) for r in grid}) == 15
    assert [tuple(r) for r in grid] == sorted(tuple(r) for r in grid)
    np.testing.assert_allclose(grid * 4, np.round(grid * 4))  # exact lattice
