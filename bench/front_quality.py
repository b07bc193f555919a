"""How good a trade-off front does each method learn, for how much compute? (tracker issue 5)

Methods, all on one base model, the same HH pairs (training.front_data.front_pairs) and one LoRA rank:

  pref_linear   preference LoRA (Panacea), DPO, linear scalarization      max_steps steps
  pref_tcheb    the same with Tchebycheff scalarization                   max_steps steps
  soups_linear  Rewarded Soups: a DPO LoRA per objective, factors interpolated per λ   max_steps in total
  soups_cat     the same LoRAs, exact mixture Σ λ_i ΔW_i per λ
  dps           one LoRA per λ of a (coarser) grid, fixed-λ scalarized DPO  n_dps × dps_steps_each

Each front is scored on held-out pairs at every λ of simplex_grid(2, n_partitions) (dps: at its
own grid points): per-objective preference accuracy of the DPO implicit reward (the cheap eval,
parsona.evaluate). HV's reference point is fixed before the run: (0.4, 0.4), chance minus 0.1.
IGD+ is measured against the union front of all methods of the same seed; with several --seeds a
last table gives each method's mean ± sd and judges the targets on the means, with the 95 %
interval of each HV ratio on the means (one paired bootstrap over the eval pairs, seeds fixed).
Compute is optimizer steps × tokens (training tokens counted from attention masks), as the training summaries log it;
train_s is each method's training time, summed over every run that led to it.

Long runs survive being killed: rerun the same command with the same --output-dir and the
preference LoRAs continue from their last checkpoint (every 20 steps), the baselines skip every
LoRA already written, and each method's scored front (out/seed*/eval/<method>-<settings hash>.npz)
is reused when every setting matches. So methods can run in separate processes on the same --output-dir (say
--methods pref_linear in one, --methods soups_linear,soups_cat in another), and a last run with
all of them trains and scores nothing new and prints the combined table. On these 2 cores a step
at --max-length 128 takes ≈ 6 s and HH's held-out accuracy barely leaves chance within 120 steps,
so a run that can meet the targets (≥ 1,000 steps, 3 seeds, ≥ 200 eval pairs) is a many-hour or
GPU job.

Targets from the issue, printed with the measured ratios:
  HV(pref_linear) ≥ 1.10 × HV(Rewarded Soups) at equal compute (both soups shown)
  HV(pref_linear) ≥ 0.95 × HV(dps) while using ≤ 1/3 of dps's optimizer steps (tokens shown too)
  Spearman ρ(λ_i, accuracy_i) ≥ 0.9 per objective (pref_linear)

    .venv/bin/python bench/front_quality.py                       # SmolLM2, defaults: a ≈ 40 min smoke run
    # the run reported in issue 5, per seed S: two processes of one thread side by side (≈ 2.2 h each seed)
    F="--max-steps 120 --max-length 128 --eval-pairs 200 --warmup-steps 5 --learning-rate 2e-4 --output-dir runs/fq11"
    OMP_NUM_THREADS=1 .venv/bin/python bench/front_quality.py $F --seeds S --methods pref_linear,dps &
    OMP_NUM_THREADS=1 .venv/bin/python bench/front_quality.py $F --seeds S --methods soups_linear,soups_cat,pref_tcheb; wait
    .venv/bin/python bench/front_quality.py $F --seeds 0,1,2      # then: scores nothing again; every seed, mean ± sd
    # issue 16's run at 4× that budget: the same, with --max-steps 480 --output-dir runs/fq480 (dps: 3 × 480 steps)
    .venv/bin/python bench/front_quality.py --model DIR            # a tiny model (save_tiny_model): seconds

Real eval (greedy replies scored by trained reward models) is behind ``--reward-models
helpful=DIR,harmless=DIR --reference-point base`` (BradleyTerryReward dirs, e.g. from
``bench/reward_accuracy.py --save-dir``; ``base``: the base model's mean rewards minus 0.4, or give a,b).
That point is kept in out/reward-reference-<hash>.json, so every seed and process scores under one;
a reward model refit in the same directory is a new eval (its files are part of the cache key).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parsona.errors import ConfigError
from parsona.recipes.train_preference_lora import Config as Recipe   # the preference LoRA's defaults

COLUMNS = ["method", "train_steps", "train_tokens", "train_s", "eval_seconds", "hypervolume", "reference_point",
           "igd_plus", "sparsity", "inner_product", "spearman_helpful", "spearman_harmless", "n_non_dominated"]
OBJECTIVES = ("helpful", "harmless")
METHODS = ("pref_linear", "pref_tcheb", "soups_linear", "soups_cat", "dps")


@dataclass
class Config:
    """Every field is a flag: ``max_steps`` is ``--max-steps``. Every field but output_dir, methods, seeds
    and eval_batch is part of a scored front's cache key (eval_settings), so keep their types as they are."""

    model: str | None = None
    """Model dir or id; None: the packaged SmolLM2-135M-Instruct."""
    output_dir: str = "runs/front_quality"
    """Adapters, results.json, front.png."""
    seeds: str = "0"
    """Comma-separated seeds."""
    max_steps: int = 8
    """Preference-LoRA steps = Rewarded Soups' total."""
    pairs_per_step: int = 4
    """Preference pairs per optimizer step."""
    max_length: int = 64
    """Tokens per prompt + reply."""
    learning_rate: float = 1e-3
    """AdamW learning rate, every method."""
    warmup_steps: int = 2
    """Linear learning-rate warm-up steps, every method."""
    rank: int = 8
    """LoRA rank of the baselines (Rewarded Soups, dps)."""
    pref_rank: int = Recipe.rank
    """Preference LoRA only: its shared rank k (the recipe's default)."""
    pref_alpha: float = Recipe.alpha
    """Preference LoRA's alpha: ΔW scaled by alpha / (k + 2p) (the recipe's default)."""
    all_labels_only: bool = Recipe.all_labels_only
    """Every method trains only on pairs labelled for both objectives (the recipe's default)."""
    preference_rank: int = Recipe.preference_rank
    """Preference LoRA: singular values per objective p (1: Panacea; the recipe's default)."""
    beta: float = 0.1
    """DPO's β, in training and in the eval's implicit reward."""
    pref_scale_lr_multiplier: float = 1.0
    """Preference LoRA: the scales s learn at learning rate × this."""
    vertex_prob: float = 0.2
    """Preference LoRA: share of rows trained at a one-objective λ (the recipe's default)."""
    eval_pairs: int = 16
    """Held-out pairs, both-labelled first."""
    eval_batch: int = 16
    """Pairs per eval forward."""
    n_partitions: int = 10
    """Eval grid simplex_grid(2, n): n + 1 λ."""
    dps_partitions: int = 2
    """dps grid: n + 1 LoRAs."""
    dps_steps_each: int = 0
    """Steps per dps LoRA (0: ceil(3 max_steps / n_dps))."""
    methods: str = ",".join(METHODS)
    """Comma-separated methods to train and score (pref_linear, pref_tcheb, soups_linear, soups_cat, dps)."""
    reward_models: str = ""
    """Real eval: helpful=DIR,harmless=DIR (BradleyTerryReward dirs)."""
    reference_point: str = ""
    """HV reference point for real eval rewards: a,b, or base (when empty: the base model's mean reward on
    the eval prompts minus 0.4, i.e. 10 points of preference probability)."""
    max_new_tokens: int = 32
    """Tokens per greedy reply of the real eval."""

    def __post_init__(self) -> None:
        methods = method_list(self)
        if not methods or set(methods) - set(METHODS):
            raise ConfigError("methods", f"Choose from {','.join(METHODS)}.", problem=f"got {self.methods!r}")
        if not all(s.strip().lstrip("-").isdigit() for s in self.seeds.split(",")):
            raise ConfigError("seeds", "Give comma-separated whole numbers, e.g. 0,1,2.", problem=f"got {self.seeds!r}")


def method_list(cfg: Config) -> list[str]:
    return [m.strip() for m in cfg.methods.split(",") if m.strip()]


def eval_set(n: int):
    """Held-out pairs: both-labelled first (each serves both objectives), sorted by length (less padding)."""
    from parsona.training.front_data import front_pairs

    _, pairs = front_pairs(OBJECTIVES)
    pairs = sorted(pairs, key=lambda p: (-len(p.labels), p.prompt, p.response_a))[:n]
    return sorted(pairs, key=lambda p: len(p.prompt) + len(p.response_a) + len(p.response_b))


def train_all(cfg: Config, seed: int, out: Path, methods: list[str]) -> dict[str, dict]:
    """Train what ``methods`` need; return {run: {dir, steps, tokens, seconds}}."""
    from parsona.front_policies import FRONT_FILE
    from parsona.recipes import baselines, train_preference_lora

    common = dict(model=cfg.model, objectives=OBJECTIVES, beta=cfg.beta, rank=cfg.rank, learning_rate=cfg.learning_rate,
                  warmup_steps=cfg.warmup_steps, pairs_per_step=cfg.pairs_per_step, max_length=cfg.max_length, seed=seed,
                  all_labels_only=cfg.all_labels_only)
    runs = {}
    for scal in ("linear", "tcheb"):
        if f"pref_{scal}" in methods:
            d = train_preference_lora.main(train_preference_lora.Config(
                output_dir=str(out / f"pref_{scal}"), max_steps=cfg.max_steps, checkpoint_every=20,
                scalarization="linear" if scal == "linear" else "tchebycheff", vertex_prob=cfg.vertex_prob,
                pref_scale_lr_multiplier=cfg.pref_scale_lr_multiplier, preference_rank=cfg.preference_rank, alpha=cfg.pref_alpha,
                **{**common, "rank": cfg.pref_rank}))
            s = json.loads((d / "training_summary.json").read_text())
            runs[f"pref_{scal}"] = dict(dir=d, steps=s["steps"], tokens=s["tokens"], seconds=s["seconds"])
    n_dps = cfg.dps_partitions + 1
    each = cfg.dps_steps_each or math.ceil(3 * cfg.max_steps / n_dps)
    for method, run in (("rewarded_soups", "soups"), ("dps", "dps")):
        if any(m.startswith(run) for m in methods):
            d = baselines.main(baselines.Config(method=method, output_dir=str(out / "baselines"), max_steps=cfg.max_steps,
                                                n_partitions=cfg.dps_partitions, dps_steps_each=each, **common))
            f = json.loads((d / FRONT_FILE).read_text())
            runs[run] = dict(dir=d, steps=f["total_steps"], tokens=f["total_tokens"],
                             seconds=sum(lora["seconds"] for lora in f["loras"]), budget=f["budget"])
    return runs


def evaluate_all(cfg: Config, runs: dict, methods: list[str], pairs, out: Path, reward_models: dict | None = None) -> list:
    """Score every method's front; each result is kept under out/eval/, so a rerun (or a second process
    given other --methods and the same --output-dir) reuses it instead of scoring it again."""
    from parsona.base_model import load_base_model
    from parsona.fronts import evaluate_methods
    from parsona.objectives import simplex_grid
    from parsona.recipes.eval_front import reward_reference

    model, tokenizer = load_base_model(cfg.model, device="cpu", dtype=torch.float32)
    settings = {method: eval_settings(cfg, method) for method in methods}
    cached = {method: load_result(cache_path(out, settings[method]), settings[method]) for method in methods}
    reference_point = None
    if reward_models is not None and any(r is None for r in cached.values()):   # before any adapter is attached
        reference_point = shared_reference_point(reference_file(cfg), cached, lambda: reward_reference(
            cfg.reference_point or "base", model, tokenizer, pairs, reward_models, OBJECTIVES,
            max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length, batch_size=cfg.eval_batch))
        print(f"HV reference point for rewards: {[round(float(x), 4) for x in reference_point]} "
              f"({cfg.reference_point or 'base'})")
    todo = {m: (lambda m=m: build_policy(model, m, runs[run_name(m)]["dir"])) for m in methods if cached[m] is None}
    scored = evaluate_methods(
        model, tokenizer, todo, pairs, OBJECTIVES, np.asarray(simplex_grid(2, cfg.n_partitions), dtype=float),
        grids={"dps": np.asarray(simplex_grid(2, cfg.dps_partitions), dtype=float)},   # dps: only its own λ
        beta=cfg.beta, max_length=cfg.max_length, batch_size=cfg.eval_batch, reward_models=reward_models,
        reference_point=reference_point, max_new_tokens=cfg.max_new_tokens,
        on_result=lambda r: save_result(cache_path(out, settings[r.method]), settings[r.method], r))   # kept at once
    by_method = {**{m: r for m, r in cached.items() if r is not None}, **{r.method: r for r in scored}}
    results = []
    for method in methods:
        run, result = runs[run_name(method)], by_method[method]
        result.info = {"train_steps": run["steps"], "train_tokens": run["tokens"], "train_s": round(run["seconds"], 1)}
        results.append(result)
    return results


def run_name(method: str) -> str:
    """The training run a method's front comes from: soups_linear and soups_cat share the soups LoRAs."""
    return method.split("_")[0] if method.startswith(("soups", "dps")) else method


def build_policy(model, method: str, directory: Path):
    """Attach ``method``'s trained adapter(s) to ``model`` as a front policy."""
    from parsona.adapters import load_adapter
    from parsona.front_policies import PreferenceLoRAPolicy, load_front_policy

    if method.startswith("pref"):
        return PreferenceLoRAPolicy(load_adapter(model, directory))
    return load_front_policy(model, directory, mode=method.split("_")[1] if "_" in method else "linear")


def reference_file(cfg: Config) -> Path:
    """Where the reward fronts' HV reference point is kept: beside every seed, keyed by what it depends on."""
    keys = ("model", "eval_pairs", "max_length", "max_new_tokens", "reward_models", "reference_point")
    key = json.dumps({**{k: getattr(cfg, k) for k in keys}, "reward_files": reward_fingerprint(cfg.reward_models)})
    return Path(cfg.output_dir) / f"reward-reference-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


def shared_reference_point(path: Path, cached: dict, fix) -> np.ndarray:
    """The HV reference point for reward fronts still to score: the one kept at ``path`` (so every process
    and seed scores under one point: compare() needs it), else that of a front cached before the file
    existed, else ``fix()`` (it generates, so only then); kept at ``path`` from then on."""
    from parsona.io import write_json

    if path.is_file():
        return np.asarray(json.loads(path.read_text()), dtype=float)
    scored = [r for r in cached.values() if r is not None]
    point = scored[0].reference_point if scored else np.asarray(fix(), dtype=float)
    write_json(path, [float(x) for x in point])
    return point


def reward_fingerprint(specs: str) -> str:
    """sha256 of the saved reward models' files: a reward refit in the same directory is another eval."""
    from parsona.recipes.eval_front import reward_specs

    digest = hashlib.sha256()
    for objective, directory in sorted(reward_specs([s for s in specs.split(",") if s]).items()):
        for f in sorted(Path(directory).glob("*")) if Path(directory).is_dir() else ():
            digest.update(f"{objective}/{f.name}".encode() + f.read_bytes())
    return digest.hexdigest()[:16]


def eval_settings(cfg: Config, method: str) -> str:
    """What a cached front depends on: every flag but where it goes, which methods and seeds run, and the
    eval batch size; plus the method and the reward models' files. Reused only when this matches exactly."""
    skip = {"output_dir", "methods", "seeds", "eval_batch"}
    rewards = {"reward_files": reward_fingerprint(cfg.reward_models)} if cfg.reward_models else {}
    return json.dumps({"method": method, **{k: v for k, v in sorted(vars(cfg).items()) if k not in skip}, **rewards})


def cache_path(out: Path, settings: str) -> Path:
    """out/eval/<method>-<hash of the settings>.npz: one file per eval set-up, so scoring the same adapters
    another way (more pairs, the reward eval) keeps the fronts already scored."""
    method = json.loads(settings)["method"]
    return out / "eval" / f"{method}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.npz"


def save_result(path: Path, settings: str, result) -> None:
    """A FrontResult as .npz (parsona.fronts: no pickle, atomic), with the settings that made it."""
    from parsona.fronts import save_front

    save_front(result, path, settings=settings)


def load_result(path: Path, settings: str):
    """The FrontResult saved at ``path`` for exactly these settings, else None (score it again)."""
    from parsona.fronts import front_settings, load_front

    if not path.is_file() or front_settings(path) != settings:
        return None
    print(f"reusing {path} (same settings)")
    return load_front(path)


def targets(rows: dict) -> list[str]:
    lines = []
    p = rows.get("pref_linear")
    if p is None:
        return lines
    hv = p["hypervolume"]
    for soup in ("soups_linear", "soups_cat"):
        if soup in rows:
            r = _ratio(hv, rows[soup]["hypervolume"])
            tok = p["train_tokens"] / rows[soup]["train_tokens"]
            lines.append(f"HV(pref_linear) / HV({soup}) = {r:.3f}  (target ≥ 1.10: {'MET' if r >= 1.10 else 'not met'}; "
                         f"tokens ratio {tok:.2f}, steps {p['train_steps']} vs {rows[soup]['train_steps']})")
    if "dps" in rows:
        r = _ratio(hv, rows["dps"]["hypervolume"])
        c = p["train_steps"] / rows["dps"]["train_steps"]
        tok = p["train_tokens"] / rows["dps"]["train_tokens"]
        ok = r >= 0.95 and c <= 1 / 3 + 1e-9
        lines.append(f"HV(pref_linear) / HV(dps) = {r:.3f} at {c:.3f} × dps's steps ({tok:.3f} × its tokens) "
                     f"(target ≥ 0.95 at ≤ 0.333: {'MET' if ok else 'not met'})")
    for o in OBJECTIVES:
        rho = p[f"spearman_{o}"]
        lines.append(f"Spearman ρ(λ_{o}, {p['metric']}_{o}) = {rho:.3f}  (target ≥ 0.9: "
                     f"{'MET' if rho == rho and rho >= 0.9 else 'not met'})")
    return lines


SEED_COLUMNS = ("hypervolume", "igd_plus", "spearman_helpful", "spearman_harmless", "train_s", "eval_seconds")


def across_seeds(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    """Several seeds: each method's mean ± sd, then the targets judged on the means (the ratio of mean HVs,
    steadier than a mean of ratios), with each seed's own HV ratio beside them."""
    from parsona.evaluate import format_table
    from parsona.fronts import seed_means

    seeds = sorted(per_seed)
    stats = seed_means({s: per_seed[s] for s in seeds}, (*SEED_COLUMNS, "train_steps", "train_tokens"))
    means, table = {}, []
    for m, columns in stats.items():
        means[m] = {**{k: mean for k, (mean, _) in columns.items()}, "metric": per_seed[seeds[0]][m]["metric"]}
        means[m].update(train_steps=round(means[m]["train_steps"]), train_tokens=round(means[m]["train_tokens"]))
        table.append({"method": m, **{k: f"{columns[k][0]:.4g} ± {columns[k][1]:.2g}" for k in SEED_COLUMNS}})
    lines = [f"\nmean ± sd over seeds {','.join(map(str, seeds))}", format_table(table, ["method", *SEED_COLUMNS]),
             "targets on the means:", *targets(means)]
    for b in ("soups_linear", "soups_cat", "dps"):
        if "pref_linear" in means and b in means:
            ratios = [_ratio(per_seed[s]["pref_linear"]["hypervolume"], per_seed[s][b]["hypervolume"]) for s in seeds]
            lines.append(f"  HV(pref_linear) / HV({b}) per seed: " + ", ".join(f"{r:.3f}" for r in ratios))
    return lines


def intervals(results: list, n_resamples: int = 1000) -> list[str]:
    """95 % intervals of the target statistics: a paired bootstrap over the eval pairs (parsona.bootstrap)."""
    from parsona.bootstrap import bootstrap_interval
    from parsona.evaluate import spearman
    from parsona.objectives import hypervolume

    by = {r.method: r for r in results}
    if "pref_linear" not in by:
        return []
    ref, grid = by["pref_linear"].reference_point, by["pref_linear"].preferences
    stats = {f"HV(pref_linear) / HV({b})": (lambda f, b=b: _ratio(hypervolume(f["pref_linear"], ref), hypervolume(f[b], ref)))
             for b in ("soups_linear", "soups_cat", "dps") if b in by}
    for i, o in enumerate(OBJECTIVES):
        stats[f"Spearman ρ {o} (pref_linear)"] = lambda f, i=i: spearman(grid[:, i], f["pref_linear"][:, i])
    if any(r.unit_scores is None for r in results):   # a reward front scored before per-prompt rewards were kept
        return ["95% intervals: rescore to get them (this front has no per-prompt rewards)"]
    n, unit = results[0].unit_scores.shape[1], "pairs" if results[0].metric == "accuracy" else "prompts"
    lines = [f"95% intervals, paired bootstrap over the {n} eval {unit} ({n_resamples} resamples):"]
    for name, stat in stats.items():
        low, high = bootstrap_interval(results, stat, n_resamples=n_resamples)
        lines.append(f"  {name}: [{low:.3f}, {high:.3f}]")
    return lines


def seed_intervals(results_by_seed: dict[int, list], n_resamples: int = 1000) -> list[str]:
    """95 % intervals of HV(pref_linear) / HV(baseline) on the means over seeds, the statistic the targets
    judge: one paired bootstrap over the eval pairs (every seed and method scored on the same pairs),
    each resample recomputing every seed's fronts, the seeds themselves fixed."""
    from parsona.bootstrap import bootstrap_interval
    from parsona.objectives import hypervolume

    seeds = sorted(results_by_seed)
    tagged = [dataclasses.replace(r, method=f"{r.method}@{s}") for s in seeds for r in results_by_seed[s]]
    if any(r.unit_scores is None for r in tagged):
        return []
    ref = tagged[0].reference_point

    def mean_hv(fronts, method: str) -> float:
        return float(np.mean([hypervolume(fronts[f"{method}@{s}"], ref) for s in seeds]))

    present = {r.method.split("@")[0] for r in tagged}
    if "pref_linear" not in present:
        return []
    lines = [f"95% intervals on the means over seeds {','.join(map(str, seeds))} (paired bootstrap over the eval "
             f"{'pairs' if tagged[0].metric == 'accuracy' else 'prompts'}, {n_resamples} resamples):"]
    for b in ("soups_linear", "soups_cat", "dps"):
        if b in present:
            low, high = bootstrap_interval(tagged, lambda f, b=b: _ratio(mean_hv(f, "pref_linear"), mean_hv(f, b)),
                                           n_resamples=n_resamples)
            lines.append(f"  HV(pref_linear) / HV({b}), means over seeds: [{low:.3f}, {high:.3f}]")
    return lines


def _ratio(a: float, b: float) -> float:
    """a / b for hypervolumes: inf when only b is 0, NaN when both are (nothing to compare: never "met")."""
    return a / b if b > 0 else math.inf if a > 0 else math.nan


def main(cfg: Config) -> None:
    from parsona.evaluate import compare, format_table
    from parsona.io import write_json
    from parsona.plots import write_plots

    reward_models = None
    if cfg.reward_models:   # loaded (and a malformed spec fails) now, not after hours of training
        from parsona.recipes.eval_front import load_reward_models, reference_values

        reward_models = load_reward_models(cfg.reward_models.split(","), OBJECTIVES)
        reference_values(cfg.reference_point or "base")
    methods = method_list(cfg)
    out_root = Path(cfg.output_dir)
    pairs = eval_set(cfg.eval_pairs)
    began = time.perf_counter()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"eval: {len(pairs)} held-out pairs ({sum('helpful' in p.labels for p in pairs)} helpful-labelled, "
          f"{sum('harmless' in p.labels for p in pairs)} harmless-labelled), grid simplex_grid(2, {cfg.n_partitions}), "
          f"dps grid simplex_grid(2, {cfg.dps_partitions})")
    per_seed, results_by_seed = {}, {}
    for seed in [int(s) for s in cfg.seeds.split(",")]:
        out = out_root / f"seed{seed}"
        runs = train_all(cfg, seed, out, methods)
        results = evaluate_all(cfg, runs, methods, pairs, out, reward_models)
        rows, results_by_seed[seed] = compare(results), results
        print(f"\nseed {seed}  (metric: {results[0].metric}; HV reference point {results[0].reference_point.tolist()}, "
              "fixed before the run; IGD+ vs the union front of these methods)")
        print(format_table(rows, COLUMNS))
        for r in results:
            print(f"  {r.method:13s} " + "  ".join(f"λ={lam[0]:.1f}:({a[0]:.3f},{a[1]:.3f})" for lam, a in zip(r.preferences, r.points)))
        per_seed[seed] = {r["method"]: r for r in rows}
        print("\n".join(targets(per_seed[seed])))
        print("\n".join(intervals(results)))
        write_json(out / "results.json", [json.loads(r.to_json()) for r in results])
        write_plots(results, out)
    if len(per_seed) > 1:
        print("\n".join(across_seeds(per_seed)))
        print("\n".join(seed_intervals(results_by_seed)))
    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s; results and front.png under {out_root}")


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
