"""How fast does the preference-LoRA recipe train on CPU, against TRL's DPOTrainer? Seconds per
optimizer step, tokens/s, peak RSS and model FLOP utilisation, side by side in one run.

Contenders (bench/train_contenders.py; the FLOP model: bench/flops.py), each in its own subprocess
(so that peak RSS is per contender and nothing is shared):

  parsona   the recipe itself: parsona.training.preference.setup(cfg), the set-up the recipe's main()
            runs (seeded frozen base, preference LoRA, training pairs, AdamW with the scales' own
            rate, warm-up, Accelerator), then its step (PreferenceRun.step): pair by pair, the
            prompt runs once for both replies (PairLogProbs), one forward serves all m objectives,
            the reference log-probs are the same model's with the adapter off, without grad; backward
            per pair; then the optimizer and schedule step. With the recipe's precompute_reference
            (on by default, --no-precompute-reference) they are computed before the loop, as the
            recipe's main() does, for the bench's pairs (ReferenceLogProbs.precompute) into a fresh
            temporary store, so the set-up cost is measured cold; that time is the "ref precompute s"
            column, not step time, and the steps read them instead of running the reference pass.
  trl       trl.DPOTrainer (what a user would otherwise pick) with a PEFT LoraConfig on all 7
            projections of the same rank as the preference LoRA's PEFT export, r = k + m·p, and
            lora_alpha = alpha (so ΔW has the same scale alpha / r), dropout 0, reference = the same
            model with the adapter off (TRL's default for PEFT), fp32, CPU, no eval, no saving,
            logging off, TRL's other defaults (including gradient_checkpointing=True;
            --no-trl-gradient-checkpointing). TRL is the `bench` extra: pip install -e ".[bench]".
  trl_best  the same DPOTrainer at the settings a careful CPU user would pick from DPOConfig (TRL 1.16):
            precompute_ref_log_probs=True (the reference log-probs of its whole training set, the
            bench's pairs, are computed in the trainer's __init__, before training: that time is its
            "ref precompute s" column, not step time, as for parsona; its steps skip the reference pass) and
            gradient_checkpointing=False (no re-forward in the backward; memory is no constraint at
            this size). Not chosen, and why: padding_free=True is documented as FlashAttention-only
            and, in TRL 1.16, "temporarily unavailable" (it warns and falls back to padding);
            use_liger_kernel is deprecated and Triton (GPU) only, and TRL's fused LM head scores only
            the labelled positions on CUDA/XPU, every position on CPU, with no option to change it;
            pad_to_multiple_of is already off on CPU ("auto"); bf16 would change the precision
            (both run fp32); group_by_length would change which pairs share a step; torch_compile
            (transformers', not TRL's) compiles for minutes on CPU, and again as DPO batches change
            shape. precompute_ref_batch_size only changes set-up time and stays TRL's default (the
            training batch size).

The timed config is the recipe's Config (parsona.recipes.train_preference_lora) with its defaults,
changed only by this script's flags of the same names; it is printed with the fields that differ.
Every contender sees the same pairs (the first of the recipe's training pairs, in order, minus any
whose prompt alone fills max_length, which TRL would drop), pairs_per_step pairs per optimizer
step, max_length tokens per row, gradient accumulation 1. TRL's chosen/rejected follow the first
objective's label (the second's where the first is missing). The first --warmup steps of each
contender are run and not timed; --trl-steps are the timed steps of each TRL contender. A step's
time runs from the end of the previous step to the end of this one (batch collation/tokenization,
reference pass where it runs in the step, policy pass, backward, optimizer and scheduler step).
Tokens are counted the same way for all: non-pad tokens (attention mask) of the chosen + rejected
rows of the step's batch (for parsona, which runs a pair's prompt once: 2 × prompt + both replies).

Model FLOP utilisation = (model FLOPs of the timed steps / their seconds) / this machine's fp32
matmul peak. The FLOPs (step_flops, from the model's config, the adapter's shapes and each step's
token counts) are the useful ones: the tokens' forward through every Linear (2 per weight per
token), attention scores and values over each token's causal context, the LM head at reply
positions only, the backward's activation gradients through the frozen weights (2 per weight per
token, no weight gradients: the base is frozen) from the lowest adapted layer up, attention's
backward (2 × its forward), the LoRA's weight and activation gradients, and the reference forward
when it runs in the step. TRL's utilisation counts the same useful FLOPs on its rows (each row
runs its own prompt, as TRL's algorithm does; no padding, no recompute); what TRL actually
computes (every row padded to the longest, the LM head at every position and again in its
backward, gradient checkpointing's re-forward) is printed beside it as "computed GFLOP/step". The
peak is measured in the same process, at the same torch thread count: a sample (the best of 3
timed 2048×2048 @ 2048×2048 fp32 torch.mm) before the first step and after each step, outside the
steps' times, so it sees the load the steps saw; the peak is the best sample (the worst is printed
beside it), so on a busy machine the utilisation is understated, not inflated. (Checked against
torch.utils.flop_counter.FlopCounterMode on a SmolLM2 parsona step: its matmul FLOPs agree exactly;
the counter does not count CPU attention, which step_flops adds.)

Peak RSS is the child's VmHWM (/proc/self/status), which starts fresh at exec; "train" is the
high-water mark over the training steps only (reset through /proc/self/clear_refs after set-up).
The machine is shared: the 1-minute load average before/after each contender, and the contender's
CPU share during its timed steps (CPU seconds / (wall seconds × torch threads)), are printed with
the numbers.

Targets: parsona s/step ≤ 0.3 × trl_best's on the same timed steps (same pairs), and ≤ 0.3 × trl's
(TRL's defaults); parsona peak RSS ≤ 4 GB; parsona model FLOP utilisation ≥ 50 % of the fp32
matmul peak.

    .venv/bin/python bench/train_speed.py                   # SmolLM2-135M-Instruct, ≈ 6-10 min on 2 busy cores
    .venv/bin/python bench/train_speed.py --contenders parsona,trl_best   # against TRL's best settings only
    .venv/bin/python bench/train_speed.py --contenders parsona --profile   # ours only, + torch.profiler tables
    .venv/bin/python bench/train_speed.py --tiny            # tiny random Llama: a wiring smoke run in ~1 min

Prints the tables, PASS/FAIL per target and the command that reproduces the run; the exit status is
1 when a target fails, 2 for a bad flag value. Each contender's per-step progress goes to stderr.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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

CONTENDERS = ("parsona", "trl", "trl_best")
OBJECTIVES = ("helpful", "harmless", "brevity")
from parsona.errors import ConfigError  # noqa: E402  (after the sys.path line)
from parsona.recipes.config_cli import is_internal, run_recipe  # noqa: E402
from parsona.recipes.train_preference_lora import Config as Recipe  # noqa: E402  (the recipe that is timed)
from train_contenders import run_parsona, run_trl  # noqa: E402  (bench/ is on sys.path)

RECIPE = Recipe()   # its defaults: every recipe flag below defaults to them, so the bench cannot drift
# The recipe's fields this script has flags for (same names); the rest keep the recipe's defaults.
RECIPE_FLAGS = ("n_objectives", "pairs_per_step", "max_length", "rank", "preference_rank", "alpha", "beta",
                "loss", "scalarization", "learning_rate", "pref_scale_lr_multiplier", "warmup_steps",
                "vertex_prob", "dirichlet_alpha", "all_labels_only", "seed", "precompute_reference")


@dataclass
class Config:
    """What to measure. Every field is a flag: ``pairs_per_step`` is ``--pairs-per-step``. The fields
    marked "recipe:" are the recipe's own, defaulting to its defaults (RECIPE_FLAGS)."""

    model: str = ""
    """Hugging Face id or local directory of the base model; empty: the packaged SmolLM2-135M-Instruct."""
    tiny: bool = False
    """Use a tiny random Llama + byte tokenizer (save_tiny_model) instead of --model: a wiring smoke run,
    timings meaningless."""
    contenders: str = "parsona,trl,trl_best"
    """Comma-separated, from: parsona, trl (TRL's defaults), trl_best (TRL's best CPU settings)."""
    n_objectives: int = RECIPE.n_objectives
    """recipe: m, objectives of the preference LoRA (the first m of helpful, harmless, brevity)."""
    pairs_per_step: int = RECIPE.pairs_per_step
    """recipe: preference pairs per optimizer step (TRL's per_device_train_batch_size); rows = 2 × this."""
    max_length: int = RECIPE.max_length
    """recipe: tokens per prompt + reply row."""
    rank: int = RECIPE.rank
    """recipe: k, the preference LoRA's shared singular values (TRL's LoRA has r = k + m·p)."""
    preference_rank: int = RECIPE.preference_rank
    """recipe: p, singular values per objective."""
    alpha: float = RECIPE.alpha
    """recipe: LoRA alpha for both (ΔW scaled by alpha / (k + m·p) in both)."""
    beta: float = RECIPE.beta
    """recipe: DPO β for both."""
    loss: str = RECIPE.loss
    """recipe: dpo, ipo or hinge (TRL's loss_type sigmoid, ipo, hinge)."""
    scalarization: str = RECIPE.scalarization
    """recipe: linear or tchebycheff."""
    learning_rate: float = RECIPE.learning_rate
    """recipe: AdamW learning rate for both."""
    pref_scale_lr_multiplier: float = RECIPE.pref_scale_lr_multiplier
    """recipe: the scales s learn at lr × this."""
    warmup_steps: int = RECIPE.warmup_steps
    """recipe: linear learning-rate warm-up steps (not --warmup)."""
    vertex_prob: float = RECIPE.vertex_prob
    """recipe: share of rows trained at a one-objective λ."""
    dirichlet_alpha: float = RECIPE.dirichlet_alpha
    """recipe: concentration of the Dirichlet over λ."""
    all_labels_only: bool = RECIPE.all_labels_only
    """recipe: train only on pairs labelled for every objective."""
    seed: int = RECIPE.seed
    """recipe: seed for LoRA init, data and λ sampling."""
    precompute_reference: bool = RECIPE.precompute_reference
    """recipe: reference log-probs computed before the loop (timed as set-up, not step time) into a fresh
    temporary store; off: the reference pass runs in every step."""
    warmup: int = 1
    """Steps run first and not timed, per contender."""
    parsona_steps: int = 5
    """Timed steps of the parsona recipe."""
    trl_steps: int = 3
    """Timed steps of each TRL contender (≈ 20-60 s each on 2 busy cores)."""
    trl_gradient_checkpointing: bool = True
    """The trl contender's gradient_checkpointing (True is TRL's default; trl_best always runs without)."""
    threads: int = 1
    """torch.set_num_threads(N) in each contender; 0 leaves torch's default (one per core). On cores shared
    with other jobs, 2 threads stall at every op's barrier: a parsona step took 62 s with 2 threads, 26 s with 1."""
    time_target: float = 0.3
    """Target: parsona s/step ≤ this × TRL's s/step."""
    rss_target_gb: float = 4.0
    """Target: parsona peak RSS ≤ this many GB (10^9 B)."""
    utilisation_target: float = 0.5
    """Target: parsona's model FLOP utilisation ≥ this share of the measured fp32 matmul peak."""
    profile: bool = False
    """After timing, run one more parsona step under torch.profiler and print its top ops (time and memory)."""
    # Internal: the parent re-runs this script with these two set, once per contender (run_contender);
    # they are flags so the child parses the same Config, but hidden from --help and from command().
    worker: str = field(default="", metadata={"internal": True})
    """Internal: run this one contender in this process (set by the parent)."""
    result_file: str = field(default="", metadata={"internal": True})
    """Internal: where the worker writes its result JSON (set by the parent)."""

    def __post_init__(self) -> None:
        for name in ("parsona_steps", "trl_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if not 0 < self.utilisation_target <= 1:
            raise ConfigError("utilisation_target", "Use a share in (0, 1], e.g. 0.5.",
                              problem=f"got {self.utilisation_target}")
        for name in ("warmup", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "Use 0 or more.", problem=f"got {getattr(self, name)}")
        if not 2 <= self.n_objectives <= len(OBJECTIVES):
            raise ConfigError("n_objectives", f"Use 2..{len(OBJECTIVES)} ({', '.join(OBJECTIVES)}).",
                              problem=f"got {self.n_objectives}")
        if set(self.names()) - set(CONTENDERS) or not self.names():
            raise ConfigError("contenders", f"Choose from {', '.join(CONTENDERS)}, comma-separated.",
                              problem=f"got {self.contenders!r}")
        if self.worker and self.worker not in CONTENDERS:
            raise ConfigError("worker", f"Use one of {', '.join(CONTENDERS)} (the parent sets it).",
                              problem=f"got {self.worker!r}")
        self.recipe()   # the recipe's own checks (a ConfigError naming the same field), before any contender starts

    def names(self) -> list[str]:
        return [c.strip() for c in self.contenders.split(",") if c.strip()]

    @property
    def objectives(self) -> tuple[str, ...]:
        return OBJECTIVES[: self.n_objectives]

    def steps(self, contender: str) -> int:
        return self.parsona_steps if contender == "parsona" else self.trl_steps

    def total_steps(self) -> int:
        return self.warmup + max(self.steps(c) for c in self.names())

    def recipe(self, model: str | None = None, output_dir: str = RECIPE.output_dir, reference_cache: str = "") -> Recipe:
        """The timed config: the recipe's defaults, this script's recipe flags, and the bench's own steps
        (and, where the recipe keeps reference log-probs, where: the worker passes a fresh directory)."""
        return dataclasses.replace(RECIPE, **{name: getattr(self, name) for name in RECIPE_FLAGS},
                                   objectives=self.objectives, model=model, output_dir=output_dir,
                                   max_steps=self.warmup + self.parsona_steps, reference_cache=reference_cache)

    def lora_rank(self) -> int:
        """k + m·p: the preference LoRA's rank as a PEFT LoRA (to_peft), and TRL's LoRA rank."""
        return self.rank + self.n_objectives * self.preference_rank


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
        runs = {"parsona": run_parsona, "trl": run_trl, "trl_best": lambda c, t: run_trl(c, t, best=True)}
        result = runs[cfg.worker](cfg, Path(tmp))
    Path(cfg.result_file).write_text(json.dumps(result))


# -- the parent: run each contender in its own process, then report -----------------------------------------
def flags(cfg: Config, internal: bool = False) -> list[str]:
    """``cfg`` as this script's flags, every field spelled out (the internal ones only if asked)."""
    parts = []
    for f in dataclasses.fields(cfg):
        if is_internal(f) and not internal:
            continue
        flag, value = "--" + f.name.replace("_", "-"), getattr(cfg, f.name)
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            parts += [flag, str(value)]
    return parts


def command(cfg: Config) -> str:
    """The exact command line that reproduces ``cfg`` (every public field spelled out)."""
    return " ".join(shlex.quote(p) for p in [".venv/bin/python", "bench/train_speed.py", *flags(cfg)])


def run_contender(cfg: Config, name: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="parsona-train-speed-") as tmp:
        out = Path(tmp) / "result.json"
        child = dataclasses.replace(cfg, worker=name, result_file=str(out))
        argv = [sys.executable, str(Path(__file__).resolve()), *flags(child, internal=True)]
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
    times, tokens, flops = r["times"][w:], r["tokens"][w:], r["flops"][w:]
    achieved = sum(flops) / sum(times)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times),
            "tok_s": sum(tokens) / sum(times), "tok_step": sum(tokens) / len(tokens),
            "gflop_step": sum(flops) / len(flops) / 1e9, "achieved": achieved, "utilisation": achieved / r["peak_flops"],
            "computed_gflop_step": (sum(r["computed_flops"][w:]) / len(flops) / 1e9) if "computed_flops" in r else None}


def gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def label(name: str, r: dict) -> str:
    return name + (" (gc)" if name == "trl" and r.get("gradient_checkpointing") else "")


def timed_config(cfg: Config) -> list[str]:
    """The recipe config the parsona contender times, and what differs from the recipe's defaults."""
    timed = cfg.recipe(model="tiny random Llama (save_tiny_model)" if cfg.tiny else (cfg.model or None),
                       output_dir="(a temporary directory)",
                       reference_cache="(a fresh temporary directory)" if cfg.precompute_reference else "")
    default = dataclasses.asdict(RECIPE)
    flagged = [f"{k}={v!r}" for k, v in dataclasses.asdict(timed).items()
               if k in RECIPE_FLAGS and v != default[k]]
    by_bench = [f"{k}={v!r}" for k, v in dataclasses.asdict(timed).items()
                if k not in RECIPE_FLAGS and v != default[k]]
    return [f"timed config: parsona.recipes.train_preference_lora.Config({', '.join(f'{k}={v!r}' for k, v in dataclasses.asdict(timed).items())})",
            f"  differs from the recipe's defaults by flag: {', '.join(flagged) or 'nothing'}",
            f"  set by the bench (where and how long it runs): {', '.join(by_bench) or 'nothing'}",
            f"  TRL's PEFT LoRA: r = k + m·p = {cfg.lora_rank()}, lora_alpha = {cfg.alpha:g}; trl_best: "
            "precompute_ref_log_probs=True, gradient_checkpointing=False"]


def compare(cfg: Config, results: dict, stats: dict, theirs_name: str) -> tuple[str, bool]:
    """parsona vs one TRL contender on their common timed steps (the same pairs): a line and a target."""
    w = cfg.warmup
    common = min(cfg.parsona_steps, cfg.trl_steps)
    ours = results["parsona"]["times"][w : w + common]
    theirs = results[theirs_name]["times"][w : w + common]
    ratio = sum(ours) / sum(theirs)
    same_tokens = results["parsona"]["tokens"][: w + common] == results[theirs_name]["tokens"][: w + common]
    shown = label(theirs_name, results[theirs_name])
    print(f"parsona / {shown} time on the {common} common timed steps (same pairs): {sum(ours):.1f} s / "
          f"{sum(theirs):.1f} s = {ratio:.3f}×; median ratio {stats['parsona']['median'] / stats[theirs_name]['median']:.3f}×; "
          f"{shown} / parsona speed-up {1 / ratio:.1f}×; token counts per step identical: {same_tokens}")
    return f"parsona s/step ≤ {cfg.time_target:g} × {shown}'s (measured {ratio:.3f}×)", ratio <= cfg.time_target


def main(cfg: Config) -> bool:
    """Run every contender, print the tables and the targets; True when every target checked passes."""
    if cfg.worker:
        worker_main(cfg)
        return True
    if {"trl", "trl_best"} & set(cfg.names()) and importlib.util.find_spec("trl") is None:
        raise ConfigError("contenders", 'Install the `bench` extra (.venv/bin/pip install -e ".[bench]"), or time '
                          "the recipe alone with --contenders parsona.", problem="trl is not installed")
    print("\n".join(timed_config(cfg)), file=sys.stderr, flush=True)
    started = time.perf_counter()
    results = {}
    for name in cfg.names():
        print(f"running {name} ({cfg.warmup} warm-up + {cfg.steps(name)} timed steps) ...", file=sys.stderr, flush=True)
        results[name] = run_contender(cfg, name)
    stats = {name: summarize(r) for name, r in results.items()}

    model = "tiny random Llama" if cfg.tiny else (cfg.model or "SmolLM2-135M-Instruct (packaged)")
    versions = {k: v for r in results.values() for k, v in r["versions"].items()}
    print(f"\n# Preference-LoRA training speed vs TRL DPOTrainer ({model}, fp32, CPU, {os.cpu_count()} cores)")
    print(f"{cfg.pairs_per_step} pairs/step ({2 * cfg.pairs_per_step} rows), max_length {cfg.max_length}, "
          f"preference LoRA k={cfg.rank} + m·p={cfg.n_objectives}·{cfg.preference_rank} (TRL r={cfg.lora_rank()}), "
          f"alpha {cfg.alpha:g}, m={cfg.n_objectives} ({', '.join(cfg.objectives)}); {cfg.warmup} warm-up step(s) untimed; "
          + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())))
    print("\n".join(timed_config(cfg)))
    if "parsona" in results:   # the worker reports the config it timed: it must be the one printed
        where = ("model", "output_dir", "reference_cache")   # the worker's own temporary paths
        timed = {k: v for k, v in results["parsona"]["recipe_config"].items() if k not in where}
        printed = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(cfg.recipe()))).items() if k not in where}
        if timed != printed:
            raise SystemExit(f"bench bug: the parsona contender timed {timed}, not the printed config")
    print(f"\n| {'contender':<10} | {'steps':>5} | {'s/step (median)':>15} | {'min..max':>13} | {'tokens/step':>11} | "
          f"{'tokens/s':>8} | {'setup: ref precompute s':>23} | {'peak RSS GB':>11} | {'train-peak GB':>13} | "
          f"{'setup-peak GB':>13} | {'CPU share':>9} | {'load 1m before→after':>20} | {'trainable':>9} |")
    print(f"|{'-' * 12}|{'-' * 6}:|{'-' * 16}:|{'-' * 14}:|{'-' * 12}:|{'-' * 9}:|{'-' * 24}:|{'-' * 12}:|{'-' * 14}:|"
          f"{'-' * 14}:|{'-' * 10}:|{'-' * 21}:|{'-' * 10}:|")
    for name, r in results.items():
        s = stats[name]
        pre = "n/a (in the step)" if r.get("precompute_s") is None else f"{r['precompute_s']:.2f}"
        print(f"| {label(name, r):<10} | {s['n']:>5} | {s['median']:>15.2f} | {s['min']:>6.2f}..{s['max']:<6.2f} | "
              f"{s['tok_step']:>11.0f} | {s['tok_s']:>8.0f} | {pre:>23} | {gb(r['peak_rss']):>11} | "
              f"{gb(r['train_peak_rss']):>13} | {gb(r['setup_peak_rss']):>13} | {r['cpu_share'] * 100:>8.0f}% | "
              f"{r['load_before'][0]:>9.2f}→{r['load_after'][0]:<10.2f} | {r['trainable_params']:>9,} |")
    for name, r in results.items():
        print(f"{name} per-step seconds (warm-up first): " + ", ".join(f"{t:.2f}" for t in r["times"])
              + f"; tokens: {r['tokens']}")

    print("\n## Model FLOP utilisation (useful FLOPs: step_flops; peak: fp32 torch.mm, same process and threads)\n")
    print(f"FLOP model: {next(iter(results.values()))['flop_model']}")
    if "reference" in results.get("parsona", {}) and results["parsona"]["reference"]:
        print(f"parsona reference log-probs: {results['parsona']['reference']}")
    print(f"\n| {'contender':<10} | {'model GFLOP/step':>16} | {'achieved GFLOP/s':>16} | {'peak GFLOP/s (worst sample)':>27} | "
          f"{'utilisation':>11} | {'computed GFLOP/step':>19} |")
    print(f"|{'-' * 12}|{'-' * 17}:|{'-' * 17}:|{'-' * 28}:|{'-' * 12}:|{'-' * 20}:|")
    for name, r in results.items():
        s = stats[name]
        computed = "(= model)" if s["computed_gflop_step"] is None else f"{s['computed_gflop_step']:.1f}"
        peak = f"{r['peak_flops'] / 1e9:.1f} ({min(r['peak_samples']) / 1e9:.1f})"
        print(f"| {label(name, r):<10} | {s['gflop_step']:>16.1f} | {s['achieved'] / 1e9:>16.1f} | "
              f"{peak:>27} | {s['utilisation'] * 100:>10.1f}% | {computed:>19} |")
    print("TRL's model FLOPs are its rows' own (each row runs its prompt; no padding, no recompute), its computed "
          "ones include padding to the longest row, the LM head at every position and again in the backward, and "
          "gradient checkpointing's re-forward; parsona's computed ≈ its model FLOPs (its masked attention blocks aside).")

    checks = []
    if "parsona" in results and any(n in results for n in ("trl_best", "trl")):
        print()
        for theirs in ("trl_best", "trl"):
            if theirs in results:
                checks.append(compare(cfg, results, stats, theirs))
    if "parsona" in results:
        peak = results["parsona"]["peak_rss"]
        checks.append((f"parsona peak RSS ≤ {cfg.rss_target_gb:g} GB (measured {peak / 1e9:.2f} GB)",
                       peak <= cfg.rss_target_gb * 1e9))
        s = stats["parsona"]
        checks.append((f"parsona model FLOP utilisation ≥ {cfg.utilisation_target * 100:g} % of the fp32 matmul peak "
                       f"(measured {s['utilisation'] * 100:.1f} %: {s['achieved'] / 1e9:.1f} of "
                       f"{results['parsona']['peak_flops'] / 1e9:.1f} GFLOP/s)", s["utilisation"] >= cfg.utilisation_target))
    if "profile" in results.get("parsona", {}):
        print("\n## torch.profiler: one parsona step\n")
        print(results["parsona"]["profile"])

    from bench_targets import report as report_targets

    if not checks:
        print("\n(every target needs the parsona contender)")
    return report_targets(checks, time.perf_counter() - started, command(cfg))


if __name__ == "__main__":
    sys.exit(0 if run_recipe(Config, main) else 1)   # exit status 1 when a target fails
