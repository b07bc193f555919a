"""One preference step: per-objective losses of the same pairs under per-row λ, scalarized, backward.

A loss function is passed in, never named: ``loss_fn(chosen, rejected, ref_chosen, ref_rejected,
beta=β) -> (B,)`` over summed log-probs (e.g. ``parsona.objectives.dpo_loss``), and so is a
scalarization ``scalarize(losses (B, m), λ (B, m)) -> (B,)`` (:func:`linear_scalarization`,
:func:`tchebycheff_scalarization`). Recipes map their string flags to these functions.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

LossFn = Callable[..., torch.Tensor]                            # (chosen, rejected, ref_c, ref_r, beta) -> (B,)
Scalarize = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (losses (B, m), λ (B, m)) -> (B,)


# -- scalarizations: per-row loss (B,) from per-objective losses (B, m) and λ (B, m) -----------------
# Both maximise the utility -L. Missing labels enter as L = 0: with DPO-family losses ≥ 0 that drops
# them from the linear sum and from the Tchebycheff max (ideal point 0, the loss's infimum).

def linear_scalarization(losses: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Σ_i λ_i L_i per row (B,)."""
    from parsona.objectives import linear

    return -linear(-losses, lam)


def tchebycheff_scalarization(losses: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """max_i λ_i L_i per row (B,): the Tchebycheff distance to the ideal point L = 0."""
    from parsona.objectives import tchebycheff

    return -tchebycheff(-losses, lam, torch.zeros_like(losses))


# -- labels and losses ---------------------------------------------------------------------------

def label_tensors(pairs, objectives) -> tuple[torch.Tensor, torch.Tensor]:
    """a_wins (B, m) float (1 if response_a is preferred) and has_label (B, m) float."""
    a_wins = torch.tensor([[float(p.labels.get(o, 0) == 0) for o in objectives] for p in pairs])
    has = torch.tensor([[float(o in p.labels) for o in objectives] for p in pairs])
    return a_wins, has


def per_objective_losses(loss_fn: LossFn, policy: torch.Tensor, reference: torch.Tensor, a_wins: torch.Tensor,
                         has_label: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, m) losses from log-probs of [a rows; b rows] (2B,), zero where a label is missing."""
    B = a_wins.shape[0]
    pa, pb, ra, rb = policy[:B], policy[B:], reference[:B], reference[B:]
    columns = []
    for i in range(a_wins.shape[1]):
        a = a_wins[:, i].bool()
        chosen, rejected = torch.where(a, pa, pb), torch.where(a, pb, pa)          # (B,)
        ref_chosen, ref_rejected = torch.where(a, ra, rb), torch.where(a, rb, ra)  # (B,)
        columns.append(loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta=beta))
    return torch.stack(columns, dim=-1) * has_label                                # (B, m)


def pair_losses(scorer, adapter, tokenizer, pairs, lam: torch.Tensor, objectives, loss_fn: LossFn, beta: float,
                max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-objective losses (B, m) of ``pairs`` under per-row preferences ``lam`` (B, m).

    One forward of the 2B rows [a replies; b replies] with λ set per row serves every objective;
    the reference pass is the same model with the adapter disabled, without gradients.
    ``scorer`` is a :class:`parsona.logprobs.SequenceLogProbs`.
    """
    from parsona.logprobs import tokenize_pairs

    device = lam.device
    batch = tokenize_pairs(tokenizer, [p.prompt for p in pairs] * 2,
                           [p.response_a for p in pairs] + [p.response_b for p in pairs], max_length).to(device)
    a_wins, has_label = (t.to(device) for t in label_tensors(pairs, objectives))
    with torch.no_grad(), adapter.disabled():
        reference, _ = scorer(batch.input_ids, batch.attention_mask, batch.response_mask)   # (2B,)
    with adapter.inputs(preference=torch.cat([lam, lam])):
        policy, _ = scorer(batch.input_ids, batch.attention_mask, batch.response_mask)      # (2B,)
    losses = per_objective_losses(loss_fn, policy, reference, a_wins, has_label, beta)      # (B, m)
    return losses, has_label, int(batch.attention_mask.sum())


def pair_step(scorer, adapter, tokenizer, pairs, lam: torch.Tensor, objectives, loss_fn: LossFn, scalarize: Scalarize,
              beta: float, max_length: int, accelerator, adapter_inputs: Callable[[int], dict] | None = None,
              reference: Callable[[list[int], list[list[int]]], torch.Tensor] | None = None,
              objective_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Accumulate the gradient of mean_b scalarize(L_b, λ_b) one pair at a time; return the per-objective
    losses (B, m), has_label (B, m), the token count (as ``pair_losses`` counts it) and the loss.

    ``scorer`` is a (prepared) :class:`parsona.logprobs.PairLogProbs`. ``adapter_inputs(b)`` gives pair
    b's runtime inputs for ``adapter`` (default: the preference λ_b; the baselines pass a bank LoRA's
    name and a fixed λ). ``reference(prompt_ids, replies) -> (2,)`` gives the reference log-probs
    (default: computed here, adapter disabled, no grad; a
    :class:`parsona.training.reference.ReferenceLogProbs` with a store reads precomputed ones).
    ``objective_weights`` (m,) multiply each objective's loss before scalarizing (e.g.
    :func:`running_mean_weights`; the returned losses stay unweighted).
    Per pair: the reference pass and the policy pass each run the prompt once for both replies,
    then that pair's backward frees its activations before the next pair runs, so at most one pair's
    activations are alive. Exact: the loss is a mean of per-pair terms (same gradient as
    ``pair_losses`` + backward of the mean, up to float rounding, for pairs that fit ``max_length``).
    """
    from parsona.logprobs import tokenize_pair

    from .reference import ReferenceLogProbs

    if reference is None:                                                                   # no store: computed here
        reference = ReferenceLogProbs(scorer, adapter, tokenizer, max_length)
    a_wins, has_label = (t.to(lam.device) for t in label_tensors(pairs, objectives))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    B, rows, n_tokens, total = len(pairs), [], 0, 0.0
    for b, pair in enumerate(pairs):
        prompt, replies = tokenize_pair(tokenizer, pair.prompt, [pair.response_a, pair.response_b], max_length)
        n_tokens += 2 * len(prompt) + sum(len(r) for r in replies)
        ref = reference(prompt, replies)                                                        # (2,) [a, b]
        sync = accelerator.no_sync(scorer) if b < B - 1 else contextlib.nullcontext()             # DDP: sync once
        with sync:
            inputs = adapter_inputs(b) if adapter_inputs else {"preference": lam[b : b + 1]}
            policy = scorer(prompt, replies, pad, **inputs)                                      # (2,)
            losses = per_objective_losses(loss_fn, policy, ref, a_wins[b : b + 1], has_label[b : b + 1], beta)
            weighted = losses if objective_weights is None else losses * objective_weights.to(losses.device)
            loss = scalarize(weighted, lam[b : b + 1]).sum() / B
            accelerator.backward(loss)
        rows.append(losses.detach())
        total += loss.item()
    return torch.cat(rows), has_label, n_tokens, total


NORMALISATION_MOMENTUM = 0.9   # EMA of the logged per-objective losses: ~10 steps of memory


def running_mean_weights(history: list[dict], objectives, momentum: float = NORMALISATION_MOMENTUM) -> torch.Tensor:
    """Per-objective loss weights (m,): w_i ∝ 1 / EMA_i, the EMA over the steps so far of objective i's
    logged mean loss (``history[k][f"loss_{o}"]``), scaled so the weights average 1; ones before step 1.

    An objective whose loss falls faster gets a smaller share of each row's λ-weighted sum, so both
    keep moving (a lever against a front compressed at one end). Read from the history the
    checkpoint already keeps, so a resumed run uses exactly the weights an uninterrupted one did."""
    ema = torch.ones(len(objectives), dtype=torch.float64)
    for k, row in enumerate(history):
        logged = torch.tensor([row[f"loss_{o}"] for o in objectives], dtype=torch.float64)
        ema = logged if k == 0 else momentum * ema + (1 - momentum) * logged
    inverse = 1 / ema.clamp(min=1e-6)
    return (inverse / inverse.mean()).float()


def objective_learning_rates(optimizer: torch.optim.Optimizer, adapter, multipliers) -> None:
    """Make objective i's singular directions (its p columns of every U and V) step at the optimizer's
    learning rate × ``multipliers[i]``; the shared k columns at the rate itself.

    AdamW's update of a weight is lr × (its own moment ratio), so scaling one column's update by c is
    exactly that column at lr × c: hooks keep U and V before the step and rescale what it moved, per
    column (U, V are single tensors, so parameter groups cannot split them). No state of its own: a
    resumed run steps exactly as an uninterrupted one."""
    layers = list(adapter.layers.values())
    k, p = layers[0].rank, layers[0].preference_rank
    scale = torch.cat([torch.ones(k), torch.tensor([float(c) for c in multipliers]).repeat_interleave(p)])  # (k+m·p,)
    params = [t for layer in layers for t in (layer.U, layer.V)]                  # (d, k+m·p) each: columns last
    before: dict[int, torch.Tensor] = {}

    def keep(*_):
        before.update({id(t): t.detach().clone() for t in params})

    def rescale(*_):
        with torch.no_grad():
            for t in params:
                old = before.pop(id(t))
                t.copy_(old + (t - old) * scale.to(t.device, t.dtype))

    optimizer.register_step_pre_hook(keep)
    optimizer.register_step_post_hook(rescale)


def parameter_groups(adapter, learning_rate: float, scale_lr_multiplier: float = 1.0) -> list[dict]:
    """AdamW groups of a preference LoRA: the scales s at ``learning_rate × scale_lr_multiplier``
    (Panacea's s sizes λ's singular values), everything else at ``learning_rate``."""
    scales = [layer.pref_scale for layer in adapter.layers.values()]
    ids = {id(p) for p in scales}
    rest = [p for p in adapter.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": scales, "lr": learning_rate * scale_lr_multiplier}]
