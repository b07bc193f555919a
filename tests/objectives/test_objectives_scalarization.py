import pytest
import torch

from parsona.errors import ConfigError
from parsona.objectives import augmented_tchebycheff, linear, tchebycheff

VALUES = torch.tensor([[1.0, 3.0], [2.0, -1.0]], dtype=torch.float64)  # (B=2, m=2)
LAM = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
IDEAL = torch.tensor([4.0, 4.0], dtype=torch.float64)


def test_linear_hand_values():
    out = linear(VALUES, LAM)
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([0.25 * 1 + 0.75 * 3, 0.5 * 2 - 0.5 * 1])


def test_tchebycheff_hand_values():
    out = tchebycheff(VALUES, LAM, IDEAL)
    # row 0: gaps (3, 1) -> weighted (0.75, 0.75) -> -0.75; row 1: gaps (2, 5) -> (1, 2.5) -> -2.5
    assert out.tolist() == pytest.approx([-0.75, -2.5])


def test_augmented_tchebycheff_hand_values():
    out = augmented_tchebycheff(VALUES, LAM, IDEAL, rho=0.1)
    assert out.tolist() == pytest.approx([-(0.75 + 0.1 * 4), -(2.5 + 0.1 * 7)])


def test_preference_broadcasts_from_m():
    lam = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert torch.equal(linear(VALUES, lam), linear(VALUES, lam.expand(2, 2)))


def test_scalarizations_are_maximised_and_differentiable():
    v = VALUES.clone().requires_grad_(True)
    for fn in (lambda x: linear(x, LAM), lambda x: tchebycheff(x, LAM, IDEAL),
               lambda x: augmented_tchebycheff(x, LAM, IDEAL)):
        v.grad = None
        fn(v).sum().backward()
        assert (v.grad >= 0).all() and (v.grad > 0).any()  # more value never lowers the score


def test_tchebycheff_reaches_non_convex_front_point_linear_cannot():
    # (0.4, 0.4) is Pareto optimal but in a concave dent: every linear weighting prefers a corner.
    front = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]])
    lam = torch.tensor([0.5, 0.5])
    assert linear(front, lam).argmax() != 2
    assert tchebycheff(front, lam, torch.ones(2)).argmax() == 2


@pytest.mark.parametrize("values, lam, ideal, field", [
    (torch.ones(3, 2), torch.full((2, 2), 0.5), torch.ones(2), "preference"),
    (torch.ones(3, 2), torch.full((3, 3), 1 / 3), torch.ones(2), "preference"),
    (torch.ones(3, 2), torch.full((3, 2), 0.5), torch.ones(3), "ideal"),
    (torch.ones(3), torch.full((3,), 1 / 3), torch.ones(3), "values"),
    (torch.ones(3, 1), torch.ones(3, 1), torch.ones(1), "values"),  # m = 1
    (torch.tensor([[1.0, float("nan")]]), torch.full((1, 2), 0.5), torch.ones(2), "values"),
])
def test_bad_shapes_and_nan_raise_config_error(values, lam, ideal, field):
    for fn in (tchebycheff, augmented_tchebycheff):
        with pytest.raises(ConfigError) as err:
            fn(values, lam, ideal)
        assert err.value.field == field
    if field != "ideal":
        with pytest.raises(ConfigError):
            linear(values, lam)
