"""Preference-optimisation losses: pure functions of per-sequence log-probs -> (B,) losses.

Every loss shares one signature, so a trainer chooses a loss by passing the function:

    losses = loss_fn(policy_chosen_logps, policy_rejected_logps,
                     ref_chosen_logps, ref_rejected_logps, **hyperparameters)  # (B,)
    loss = losses.mean()

Inputs are (B,) log-probabilities log π(y|x) of the chosen (y_w) and rejected (y_l) responses.
DPO-family losses (dpo, ipo, hinge, beta_dpo, margin_dpo) take SUMMED token log-probs and need a
reference. The reference-free losses (orpo, cpo, simpo, repo) accept ``ref_*=None``; ORPO, SimPO
and RePO expect AVERAGE per-token log-probs (length-normalised, as their papers define them).

Notation below: h = (π_w - π_l) - (ref_w - ref_l), the policy's log-ratio margin over the
reference's; σ is the logistic function. All losses are minimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from parsona.errors import ConfigError

REFERENCE_FREE = "or use a reference-free loss (orpo_loss, cpo_loss, simpo_loss, repo_loss)"


def _margin(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor | None,
            rr: torch.Tensor | None, reference: bool) -> torch.Tensor:
    """Check shapes and return π_w - π_l (reference=False) or h (reference=True), shape (B,)."""
    named = {"policy_chosen_logps": pc, "policy_rejected_logps": pr,
             "ref_chosen_logps": rc, "ref_rejected_logps": rr}
    if reference:
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            if named[name] is None:
                raise ConfigError(name, f"pass the reference model's log-probs {REFERENCE_FREE}",
                                  "is None but this loss needs a reference")
    for name, t in named.items():
        if t is not None and (t.ndim != 1 or t.shape != pc.shape):
            raise ConfigError(name, "pass one log-prob per example, all four tensors shaped (B,)",
                              f"got shape {tuple(t.shape)}, policy_chosen_logps is {tuple(pc.shape)}")
    if not reference:
        return pc - pr  # (B,)
    return (pc - pr) - (rc - rr)  # (B,)


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO's implicit reward r(x, y) = β (log π(y|x) - log π_ref(y|x)) (arXiv 2305.18290). (B,)."""
    return beta * (policy_logps - ref_logps)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO, Rafailov et al. 2023 (arXiv 2305.18290), with conservative label smoothing (cDPO,
    Mitchell 2023, "A note on DPO with noisy preferences"):

        L = -(1 - ε) log σ(β h) - ε log σ(-β h)

    ε = label_smoothing is the assumed fraction of flipped labels; ε = 0 is plain DPO. (The
    unbiased robust DPO of Chowdhury et al., arXiv 2403.00409, divides by 1 - 2ε and subtracts
    the flipped term; it is not this function.)
    """
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)  # (B,)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta: float = 0.1) -> torch.Tensor:
    """IPO, Azar et al. 2023 (arXiv 2310.12036), the paper's τ written β:

        L = (h - 1 / (2β))^2

    A square loss that pulls the margin to 1/(2β) instead of pushing it to infinity, so it does
    not overfit deterministic preferences.
    """
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    return (h - 1 / (2 * beta)) ** 2  # (B,)


def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
               *, beta: float = 0.1) -> torch.Tensor:
    """SLiC-HF calibration loss, Zhao et al. 2023 (arXiv 2305.10425), in its reference-normalised
    form (as in TRL's "hinge"), margin δ = 1/β:

        L = max(0, 1 - β h)
    """
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    return torch.relu(1 - beta * h)  # (B,)


def orpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
              *, beta: float = 0.1, chosen_nll: torch.Tensor | None = None) -> torch.Tensor:
    """ORPO, Hong et al. 2024 (arXiv 2403.07691). Reference-free: ``ref_*`` are ignored.

    Inputs must be AVERAGE per-token log-probs (the paper's odds use P = exp(mean log-prob)):

        odds(y)   = P / (1 - P)
        L         = NLL(y_w) - β log σ(log odds(y_w) - log odds(y_l))

    β is the paper's λ (weight of the odds-ratio term; TRL names it beta). NLL(y_w) defaults to
    -π_w, the mean token NLL of the chosen response; pass ``chosen_nll`` (B,) to use another.
    """
    pc, pr = policy_chosen_logps, policy_rejected_logps
    _margin(pc, pr, None, None, False)
    for name, t in (("policy_chosen_logps", pc), ("policy_rejected_logps", pr)):
        if (t >= 0).any():
            raise ConfigError(name, "pass average per-token log-probs (all < 0)",
                              "ORPO's odds need log-probs strictly below 0")
    # log(1 - P) = log(-expm1(log P)): exact near P -> 1 where log1p(-exp) loses digits
    log_odds = (pc - pr) - (torch.log(-torch.expm1(pc)) - torch.log(-torch.expm1(pr)))  # (B,)
    nll = -pc if chosen_nll is None else chosen_nll  # (B,)
    return nll - beta * F.logsigmoid(log_odds)  # (B,)


def cpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
             *, beta: float = 0.1, alpha: float = 1.0, chosen_nll: torch.Tensor | None = None) -> torch.Tensor:
    """CPO, Xu et al. 2024 (arXiv 2401.08417). Reference-free DPO (uniform reference) plus a
    behaviour-cloning NLL on the chosen response:

        L = -log σ(β (π_w - π_l)) + α NLL(y_w)

    NLL(y_w) defaults to -π_w (so it follows whatever log-prob convention you pass); pass
    ``chosen_nll`` (B,) to use e.g. a mean token NLL. α = 1 in the paper.
    """
    margin = _margin(policy_chosen_logps, policy_rejected_logps, None, None, False)
    nll = -policy_chosen_logps if chosen_nll is None else chosen_nll
    return -F.logsigmoid(beta * margin) + alpha * nll  # (B,)


def simpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
               *, beta: float = 2.0, gamma: float = 0.5) -> torch.Tensor:
    """SimPO, Meng et al. 2024 (arXiv 2405.14734). Reference-free; inputs are AVERAGE per-token
    log-probs (the paper's length-normalised reward (β/|y|) log π(y|x)):

        L = -log σ(β (π_w - π_l) - γ)

    γ is the target reward margin (not scaled by β). Defaults follow TRL's CPO trainer.
    """
    margin = _margin(policy_chosen_logps, policy_rejected_logps, None, None, False)
    return -F.logsigmoid(beta * margin - gamma)  # (B,)


def repo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None,
              *, gamma: float = 0.5) -> torch.Tensor:
    """RePO, Wu et al. 2025 (arXiv 2503.07426). Reference-free, no β; inputs are AVERAGE
    per-token log-probs (SimPO's length-normalised margin M = π_w - π_l):

        L = max(0, γ - M) = ReLU(-(M - γ))

    The paper derives it as SimPO's β -> ∞ limit (of the loss divided by β): pairs whose margin
    already exceeds γ get exactly zero loss and gradient. Written from the paper's description;
    γ's default is a starting point, tune it (the paper's only hyperparameter).
    """
    margin = _margin(policy_chosen_logps, policy_rejected_logps, None, None, False)
    return torch.relu(gamma - margin)  # (B,)


def beta_dpo_beta(margins: torch.Tensor, *, beta: float = 0.1, alpha: float = 0.6,
                  margin_threshold: float = 0.0) -> torch.Tensor:
    """β-DPO's batch β (arXiv 2407.08639): β_batch = β0 (1 + α (mean_i M_i - M0)), floored at 1e-3.

    M_i = h_i are the batch's implicit reward margins (detached) and M0 = ``margin_threshold`` is
    the running mean the trainer keeps: M0 <- 0.9 M0 + 0.1 mean(M) after each batch (the
    authors' code). Returns a 0-d tensor, the β used; log it.
    """
    beta_batch = beta * (1 + alpha * (margins.detach().mean() - margin_threshold))
    return beta_batch.clamp(min=1e-3)  # a large negative gap must not flip the loss's sign


def beta_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             *, beta: float = 0.1, alpha: float = 0.6, margin_threshold: float = 0.0) -> torch.Tensor:
    """β-DPO, Wu et al. 2024 (arXiv 2407.08639): DPO with a batch-adaptive β.

        β_batch = max(1e-3, β (1 + α (mean_batch(h) - M0)))     (no gradient through β_batch)
        L       = -log σ(β_batch h)

    Batches of easy pairs (large margins) get a larger, more conservative β; hard ones a smaller
    β. Pure: M0 (``margin_threshold``) is state the trainer keeps, see :func:`beta_dpo_beta`,
    which also returns the β used for logging. Returns the (B,) losses, like every loss here.
    The paper's second part, β-guided filtering of outlier pairs, is NOT included.
    """
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    beta_batch = beta_dpo_beta(h, beta=beta, alpha=alpha, margin_threshold=margin_threshold)
    return -F.logsigmoid(beta_batch * h)  # (B,)


def margin_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    *, beta: float = 0.1, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """DPO with a per-pair offset from a reward model, the form of ODPO, Amini et al. 2024
    (arXiv 2402.10571):

        L = -log σ(β h - Δ)

    Δ = ``margin`` (float or (B,)) is e.g. a scaled reward-model gap r(y_w) - r(y_l): pairs the
    reward model rates far apart must be separated by more. Δ = 0 is plain DPO. (Margin-adaptive
    DPO, arXiv 2510.05342, instead re-weights each pair by its reward gap; not this function.)
    """
    h = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, True)
    return -F.logsigmoid(beta * h - margin)  # (B,)
