"""Each loss against its paper's formula, evaluated by hand with `math`, plus the property its
paper claims. Expected numbers never come from the implementation."""

import math

import pytest
import torch

from parsona.errors import ConfigError
from parsona.objectives import (
    beta_dpo,
    beta_dpo_beta,
    cpo_loss,
    dpo_loss,
    hinge_loss,
    implicit_reward,
    ipo_loss,
    margin_dpo_loss,
    orpo_loss,
    repo_loss,
    simpo_loss,
)


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


# The acceptance example: β=0.1, π_c=-1, π_r=-3, ref_c=-1.2, ref_r=-2.8 -> h = 2 - 1.6 = 0.4
PC, PR, RC, RR = t(-1.0), t(-3.0), t(-1.2), t(-2.8)
H = 0.4


# --- DPO ---------------------------------------------------------------------------------------

def test_dpo_closed_form_and_gradient():
    pc = PC.clone().requires_grad_(True)
    loss = dpo_loss(pc, PR, RC, RR, beta=0.1)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.6733471672, abs=1e-10)
    assert loss.item() == pytest.approx(-log_sigmoid(0.1 * H), abs=1e-12)
    loss.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.0490001333, abs=1e-10)


def test_dpo_policy_equal_reference_is_ln2():
    logps = t(-5.0, -2.5, -7.25)
    assert torch.allclose(dpo_loss(logps, logps - 1, logps, logps - 1), torch.full((3,), math.log(2), dtype=torch.float64),
                          atol=0, rtol=1e-15)


def test_dpo_larger_margin_lower_loss():
    losses = dpo_loss(t(-1.0, -0.5, 0.0), t(-3.0, -3.0, -3.0), t(-1.0, -1.0, -1.0), t(-3.0, -3.0, -3.0))
    assert losses[0] > losses[1] > losses[2]


def test_label_smoothing_zero_is_dpo_and_matches_cdpo_formula():
    assert torch.equal(dpo_loss(PC, PR, RC, RR, label_smoothing=0.0), dpo_loss(PC, PR, RC, RR))
    eps, x = 0.1, 0.1 * H
    expected = -(1 - eps) * log_sigmoid(x) - eps * log_sigmoid(-x)
    assert dpo_loss(PC, PR, RC, RR, label_smoothing=eps).item() == pytest.approx(expected, abs=1e-12)


def test_implicit_reward():
    assert implicit_reward(t(-1.0), t(-1.2), beta=0.1).item() == pytest.approx(0.1 * 0.2, abs=1e-12)


# --- IPO, hinge ---------------------------------------------------------------------------------

def test_ipo_hand_value_and_minimum_at_half_over_beta():
    assert ipo_loss(PC, PR, RC, RR, beta=0.1).item() == pytest.approx((H - 5.0) ** 2, abs=1e-12)
    beta = 0.25
    h = torch.linspace(-2, 6, 801, dtype=torch.float64)  # step 0.01, includes 1/(2β) = 2
    losses = ipo_loss(h, torch.zeros_like(h), torch.zeros_like(h), torch.zeros_like(h), beta=beta)
    assert h[losses.argmin()].item() == pytest.approx(1 / (2 * beta))
    assert losses.min().item() == pytest.approx(0.0, abs=1e-20)


def test_hinge_hand_value_and_zero_past_margin():
    assert hinge_loss(PC, PR, RC, RR, beta=0.1).item() == pytest.approx(1 - 0.1 * H, abs=1e-12)
    pc = t(20.0, 30.0).requires_grad_(True)  # β h = 2, 3 >= 1: margin met
    loss = hinge_loss(pc, t(0.0, 0.0), t(0.0, 0.0), t(0.0, 0.0), beta=0.1)
    assert loss.tolist() == [0.0, 0.0]
    loss.sum().backward()
    assert pc.grad.abs().sum() == 0


# --- reference-free: ORPO, CPO, SimPO, RePO ---------------------------------------------------

def test_orpo_hand_value_and_needs_no_reference():
    pc, pr = -0.5, -1.5  # average per-token log-probs
    pw, pl = math.exp(pc), math.exp(pr)
    log_odds_ratio = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
    expected = -pc - 0.1 * log_sigmoid(log_odds_ratio)
    got = orpo_loss(t(pc), t(pr), None, None, beta=0.1)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # a reference, if passed, changes nothing
    assert torch.equal(orpo_loss(t(pc), t(pr), t(-9.0), t(-0.1), beta=0.1), got)
    # chosen_nll replaces the default -π_w
    assert orpo_loss(t(pc), t(pr), beta=0.1, chosen_nll=t(2.0)).item() == pytest.approx(
        expected + pc + 2.0, abs=1e-12)


def test_orpo_rejects_non_negative_logps():
    with pytest.raises(ConfigError) as err:
        orpo_loss(t(-0.5), t(0.0))
    assert err.value.field == "policy_rejected_logps"


def test_cpo_hand_value_reference_free():
    pc, pr = -10.0, -14.0
    expected = -log_sigmoid(0.1 * (pc - pr)) + 1.0 * (-pc)
    assert cpo_loss(t(pc), t(pr), None, None, beta=0.1).item() == pytest.approx(expected, abs=1e-12)
    expected = -log_sigmoid(0.1 * (pc - pr)) + 0.5 * 1.25
    assert cpo_loss(t(pc), t(pr), beta=0.1, alpha=0.5, chosen_nll=t(1.25)).item() == pytest.approx(
        expected, abs=1e-12)


def test_simpo_hand_value_and_margin_raises_loss():
    pc, pr = -0.8, -1.3  # average per-token log-probs
    expected = -log_sigmoid(2.0 * (pc - pr) - 0.5)
    assert simpo_loss(t(pc), t(pr), None, None, beta=2.0, gamma=0.5).item() == pytest.approx(expected, abs=1e-12)
    assert simpo_loss(t(pc), t(pr), gamma=1.0) > simpo_loss(t(pc), t(pr), gamma=0.0)


def test_repo_hand_value_zero_past_margin():
    pc = t(-1.0, -1.0, -1.0).requires_grad_(True)
    pr = t(-1.3, -1.5, -1.9)  # margins 0.3, 0.5, 0.9 against γ = 0.5
    loss = repo_loss(pc, pr, None, None, gamma=0.5)
    assert loss.tolist() == pytest.approx([0.2, 0.0, 0.0], abs=1e-12)
    loss.sum().backward()
    assert pc.grad.tolist() == [-1.0, 0.0, 0.0]  # pairs past the margin are filtered out


def test_repo_is_simpo_limit_beta_to_infinity():
    pc, pr = t(-1.0, -1.0, -1.0), t(-1.3, -1.5, -1.9)
    gamma, beta = 0.5, 1e4
    limit = simpo_loss(pc, pr, beta=beta, gamma=beta * gamma) / beta
    assert torch.allclose(limit, repo_loss(pc, pr, gamma=gamma), atol=1e-4)


# --- β-DPO, margin DPO ----------------------------------------------------------------------

def test_beta_dpo_hand_value():
    pc, pr = t(-1.0, -2.0), t(-3.0, -2.5)
    rc, rr = t(-1.2, -2.0), t(-2.8, -2.0)
    h = [0.4, 0.5]  # (π_w - π_l) - (ref_w - ref_l)
    m0, beta, alpha = 0.2, 0.1, 0.6
    beta_b = beta * (1 + alpha * ((h[0] + h[1]) / 2 - m0))
    expected = [-log_sigmoid(beta_b * x) for x in h]
    got = beta_dpo(pc, pr, rc, rr, beta=beta, alpha=alpha, margin_threshold=m0)
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert beta_dpo_beta(t(*h), beta=beta, alpha=alpha, margin_threshold=m0).item() == pytest.approx(beta_b)


def test_beta_dpo_adapts_beta_and_reduces_to_dpo():
    # easy batches (large margins) get a larger β than hard ones
    assert beta_dpo_beta(t(3.0, 4.0)) > beta_dpo_beta(t(0.0, 0.1)) > beta_dpo_beta(t(-1.0, -2.0))
    assert beta_dpo_beta(t(-1e6)).item() == pytest.approx(1e-3)  # floored, never negative
    # margins at the threshold, or α = 0: plain DPO
    assert torch.allclose(beta_dpo(PC, PR, RC, RR, margin_threshold=H), dpo_loss(PC, PR, RC, RR))
    assert torch.allclose(beta_dpo(PC, PR, RC, RR, alpha=0.0, margin_threshold=5.0), dpo_loss(PC, PR, RC, RR))


def test_beta_dpo_no_gradient_through_beta():
    pc = PC.clone().requires_grad_(True)
    beta_b = 0.1 * (1 + 0.6 * (H - 0.0))
    beta_dpo(pc, PR, RC, RR).sum().backward()
    # d/dπ_w of -log σ(β_b h) with β_b constant: -β_b σ(-β_b h)
    assert pc.grad.item() == pytest.approx(-beta_b / (1 + math.exp(beta_b * H)), abs=1e-12)


def test_margin_dpo_hand_value_and_zero_margin_is_dpo():
    expected = -log_sigmoid(0.1 * H - 0.5)
    assert margin_dpo_loss(PC, PR, RC, RR, beta=0.1, margin=0.5).item() == pytest.approx(expected, abs=1e-12)
    assert torch.equal(margin_dpo_loss(PC, PR, RC, RR), dpo_loss(PC, PR, RC, RR))
    per_pair = margin_dpo_loss(torch.cat([PC, PC]), torch.cat([PR, PR]), torch.cat([RC, RC]),
                               torch.cat([RR, RR]), margin=t(0.0, 1.0))
    assert per_pair[1] > per_pair[0]  # a wider reward-model gap demands more separation


# --- shared signature and errors --------------------------------------------------------------

ALL = [dpo_loss, ipo_loss, hinge_loss, orpo_loss, cpo_loss, simpo_loss, repo_loss, beta_dpo, margin_dpo_loss]
REFERENCE_FREE = [orpo_loss, cpo_loss, simpo_loss, repo_loss]


@pytest.mark.parametrize("loss_fn", ALL)
def test_one_signature_per_example_losses(loss_fn):
    pc, pr = t(-0.5, -0.7, -0.2), t(-0.9, -0.6, -1.5)
    rc, rr = t(-0.6, -0.7, -0.3), t(-0.8, -0.8, -1.4)
    losses = loss_fn(pc, pr, rc, rr)
    assert losses.shape == (3,) and torch.isfinite(losses).all()


@pytest.mark.parametrize("loss_fn", REFERENCE_FREE)
def test_reference_free_losses_accept_none(loss_fn):
    assert loss_fn(t(-0.5, -0.7), t(-0.9, -0.6), None, None).shape == (2,)


@pytest.mark.parametrize("loss_fn", [dpo_loss, ipo_loss, hinge_loss, beta_dpo, margin_dpo_loss])
def test_reference_losses_reject_missing_reference(loss_fn):
    with pytest.raises(ConfigError) as err:
        loss_fn(t(-0.5), t(-0.9), None, t(-1.0))
    assert err.value.field == "ref_chosen_logps"


@pytest.mark.parametrize("loss_fn", ALL)
def test_mismatched_shapes_raise(loss_fn):
    with pytest.raises(ConfigError):
        loss_fn(t(-0.5, -0.6), t(-0.9), t(-0.5, -0.6), t(-0.9, -0.8))
