"""``setup(cfg)``: everything the preference-LoRA recipe builds before its loop, in one place.

The recipe (``parsona.recipes.train_preference_lora``) and ``bench/train_speed.py`` both call it,
so the benchmark times the recipe's own model, adapter, optimizer and step, not a copy of them:

    run = setup(cfg)                                  # cfg: the recipe's Config
    for step in range(cfg.max_steps):
        losses, has_label, n_tokens, loss = run.step(step)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .step import LossFn, Scalarize, objective_learning_rates, pair_step, parameter_groups


class PreferenceSettings(Protocol):
    """What :func:`setup` reads from a config (the recipe's Config has all of it)."""

    model: str | None
    objectives: tuple[str, ...]
    n_objectives: int
    rank: int
    preference_rank: int
    alpha: float
    beta: float
    learning_rate: float
    pref_scale_lr_multiplier: float
    warmup_steps: int
    pairs_per_step: int
    max_length: int
    vertex_prob: float
    dirichlet_alpha: float
    seed: int
    all_labels_only: bool            # these three pick the training pairs (front_data.training_pairs)
    max_train_pairs: int
    eval_fraction: float
    preference_sampling: str         # "row": a λ per pair; "batch": one λ per step (Panacea)
    loss_normalisation: str          # "none", or "running_mean": objective i's loss over its running mean
    objective_lr_multipliers: tuple  # () or m floats: objective i's columns of U, V at learning_rate × c_i
    precompute_reference: bool       # reference log-probs computed before the loop and kept (reference.py)
    reference_cache: str             # where they are kept ("" : the parsona cache)
    loss_fn: LossFn                  # the function behind the recipe's --loss flag
    scalarize: Scalarize             # the function behind its --scalarization flag


@dataclass
class PreferenceRun:
    """A preference LoRA ready to train: the loop calls :meth:`step` once per optimizer step."""

    cfg: Any                         # PreferenceSettings
    accelerator: Any
    model: torch.nn.Module           # the frozen base, the adapter attached
    tokenizer: Any
    adapter: Any                     # parsona.adapters.PreferenceLoRA
    scorer: torch.nn.Module          # PairLogProbs(model, adapter), prepared by the accelerator
    optimizer: torch.optim.Optimizer
    schedule: Any
    train: list                      # MultiObjectivePair, the recipe's training pairs
    reference: Any                   # ReferenceLogProbs: the store's values, or computed in the step

    def batch(self, step: int) -> list:
        """This process's pairs of ``step``: its contiguous share (``sampling.local_rows``) of the global
        batch, epochs of a seeded permutation of ``train`` (pairs_per_step pairs over all processes)."""
        from .sampling import batches, local_rows

        a = self.accelerator
        order = batches(len(self.train), self.cfg.pairs_per_step, self.cfg.seed, step)        # (rows,) global
        return [self.train[i] for i in order[local_rows(len(order), a.process_index, a.num_processes)]]

    def preferences(self, step: int) -> torch.Tensor:
        """λ (rows / W, m) of ``step`` on the device: the rows of the global batch's λ that match
        :meth:`batch`'s pairs (W processes; rows = pairs_per_step, or all pairs when there are fewer)."""
        from .sampling import batch_rows, local_rows, step_preferences

        c, a = self.cfg, self.accelerator
        drawn = 1 if c.preference_sampling == "batch" else c.pairs_per_step   # "batch": Panacea's one λ per step
        lam = step_preferences(drawn, c.n_objectives, c.seed, step, c.dirichlet_alpha, c.vertex_prob)
        lam = lam.expand(c.pairs_per_step, -1)                                 # (pairs_per_step, m)
        rows = batch_rows(len(self.train), c.pairs_per_step)              # λ's first rows go with the pairs
        return lam[:rows][local_rows(rows, a.process_index, a.num_processes)].to(a.device)

    def precompute_reference(self, start: int = 0) -> None:
        """Reference log-probs of every pair that steps ``start`` .. max_steps - 1 will see, computed before
        the loop (misses only: a resumed run, another seed or method on the same base reuses them); no-op
        when the reference is computed in the step."""
        if self.reference.store is None:
            return
        pairs = {id(p): p for step in range(start, self.cfg.max_steps) for p in self.batch(step)}
        self.reference.precompute(list(pairs.values()), progress=self.accelerator.is_local_main_process)

    def step(self, step: int, pairs: list | None = None, history: list[dict] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        """One optimizer step on ``pairs`` (default: :meth:`batch`), row b at λ_b of :meth:`preferences`;
        ``history`` (the logged steps so far) feeds ``loss_normalisation="running_mean"``.

        Returns the per-objective losses (B, m), has_label (B, m), the step's tokens and its loss.
        """
        from .step import running_mean_weights

        c = self.cfg
        pairs = self.batch(step) if pairs is None else pairs
        lam = self.preferences(step)[: len(pairs)]                                           # (B, m)
        weights = running_mean_weights(history or [], c.objectives) if c.loss_normalisation == "running_mean" else None
        out = pair_step(self.scorer, self.adapter, self.tokenizer, pairs, lam, c.objectives, c.loss_fn, c.scalarize,
                        c.beta, c.max_length, self.accelerator, reference=self.reference, objective_weights=weights)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad()
        return out


def setup(cfg: PreferenceSettings, accelerator=None) -> PreferenceRun:
    """Seed, load the frozen base, attach the preference LoRA, read the training pairs, build AdamW
    (the scales s at their own rate) with its warm-up, and prepare them all with ``accelerator``
    (default: :func:`parsona.training.base.make_accelerator`)."""
    from parsona.adapters import PreferenceLoRAConfig, attach
    from parsona.logprobs import PairLogProbs

    from .base import frozen_base, make_accelerator, warmup_schedule
    from .front_data import training_pairs

    accelerator = make_accelerator() if accelerator is None else accelerator
    model, tokenizer = frozen_base(cfg.model, accelerator, cfg.seed)
    adapter = attach(model, PreferenceLoRAConfig(rank=cfg.rank, n_objectives=cfg.n_objectives, alpha=cfg.alpha,
                                                 preference_rank=cfg.preference_rank))
    train = training_pairs(cfg)
    scorer = PairLogProbs(model, adapter).train()
    groups = parameter_groups(adapter, cfg.learning_rate, cfg.pref_scale_lr_multiplier)
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=0.0)
    if cfg.objective_lr_multipliers:
        objective_learning_rates(optimizer, adapter, cfg.objective_lr_multipliers)
    schedule = warmup_schedule(optimizer, cfg.warmup_steps)
    scorer, optimizer, schedule = accelerator.prepare(scorer, optimizer, schedule)
    reference = reference_source(cfg, scorer, adapter, tokenizer, accelerator)
    return PreferenceRun(cfg, accelerator, model, tokenizer, adapter, scorer, optimizer, schedule, train, reference)


def reference_source(cfg, scorer, adapter, tokenizer, accelerator):
    """The step's reference log-probs: kept in a store when ``cfg.precompute_reference`` and the base's
    forward is deterministic (a model with active dropout would give other numbers on every pass, so
    its reference is computed in the step, with a warning); computed in the step otherwise."""
    from .reference import ReferenceLogProbs, ReferenceStore

    store = None
    if cfg.precompute_reference:
        if has_dropout(adapter.model):
            warnings.warn("precompute_reference: the model has dropout > 0, so its reference log-probs are not the "
                          "same on every pass; computing them in each step instead", stacklevel=2)
        else:
            store = ReferenceStore.for_model(adapter.model, accelerator, cfg.reference_cache or None)
    return ReferenceLogProbs(scorer, adapter, tokenizer, cfg.max_length, store)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether any dropout would be active in training mode (an nn.Dropout, or the config's attention_dropout)."""
    return (any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
            or float(getattr(model.config, "attention_dropout", 0.0) or 0.0) > 0)
