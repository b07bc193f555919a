"""The contenders of ``bench/train_speed.py``, each run inside its own process: the parsona recipe's
own ``setup(cfg)`` and step, and TRL's ``DPOTrainer`` (at its defaults, or at its best CPU settings).

Each returns its step times, token counts, peak RSS and model FLOPs (``bench/flops.py``) as a dict
the parent reports; ``cfg`` is ``train_speed.Config``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from flops import MatmulPeak, ModelShape, Piece, pair_pieces, step_flops, trl_computed_flops
from step_clock import StepClock

from parsona.adapters.base import LLAMA_PROJECTIONS as PROJECTIONS
from parsona.errors import ConfigError

if TYPE_CHECKING:
    from train_speed import Config

TRL_LOSS = {"dpo": "sigmoid", "ipo": "ipo", "hinge": "hinge"}   # TRL's loss_type for the recipe's --loss


# -- shared set-up (runs inside a contender's process) ---------------------------------------------------
def model_source(cfg: Config, tmp: Path) -> str | None:
    if cfg.tiny:
        from parsona.base_model import save_tiny_model

        return str(save_tiny_model(tmp / "tiny", seed=cfg.seed))
    return cfg.model or None


def bench_pairs(cfg: Config, tokenizer, train: list) -> list:
    """The first of the recipe's training pairs ``train``, in order, whose prompt alone is shorter than
    max_length (TRL drops the others): the same list in both contenders' processes."""
    need = cfg.pairs_per_step * cfg.total_steps()
    picked = []
    for pair in train:
        if len(tokenizer(pair.prompt)["input_ids"]) < cfg.max_length:
            picked.append(pair)
        if len(picked) == need:
            return picked
    raise ConfigError("pairs_per_step", "Use fewer --pairs-per-step, --warmup or timed steps, or a larger --max-length.",
                      problem=f"only {len(picked)} usable pairs, {need} needed")


# -- contender: the parsona recipe -----------------------------------------------------------------------
def run_parsona(cfg: Config, tmp: Path) -> dict:
    import torch

    from parsona.logprobs import tokenize_pair
    from parsona.training.preference import setup

    rcfg = cfg.recipe(model_source(cfg, tmp), str(tmp / "run"), reference_cache=str(tmp / "reference"))
    run = setup(rcfg)   # what the recipe's main() builds before its loop, nothing copied
    train = bench_pairs(cfg, run.tokenizer, run.train)
    n_params = sum(p.numel() for p in run.adapter.parameters())
    B = rcfg.pairs_per_step
    shape = ModelShape.of(run.model.config, [(path, layer.U.shape[1]) for path, layer in run.adapter.layers.items()])
    reference = getattr(run, "reference", None)           # ReferenceLogProbs, where the recipe has them
    store = getattr(reference, "store", None)             # None: the reference pass runs in the step
    precompute_s = None
    if store is not None:   # what the recipe's main() runs before its loop (run.precompute_reference), on our pairs
        started = time.perf_counter()
        reference.precompute(train, progress=False)
        precompute_s = time.perf_counter() - started
        print(f"[parsona] reference log-probs of {len(train)} pairs precomputed in {precompute_s:.2f} s",
              file=sys.stderr, flush=True)

    def flops_of(pairs: list) -> tuple[float, int]:
        """The step's model FLOPs (step_flops) and its token count as the step counts it, from the pairs
        cut as the step cuts them; a pair's reference forward counts where the store lacks it."""
        from parsona.training.reference import pair_key

        policy, ref, n_tokens = [], [], 0
        for pair in pairs:
            prompt, replies = tokenize_pair(run.tokenizer, pair.prompt, [pair.response_a, pair.response_b], rcfg.max_length)
            pieces = pair_pieces(len(prompt), [len(r) for r in replies])
            policy += pieces
            if store is None or store.get(pair_key(prompt, replies)) is None:
                ref += pieces
            n_tokens += 2 * len(prompt) + sum(len(r) for r in replies)
        return step_flops(shape, policy, ref), n_tokens

    # Counted before the clock starts (not in the step's time) and before any step stores a reference.
    plan = [flops_of(train[i * B : (i + 1) * B]) for i in range(rcfg.max_steps)]

    def step(i: int) -> tuple[int, float]:
        # The recipe's step, with pairs taken in order (as TRL's sequential sampler takes them)
        # instead of the seeded permutation; λ is the recipe's for step i.
        _, _, n_tokens, loss = run.step(i, pairs=train[i * B : (i + 1) * B])
        if n_tokens != plan[i][1]:
            raise SystemExit(f"bench bug: step {i} counted {n_tokens} tokens, the FLOP model {plan[i][1]}")
        return n_tokens, loss

    peak = MatmulPeak()
    clock = StepClock()
    peak.sample()
    clock.start()
    losses = []
    for i in range(rcfg.max_steps):
        n_tokens, loss = step(i)
        losses.append(loss)
        clock.step_done(n_tokens, "parsona", rcfg.max_steps)
        peak.sample()
        clock.start()                          # the sample is not the next step's time
    result = clock.result(cfg.warmup, torch.get_num_threads(), trainable_params=n_params, losses=losses,
                          versions={"torch": torch.__version__}, recipe_config=dataclasses.asdict(rcfg),
                          flops=[f for f, _ in plan], **peak.result(), precompute_s=precompute_s,
                          flop_model=shape.describe(),
                          reference=reference.summary() if hasattr(reference, "summary") else None)
    if cfg.profile:
        result["profile"] = profile_step(lambda: step(rcfg.max_steps - 1))
    return result


def profile_step(run) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    table = prof.key_averages()
    return ("by self CPU time:\n" + table.table(sort_by="self_cpu_time_total", row_limit=15)
            + "\nby self CPU memory:\n" + table.table(sort_by="self_cpu_memory_usage", row_limit=10))


# -- contender: TRL's DPOTrainer -------------------------------------------------------------------------
def run_trl(cfg: Config, tmp: Path, best: bool = False) -> dict:
    """TRL's DPOTrainer at its defaults, or (``best``) with the reference log-probs precomputed and without
    gradient checkpointing (the trl_best contender; the module docstring says why these)."""
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from peft.tuners.lora import LoraLayer
    from transformers import TrainerCallback

    from parsona.base_model import load_base_model
    from parsona.training.front_data import training_pairs

    datasets.disable_progress_bars()
    model, tokenizer = load_base_model(model_source(cfg, tmp), device="cpu", dtype=torch.float32)
    tokenizer.padding_side = "right"
    pairs = bench_pairs(cfg, tokenizer, training_pairs(cfg.recipe()))   # the pairs the recipe's setup reads
    rows = []
    for p in pairs:
        label = p.labels.get(cfg.objectives[0], p.labels.get(cfg.objectives[1], 0))
        chosen, rejected = (p.response_a, p.response_b) if label == 0 else (p.response_b, p.response_a)
        rows.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected})
    steps = cfg.warmup + cfg.trl_steps
    rows = rows[: steps * cfg.pairs_per_step]
    name, checkpointing = ("trl_best", False) if best else ("trl", cfg.trl_gradient_checkpointing)
    targets = [p for p in PROJECTIONS if any(n.endswith("." + p) for n, _ in model.named_modules())]
    args = trl.DPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=cfg.pairs_per_step, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=cfg.learning_rate, beta=cfg.beta, max_length=cfg.max_length,
        gradient_checkpointing=checkpointing, precompute_ref_log_probs=best, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=cfg.seed, data_seed=cfg.seed,
        **({} if cfg.loss == "dpo" else {"loss_type": TRL_LOSS[cfg.loss]}),   # "sigmoid", TRL's default, is DPO
    )
    lora = peft.LoraConfig(r=cfg.lora_rank(), lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets,
                           task_type="CAUSAL_LM")
    clock_box: dict = {}
    batch_tokens: list[int] = []
    batch_shapes: list[tuple[list[int], list[int], int]] = []   # per step: row lengths, reply lengths, padded T
    precompute_s: list[float] = []

    class CountingDPOTrainer(trl.DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            mask = inputs["attention_mask"]
            batch_tokens.append(int(mask.sum()))  # chosen + rejected rows, non-pad
            batch_shapes.append((mask.sum(1).tolist(), inputs["completion_mask"].sum(1).tolist(), mask.shape[1]))
            if best and "ref_chosen_logps" not in inputs:
                raise SystemExit("trl_best: TRL did not precompute the reference log-probs")
            return super().training_step(model, inputs, *args, **kwargs)

        def _precompute_ref_logps(self, *args, **kwargs):   # TRL runs it in __init__, before training
            started = time.perf_counter()
            out = super()._precompute_ref_logps(*args, **kwargs)
            precompute_s.append(time.perf_counter() - started)
            return out

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            clock_box["peak"] = MatmulPeak()
            clock_box["clock"] = StepClock()
            clock_box["peak"].sample()
            clock_box["clock"].start()

        def on_step_end(self, *_, **__):
            clock_box["clock"].step_done(batch_tokens[-1], name, steps)
            clock_box["peak"].sample()
            clock_box["clock"].start()         # the sample is not the next step's time

    trainer = CountingDPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    if len(trainer.train_dataset) != len(rows):
        raise SystemExit(f"TRL kept {len(trainer.train_dataset)} of {len(rows)} pairs: the contenders would differ")
    if best and not precompute_s:
        raise SystemExit("trl_best: TRL's reference precompute was not seen (has TRL renamed _precompute_ref_logps?)")
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    shape = ModelShape.of(model.config, [(path, m.r["default"]) for path, m in trainer.model.named_modules()
                                         if isinstance(m, LoraLayer)])
    trainer.train()
    flops, computed = [], []
    for row_lengths, reply_lengths, T in batch_shapes:
        # Useful: each row's own prompt + reply (TRL runs a pair's prompt in both rows), no padding, the head
        # at reply positions; computed: the padded rows, the head everywhere and its recompute, gc's re-forward.
        pieces = [Piece(n, 0, r) for n, r in zip(row_lengths, reply_lengths)]
        flops.append(step_flops(shape, pieces, [] if best else pieces))
        computed.append(trl_computed_flops(shape, len(row_lengths), T, reference=not best, checkpointing=checkpointing))
    return clock_box["clock"].result(
        cfg.warmup, torch.get_num_threads(), trainable_params=n_params,
        versions={"trl": trl.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
                  "datasets": datasets.__version__, "torch": torch.__version__},
        gradient_checkpointing=checkpointing, flops=flops, computed_flops=computed, **clock_box["peak"].result(),
        precompute_s=sum(precompute_s) if precompute_s else None, flop_model=shape.describe())
