"""How fast does the preference-LoRA recipe train on CPU, against TRL's DPOTrainer? Seconds per
optimizer step, tokens/s and peak RSS, side by side in one run.

Contenders, each in its own subprocess (so that peak RSS is per contender and nothing is shared):

  parsona   the recipe's own step (parsona.recipes.train_preference_lora.pair_step): pair by pair,
            the prompt runs once for both replies (PairLogProbs), one forward serves all m objectives,
            the reference pass is the same model with the adapter off, without grad; backward per
            pair; then AdamW on the preference-LoRA parameters, under the recipe's Accelerator.
  trl       trl.DPOTrainer (what a user would otherwise pick) with a PEFT LoraConfig of rank k on
            all 7 projections (lora_alpha = alpha, dropout 0), reference = the same model with the
            adapter off (TRL's default for PEFT), fp32, CPU, no eval, no saving, logging off, TRL's
            other defaults (including gradient_checkpointing=True; --no-trl-gradient-checkpointing).

Both see the same pairs (the first ones of front_data.front_pairs' training split, in order, minus
any whose prompt alone fills max_length, which TRL would drop), pairs_per_step pairs per optimizer
step, max_length tokens per row, gradient accumulation 1. TRL's chosen/rejected follow the first
objective's label (the second's where the first is missing). The first --warmup steps of each
contender are run and not timed. A step's time runs from the end of the previous step to the end of
this one (batch collation/tokenization, reference pass, policy pass, backward, optimizer and
scheduler step). Tokens are counted the same way for both: non-pad tokens (attention mask) of the
chosen + rejected rows of the step's batch.

Peak RSS is the child's VmHWM (/proc/self/status), which starts fresh at exec; "train" is the
high-water mark over the training steps only (reset through /proc/self/clear_refs after set-up).
The machine is shared: the 1-minute load average before/after each contender, and the contender's
CPU share during its timed steps (CPU seconds / (wall seconds × torch threads)), are printed with
the numbers.

Targets: parsona s/step ≤ 0.3 × TRL's on the same timed steps (same pairs), and parsona peak RSS ≤ 4 GB.

    .venv/bin/python bench/train_speed.py                   # SmolLM2-135M-Instruct, ≈ 8-12 min on 2 busy cores
    .venv/bin/python bench/train_speed.py --contenders parsona --profile   # ours only, + torch.profiler tables
    .venv/bin/python bench/train_speed.py --tiny            # tiny random Llama: a wiring smoke run in ~1 min
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing: `python bench/train_speed.py`
    sys.path.insert(0, str(REPO))

CONTENDERS = ("parsona", "trl")
OBJECTIVES = ("helpful", "harmless", "brevity")
from parsona.adapters.base import LLAMA_PROJECTIONS as PROJECTIONS  # noqa: E402  (after the sys.path line)
from step_clock import StepClock  # noqa: E402  (bench/ is on sys.path when run as a script)


@dataclass
class Config:
    """What to measure. Every field is a flag: ``pairs_per_step`` is ``--pairs-per-step``."""

    model: str = field(default="", metadata={"help": "Hugging Face id or local directory of the base model; empty: "
                                                     "the packaged SmolLM2-135M-Instruct"})
    tiny: bool = field(default=False, metadata={"help": "use a tiny random Llama + byte tokenizer (save_tiny_model) "
                                                        "instead of --model: a wiring smoke run, timings meaningless"})
    contenders: str = field(default="parsona,trl", metadata={"help": "comma-separated, from: " + ", ".join(CONTENDERS)})
    n_objectives: int = field(default=2, metadata={"help": "m, objectives of the preference LoRA (first m of "
                                                           + ", ".join(OBJECTIVES) + ")"})
    pairs_per_step: int = field(default=4, metadata={"help": "preference pairs per optimizer step (TRL's "
                                                             "per_device_train_batch_size); rows = 2 × this"})
    max_length: int = field(default=256, metadata={"help": "tokens per prompt + reply row"})
    rank: int = field(default=8, metadata={"help": "LoRA rank: k of the preference LoRA, r of TRL's PEFT LoRA"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha for both (preference LoRA scales by "
                                                         "alpha / (k + m), PEFT by alpha / r)"})
    beta: float = field(default=0.1, metadata={"help": "DPO β for both"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate for both"})
    warmup: int = field(default=1, metadata={"help": "steps run first and not timed, per contender"})
    parsona_steps: int = field(default=5, metadata={"help": "timed steps of the parsona recipe"})
    trl_steps: int = field(default=3, metadata={"help": "timed steps of TRL's DPOTrainer (≈ 1 min each on 2 cores)"})
    trl_gradient_checkpointing: bool = field(default=True, metadata={"help": "TRL's gradient_checkpointing "
                                                                             "(True is TRL's default)"})
    threads: int = field(default=1, metadata={"help": "torch.set_num_threads(N) in each contender; 0 leaves "
                                                      "torch's default (one per core). On cores shared with "
                                                      "other jobs, 2 threads stall at every op's barrier: a "
                                                      "parsona step took 62 s with 2 threads, 26 s with 1"})
    seed: int = field(default=0, metadata={"help": "seed for LoRA init and λ sampling"})
    time_target: float = field(default=0.3, metadata={"help": "target: parsona s/step ≤ this × TRL's s/step"})
    rss_target_gb: float = field(default=4.0, metadata={"help": "target: parsona peak RSS ≤ this many GB (10^9 B)"})
    profile: bool = field(default=False, metadata={"help": "after timing, run one more parsona step under "
                                                           "torch.profiler and print its top ops (time and memory)"})
    worker: str = field(default="", metadata={"internal": True, "help": argparse.SUPPRESS})
    result_file: str = field(default="", metadata={"internal": True, "help": argparse.SUPPRESS})

    def __post_init__(self) -> None:
        for name in ("pairs_per_step", "max_length", "rank", "parsona_steps", "trl_steps"):
            if getattr(self, name) < 1:
                raise SystemExit(f"--{name.replace('_', '-')}: use a whole number ≥ 1 (got {getattr(self, name)})")
        if self.warmup < 0 or self.threads < 0:
            raise SystemExit("--warmup and --threads must be ≥ 0")
        if not 2 <= self.n_objectives <= len(OBJECTIVES):
            raise SystemExit(f"--n-objectives: use 2..{len(OBJECTIVES)} (got {self.n_objectives})")
        unknown = set(self.names()) - set(CONTENDERS)
        if unknown or not self.names():
            raise SystemExit(f"--contenders: choose from {', '.join(CONTENDERS)} (got {self.contenders!r})")

    def names(self) -> list[str]:
        return [c.strip() for c in self.contenders.split(",") if c.strip()]

    @property
    def objectives(self) -> tuple[str, ...]:
        return OBJECTIVES[: self.n_objectives]

    def steps(self, contender: str) -> int:
        return self.parsona_steps if contender == "parsona" else self.trl_steps

    def total_steps(self) -> int:
        return self.warmup + max(self.steps(c) for c in self.names())


# -- shared set-up (runs inside a contender's process) ---------------------------------------------------
def model_source(cfg: Config, tmp: Path) -> str | None:
    if cfg.tiny:
        from parsona.base_model import save_tiny_model

        return str(save_tiny_model(tmp / "tiny", seed=cfg.seed))
    return cfg.model or None


def bench_pairs(cfg: Config, tokenizer) -> list:
    """The first pairs of the training split, in order, whose prompt alone is shorter than max_length."""
    from parsona.recipes.front_data import front_pairs

    train, _ = front_pairs(cfg.objectives)
    need = cfg.pairs_per_step * cfg.total_steps()
    picked = []
    for pair in train:
        if len(tokenizer(pair.prompt)["input_ids"]) < cfg.max_length:
            picked.append(pair)
        if len(picked) == need:
            return picked
    raise SystemExit(f"only {len(picked)} usable pairs, {need} needed")


# -- contender: the parsona recipe -----------------------------------------------------------------------
def run_parsona(cfg: Config, tmp: Path) -> dict:
    import torch
    from accelerate import Accelerator

    from parsona.adapters import PreferenceLoRAConfig, attach
    from parsona.base_model import load_base_model
    from parsona.devices import mixed_precision
    from parsona.logprobs import PairLogProbs
    from parsona.recipes import train_preference_lora as recipe

    rcfg = recipe.Config(model=model_source(cfg, tmp), output_dir=str(tmp / "run"), objectives=cfg.objectives,
                         n_objectives=cfg.n_objectives, beta=cfg.beta, rank=cfg.rank, alpha=cfg.alpha,
                         learning_rate=cfg.learning_rate, max_steps=cfg.warmup + cfg.parsona_steps,
                         pairs_per_step=cfg.pairs_per_step, max_length=cfg.max_length, seed=cfg.seed)
    # As recipe.main() sets up (minus data loading, checkpointing and the summary):
    accelerator = Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())
    torch.manual_seed(rcfg.seed)
    model, tokenizer = load_base_model(rcfg.model, device=accelerator.device, dtype=torch.float32)
    model.requires_grad_(False)
    adapter = attach(model, PreferenceLoRAConfig(rank=rcfg.rank, n_objectives=rcfg.n_objectives, alpha=rcfg.alpha))
    train = bench_pairs(cfg, tokenizer)
    scorer = PairLogProbs(model, adapter).train()
    optimizer = torch.optim.AdamW(list(adapter.parameters()), lr=rcfg.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, rcfg.warmup_steps)))
    scorer, optimizer, schedule = accelerator.prepare(scorer, optimizer, schedule)
    loss_fn, scalarize = recipe.loss_function(rcfg.loss), recipe.scalarizer(rcfg.scalarization)
    n_params = sum(p.numel() for p in adapter.parameters())
    B = rcfg.pairs_per_step

    def step(i: int) -> tuple[int, float]:
        # The body of recipe.main()'s loop, with pairs taken in order instead of the seeded permutation.
        pairs = train[i * B : (i + 1) * B]
        lam = recipe.step_preferences(rcfg, i)[: len(pairs)].to(accelerator.device)           # (B, m)
        _, _, n_tokens, loss = recipe.pair_step(scorer, adapter, tokenizer, pairs, lam, rcfg.objectives, loss_fn,
                                                scalarize, rcfg.beta, rcfg.max_length, accelerator)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        return n_tokens, loss

    clock = StepClock()
    clock.start()
    losses = []
    for i in range(rcfg.max_steps):
        n_tokens, loss = step(i)
        losses.append(loss)
        clock.step_done(n_tokens, "parsona", rcfg.max_steps)
    result = clock.result(cfg.warmup, torch.get_num_threads(), trainable_params=n_params, losses=losses,
                          versions={"torch": torch.__version__})
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
def run_trl(cfg: Config, tmp: Path) -> dict:
    import datasets
    import peft
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback

    from parsona.base_model import load_base_model

    datasets.disable_progress_bars()
    model, tokenizer = load_base_model(model_source(cfg, tmp), device="cpu", dtype=torch.float32)
    tokenizer.padding_side = "right"
    pairs = bench_pairs(cfg, tokenizer)
    rows = []
    for p in pairs:
        label = p.labels.get(cfg.objectives[0], p.labels.get(cfg.objectives[1], 0))
        chosen, rejected = (p.response_a, p.response_b) if label == 0 else (p.response_b, p.response_a)
        rows.append({"prompt": p.prompt, "chosen": chosen, "rejected": rejected})
    steps = cfg.warmup + cfg.trl_steps
    rows = rows[: steps * cfg.pairs_per_step]
    targets = [p for p in PROJECTIONS if any(n.endswith("." + p) for n, _ in model.named_modules())]
    args = trl.DPOConfig(
        output_dir=str(tmp / "trl"), per_device_train_batch_size=cfg.pairs_per_step, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=cfg.learning_rate, beta=cfg.beta, max_length=cfg.max_length,
        gradient_checkpointing=cfg.trl_gradient_checkpointing, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
        train_sampling_strategy="sequential", dataloader_num_workers=0, seed=cfg.seed, data_seed=cfg.seed,
    )
    lora = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=targets,
                           task_type="CAUSAL_LM")
    clock_box: dict = {}
    batch_tokens: list[int] = []

    class CountingDPOTrainer(trl.DPOTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            batch_tokens.append(int(inputs["attention_mask"].sum()))  # chosen + rejected rows, non-pad
            return super().training_step(model, inputs, *args, **kwargs)

    class Clock(TrainerCallback):
        def on_train_begin(self, *_, **__):
            clock_box["clock"] = StepClock()
            clock_box["clock"].start()

        def on_step_end(self, *_, **__):
            clock_box["clock"].step_done(batch_tokens[-1], "trl", steps)

    trainer = CountingDPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                                 processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    if len(trainer.train_dataset) != len(rows):
        raise SystemExit(f"TRL kept {len(trainer.train_dataset)} of {len(rows)} pairs: the contenders would differ")
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    return clock_box["clock"].result(
        cfg.warmup, torch.get_num_threads(), trainable_params=n_params,
        versions={"trl": trl.__version__, "peft": peft.__version__, "transformers": transformers.__version__,
                  "datasets": datasets.__version__, "torch": torch.__version__},
        gradient_checkpointing=cfg.trl_gradient_checkpointing)


def worker_main(cfg: Config) -> None:
    import warnings

    import torch
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix=f"parsona-train-speed-{cfg.worker}-") as tmp:
        result = {"parsona": run_parsona, "trl": run_trl}[cfg.worker](cfg, Path(tmp))
    Path(cfg.result_file).write_text(json.dumps(result))


# -- the parent: run each contender in its own process, then report -----------------------------------------
def command(cfg: Config) -> str:
    """The exact command line that reproduces ``cfg`` (every public field spelled out)."""
    parts = [".venv/bin/python", "bench/train_speed.py"]
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        flag, value = "--" + f.name.replace("_", "-"), getattr(cfg, f.name)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run_contender(cfg: Config, name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="parsona-train-speed-") as tmp:
        out = Path(tmp) / "result.json"
        child = dataclasses.replace(cfg, worker=name, result_file=str(out))
        argv = [sys.executable, str(Path(__file__).resolve())]
        for f in dataclasses.fields(child):
            value = getattr(child, f.name)
            flag = "--" + f.name.replace("_", "-")
            argv += ([flag if value else "--no-" + f.name.replace("_", "-")] if isinstance(value, bool)
                     else [flag, str(value)])
        load_before = os.getloadavg()
        started = time.perf_counter()
        # The child's stdout and stderr both go to our stderr (per-step progress); our stdout keeps the report.
        proc = subprocess.run(argv, cwd=REPO, stdout=sys.stderr)
        wall = time.perf_counter() - started
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"contender {name} failed (exit status {proc.returncode})")
        result = json.loads(out.read_text())
    result.update(load_before=load_before, load_after=os.getloadavg(), wall=wall)
    return result


def summarize(r: dict) -> dict:
    w = r["warmup"]
    times, tokens = r["times"][w:], r["tokens"][w:]
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "tok_s": sum(tokens) / sum(times), "tok_step": sum(tokens) / len(tokens)}


def gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def main(cfg: Config) -> bool:
    """Run every contender, print the table and the targets; True when every target checked passes."""
    if cfg.worker:
        worker_main(cfg)
        return True
    started = time.perf_counter()
    results = {}
    for name in cfg.names():
        print(f"running {name} ({cfg.warmup} warm-up + {cfg.steps(name)} timed steps) ...", file=sys.stderr, flush=True)
        results[name] = run_contender(cfg, name)
    stats = {name: summarize(r) for name, r in results.items()}

    model = "tiny random Llama" if cfg.tiny else (cfg.model or "SmolLM2-135M-Instruct (packaged)")
    versions = {k: v for r in results.values() for k, v in r["versions"].items()}
    print(f"\n# Preference-LoRA training speed vs TRL DPOTrainer ({model}, fp32, CPU, {os.cpu_count()} cores)")
    print(f"{cfg.pairs_per_step} pairs/step ({2 * cfg.pairs_per_step} rows), max_length {cfg.max_length}, rank {cfg.rank}, "
          f"m={cfg.n_objectives} ({', '.join(cfg.objectives)}); {cfg.warmup} warm-up step(s) untimed; "
          + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    print(f"\n| {'contender':<10} | {'steps':>5} | {'s/step (median)':>15} | {'min..max':>13} | {'tokens/step':>11} | "
          f"{'tokens/s':>8} | {'peak RSS GB':>11} | {'train-peak GB':>13} | {'setup-peak GB':>13} | {'CPU share':>9} | "
          f"{'load 1m before→after':>20} | {'trainable':>9} |")
    print(f"|{'-' * 12}|{'-' * 6}:|{'-' * 16}:|{'-' * 14}:|{'-' * 12}:|{'-' * 9}:|{'-' * 12}:|{'-' * 14}:|"
          f"{'-' * 14}:|{'-' * 10}:|{'-' * 21}:|{'-' * 10}:|")
    for name, r in results.items():
        s = stats[name]
        label = name if name != "trl" else ("trl" + (" (gc)" if r.get("gradient_checkpointing") else ""))
        print(f"| {label:<10} | {s['n']:>5} | {s['median']:>15.2f} | {s['min']:>6.2f}..{s['max']:<6.2f} | "
              f"{s['tok_step']:>11.0f} | {s['tok_s']:>8.0f} | {gb(r['peak_rss']):>11} | {gb(r['train_peak_rss']):>13} | "
              f"{gb(r['setup_peak_rss']):>13} | {r['cpu_share'] * 100:>8.0f}% | "
              f"{r['load_before'][0]:>9.2f}→{r['load_after'][0]:<10.2f} | {r['trainable_params']:>9,} |")
    for name, r in results.items():
        print(f"{name} per-step seconds (warm-up first): " + ", ".join(f"{t:.2f}" for t in r["times"])
              + f"; tokens: {r['tokens']}")

    checks = []
    if "parsona" in results and "trl" in results:
        w = cfg.warmup
        common = min(cfg.parsona_steps, cfg.trl_steps)
        ours = results["parsona"]["times"][w : w + common]
        theirs = results["trl"]["times"][w : w + common]
        ratio = sum(ours) / sum(theirs)
        same_tokens = results["parsona"]["tokens"][: w + common] == results["trl"]["tokens"][: w + common]
        print(f"\nparsona / TRL time on the {common} common timed steps (same pairs): {sum(ours):.1f} s / "
              f"{sum(theirs):.1f} s = {ratio:.3f}×; median ratio {stats['parsona']['median'] / stats['trl']['median']:.3f}×; "
              f"TRL / parsona speed-up {1 / ratio:.1f}×; token counts per step identical: {same_tokens}")
        checks.append((f"parsona s/step ≤ {cfg.time_target:g} × TRL's (measured {ratio:.3f}×)", ratio <= cfg.time_target))
    if "parsona" in results:
        peak = results["parsona"]["peak_rss"]
        checks.append((f"parsona peak RSS ≤ {cfg.rss_target_gb:g} GB (measured {peak / 1e9:.2f} GB)",
                       peak <= cfg.rss_target_gb * 1e9))
    if "profile" in results.get("parsona", {}):
        print("\n## torch.profiler: one parsona step\n")
        print(results["parsona"]["profile"])

    print("\n## Targets\n")
    if not checks:
        print("none checked: both targets need the parsona contender")
    for label, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now "
          + " / ".join(f"{x:.2f}" for x in os.getloadavg()) + f" (1/5/15 min). Reproduce with:\n  {command(cfg)}")
    return all(ok for _, ok in checks)


def parse_args(argv: list[str] | None = None) -> Config:
    from bench_cli import parse_config

    return parse_config(Config, "bench/train_speed.py",
                        __doc__.split("\n\n")[0] + " Prints a table, PASS/FAIL per target and the command that "
                        "reproduces the run. Exit status 1 when a target fails.",
                        "Each contender runs in its own subprocess; its per-step progress goes to stderr.", argv)


if __name__ == "__main__":
    sys.exit(0 if main(parse_args()) else 1)
