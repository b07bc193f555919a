"""How good a trade-off front does each method learn, for how much compute? (tracker issue 5)

Methods, all on one base model, the same HH pairs (front_data.front_pairs) and one LoRA rank:

  pref_linear   preference LoRA (Panacea), DPO, linear scalarization      max_steps steps
  pref_tcheb    the same with Tchebycheff scalarization                   max_steps steps
  soups_linear  Rewarded Soups: a DPO LoRA per objective, factors interpolated per λ   max_steps in total
  soups_cat     the same LoRAs, exact mixture Σ λ_i ΔW_i per λ
  dps           one LoRA per λ of a (coarser) grid, fixed-λ scalarized DPO  n_dps × dps_steps_each

Each front is scored on held-out pairs at every λ of simplex_grid(2, n_partitions) (dps: at its
own grid points): per-objective preference accuracy of the DPO implicit reward (the cheap eval,
parsona.evaluate). HV's reference point is fixed before the run: (0.4, 0.4), chance minus 0.1.
IGD+ is measured against the union front of all methods of the same seed; with several --seeds a
last table gives each method's mean ± sd and judges the targets on the means. Compute is optimizer
steps × tokens (training tokens counted from attention masks), as the training summaries log it;
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
    .venv/bin/python bench/front_quality.py --model DIR            # a tiny model (save_tiny_model): seconds

Real eval (greedy replies scored by trained reward models) is behind ``--reward-models
helpful=DIR,harmless=DIR --reference-point base`` (BradleyTerryReward dirs, e.g. from
``bench/reward_accuracy.py --save-dir``; ``base``: the base model's mean rewards minus 0.4, or give a,b).
That point is kept in out/reward-reference-<hash>.json, so every seed and process scores under one;
a reward model refit in the same directory is a new eval (its files are part of the cache key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

COLUMNS = ["method", "train_steps", "train_tokens", "train_s", "eval_seconds", "hypervolume", "reference_point",
           "igd_plus", "sparsity", "inner_product", "spearman_helpful", "spearman_harmless", "n_non_dominated"]
OBJECTIVES = ("helpful", "harmless")


def parse(argv=None) -> argparse.Namespace:
    from parsona.recipes.train_preference_lora import Config as recipe   # the preference LoRA's defaults

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model dir or id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--output-dir", default="runs/front_quality", help="adapters, results.json, front.png")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--max-steps", type=int, default=8, help="preference-LoRA steps = Rewarded Soups' total (default: 8)")
    p.add_argument("--pairs-per-step", type=int, default=4)
    p.add_argument("--max-length", type=int, default=64, help="tokens per prompt + reply (default: 64)")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--pref-rank", type=int, default=recipe.rank,
                   help=f"preference LoRA only: its shared rank k (default: the recipe's, {recipe.rank})")
    p.add_argument("--pref-alpha", type=float, default=recipe.alpha,
                   help=f"preference LoRA's alpha: ΔW scaled by alpha / (k + 2p) (default: {recipe.alpha:g})")
    p.add_argument("--all-labels-only", action=argparse.BooleanOptionalAction, default=recipe.all_labels_only,
                   help="every method trains only on pairs labelled for both objectives "
                        f"(default: the recipe's, {recipe.all_labels_only})")
    p.add_argument("--preference-rank", type=int, default=recipe.preference_rank,
                   help=f"preference LoRA: singular values per objective (1: Panacea; default: {recipe.preference_rank})")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--pref-scale-lr-multiplier", type=float, default=1.0,
                   help="preference LoRA: the scales s learn at learning rate × this (default: 1)")
    p.add_argument("--vertex-prob", type=float, default=0.2,
                   help="preference LoRA: share of rows trained at a one-objective λ (default: 0.2, the recipe's)")
    p.add_argument("--eval-pairs", type=int, default=16, help="held-out pairs, both-labelled first (default: 16)")
    p.add_argument("--eval-batch", type=int, default=16, help="pairs per eval forward (default: 16)")
    p.add_argument("--n-partitions", type=int, default=10, help="eval grid simplex_grid(2, n): n + 1 λ (default: 10)")
    p.add_argument("--dps-partitions", type=int, default=2, help="dps grid: n + 1 LoRAs (default: 2)")
    p.add_argument("--dps-steps-each", type=int, default=0, help="steps per dps LoRA (0: ceil(3 max_steps / n_dps))")
    p.add_argument("--methods", default="pref_linear,pref_tcheb,soups_linear,soups_cat,dps")
    p.add_argument("--reward-models", default="", help="real eval: helpful=DIR,harmless=DIR (BradleyTerryReward)")
    p.add_argument("--reference-point", default="",
                   help="HV reference point for real eval rewards: a,b, or base (the default: the base model's mean "
                        "reward on the eval prompts minus 0.4, i.e. 10 points of preference probability)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    return p.parse_args(argv)


def eval_set(n: int):
    """Held-out pairs: both-labelled first (each serves both objectives), sorted by length (less padding)."""
    from parsona.recipes.front_data import front_pairs

    _, pairs = front_pairs(OBJECTIVES)
    pairs = sorted(pairs, key=lambda p: (-len(p.labels), p.prompt, p.response_a))[:n]
    return sorted(pairs, key=lambda p: len(p.prompt) + len(p.response_a) + len(p.response_b))


def train_all(args, seed: int, out: Path, methods: list[str]) -> dict[str, dict]:
    """Train what ``methods`` need; return {run: {dir, steps, tokens, seconds}}."""
    from parsona.recipes import baselines, train_preference_lora

    common = dict(model=args.model, objectives=OBJECTIVES, beta=args.beta, rank=args.rank, learning_rate=args.learning_rate,
                  warmup_steps=args.warmup_steps, pairs_per_step=args.pairs_per_step, max_length=args.max_length, seed=seed,
                  all_labels_only=args.all_labels_only)
    runs = {}
    for scal in ("linear", "tcheb"):
        if f"pref_{scal}" in methods:
            d = train_preference_lora.main(train_preference_lora.Config(
                output_dir=str(out / f"pref_{scal}"), max_steps=args.max_steps, checkpoint_every=20,
                scalarization="linear" if scal == "linear" else "tchebycheff", vertex_prob=args.vertex_prob,
                pref_scale_lr_multiplier=args.pref_scale_lr_multiplier, preference_rank=args.preference_rank, alpha=args.pref_alpha,
                **{**common, "rank": args.pref_rank}))
            s = json.loads((d / "training_summary.json").read_text())
            runs[f"pref_{scal}"] = dict(dir=d, steps=s["steps"], tokens=s["tokens"], seconds=s["seconds"])
    n_dps = args.dps_partitions + 1
    each = args.dps_steps_each or math.ceil(3 * args.max_steps / n_dps)
    for method, run in (("rewarded_soups", "soups"), ("dps", "dps")):
        if any(m.startswith(run) for m in methods):
            d = baselines.main(baselines.Config(method=method, output_dir=str(out / "baselines"), max_steps=args.max_steps,
                                                n_partitions=args.dps_partitions, dps_steps_each=each, **common))
            f = json.loads((d / baselines.FRONT_FILE).read_text())
            runs[run] = dict(dir=d, steps=f["total_steps"], tokens=f["total_tokens"],
                             seconds=sum(lora["seconds"] for lora in f["loras"]), budget=f["budget"])
    return runs


def evaluate_all(args, runs: dict, methods: list[str], pairs, out: Path, reward_models: dict | None = None) -> list:
    """Score every method's front; each result is kept under out/eval/, so a rerun (or a second process
    given other --methods and the same --output-dir) reuses it instead of scoring it again."""
    from parsona.adapters import load_adapter
    from parsona.base_model import load_base_model
    from parsona.evaluate import evaluate_front, reference_logprobs
    from parsona.front_policies import PreferenceLoRAPolicy
    from parsona.objectives import simplex_grid
    from parsona.recipes.baselines import load_front_policy
    from parsona.recipes.eval_front import reward_reference

    model, tokenizer = load_base_model(args.model, device="cpu", dtype=torch.float32)
    grid = np.asarray(simplex_grid(2, args.n_partitions), dtype=float)
    settings = {method: eval_settings(args, method) for method in methods}
    cached = {method: load_result(cache_path(out, settings[method]), settings[method]) for method in methods}
    reference_point = None
    if reward_models is not None and any(r is None for r in cached.values()):   # before any adapter is attached
        reference_point = shared_reference_point(reference_file(args), cached, lambda: reward_reference(
            args.reference_point or "base", model, tokenizer, pairs, reward_models, OBJECTIVES,
            max_new_tokens=args.max_new_tokens, max_length=args.max_length, batch_size=args.eval_batch))
        print(f"HV reference point for rewards: {[round(float(x), 4) for x in reference_point]} "
              f"({args.reference_point or 'base'})")
    kw = dict(beta=args.beta, max_length=args.max_length, batch_size=args.eval_batch, reward_models=reward_models,
              reference_point=reference_point, max_new_tokens=args.max_new_tokens)
    results, ref = [], None
    for method in methods:
        run = runs[method.split("_")[0] if method.startswith(("soups", "dps")) else method]
        result = cached[method]
        if result is None:
            if method.startswith("pref"):
                policy = PreferenceLoRAPolicy(load_adapter(model, run["dir"]))
            else:
                policy = load_front_policy(model, run["dir"], mode=method.split("_")[1] if "_" in method else "linear")
            if ref is None:
                ref = reference_logprobs(model, tokenizer, policy, pairs, max_length=args.max_length, batch_size=args.eval_batch)
            g = np.asarray(simplex_grid(2, args.dps_partitions), dtype=float) if method == "dps" else grid
            result = evaluate_front(model, tokenizer, policy, pairs, OBJECTIVES, g, reference_logps=ref, method=method, **kw)
            policy.adapter.detach()
            save_result(cache_path(out, settings[method]), settings[method], result)
        result.info = {"train_steps": run["steps"], "train_tokens": run["tokens"], "train_s": round(run["seconds"], 1)}
        results.append(result)
    return results


def reference_file(args) -> Path:
    """Where the reward fronts' HV reference point is kept: beside every seed, keyed by what it depends on."""
    keys = ("model", "eval_pairs", "max_length", "max_new_tokens", "reward_models", "reference_point")
    key = json.dumps({**{k: getattr(args, k) for k in keys}, "reward_files": reward_fingerprint(args.reward_models)})
    return Path(args.output_dir) / f"reward-reference-{hashlib.sha256(key.encode()).hexdigest()[:12]}.json"


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


def eval_settings(args, method: str) -> str:
    """What a cached front depends on: every flag but where it goes, which methods and seeds run, and the
    eval batch size; plus the method and the reward models' files. Reused only when this matches exactly."""
    skip = {"output_dir", "methods", "seeds", "eval_batch"}
    rewards = {"reward_files": reward_fingerprint(args.reward_models)} if args.reward_models else {}
    return json.dumps({"method": method, **{k: v for k, v in sorted(vars(args).items()) if k not in skip}, **rewards})


def cache_path(out: Path, settings: str) -> Path:
    """out/eval/<method>-<hash of the settings>.npz: one file per eval set-up, so scoring the same adapters
    another way (more pairs, the reward eval) keeps the fronts already scored."""
    method = json.loads(settings)["method"]
    return out / "eval" / f"{method}-{hashlib.sha256(settings.encode()).hexdigest()[:12]}.npz"


def save_result(path: Path, settings: str, result) -> None:
    """A FrontResult as .npz (arrays, no pickle), written atomically, with the settings that made it."""
    from parsona.io import atomic_file

    arrays = dict(preferences=result.preferences, accuracy=result.accuracy, dpo_loss=result.dpo_loss,
                  n_labelled=np.asarray(result.n_labelled), reference_point=result.reference_point,
                  pair_correct=result.pair_correct, seconds=np.asarray(result.seconds), settings=np.asarray(settings),
                  objectives=np.asarray(result.objectives), method=np.asarray(result.method))
    if result.reward is not None:
        arrays.update(reward=result.reward, prompt_reward=result.prompt_reward)
    with atomic_file(path, "wb") as f:
        np.savez(f, **arrays)


def load_result(path: Path, settings: str):
    """The FrontResult saved at ``path`` for exactly these settings, else None (score it again)."""
    from parsona.evaluate import FrontResult

    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["settings"]) != settings:
            return None
        print(f"reusing {path} (same settings)")
        return FrontResult(str(f["method"]), tuple(str(o) for o in f["objectives"]), f["preferences"], f["accuracy"],
                           f["dpo_loss"], [int(x) for x in f["n_labelled"]], f["reference_point"],
                           reward=f["reward"] if "reward" in f else None, pair_correct=f["pair_correct"],
                           prompt_reward=f["prompt_reward"] if "prompt_reward" in f else None,
                           seconds=float(f["seconds"]))


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

    seeds = sorted(per_seed)
    methods = [m for m in per_seed[seeds[0]] if all(m in per_seed[s] for s in seeds)]
    means, table = {}, []
    for m in methods:
        values = {k: np.array([per_seed[s][m][k] for s in seeds], dtype=float)
                  for k in (*SEED_COLUMNS, "train_steps", "train_tokens")}
        means[m] = {**{k: float(v.mean()) for k, v in values.items()}, "metric": per_seed[seeds[0]][m]["metric"]}
        means[m].update(train_steps=round(means[m]["train_steps"]), train_tokens=round(means[m]["train_tokens"]))
        table.append({"method": m, **{k: f"{values[k].mean():.4g} ± {values[k].std(ddof=1):.2g}" for k in SEED_COLUMNS}})
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


def _ratio(a: float, b: float) -> float:
    """a / b for hypervolumes: inf when only b is 0, NaN when both are (nothing to compare: never "met")."""
    return a / b if b > 0 else math.inf if a > 0 else math.nan


def main(argv=None) -> None:
    from parsona.evaluate import compare, format_table, plot_front
    from parsona.io import write_json

    args = parse(argv)
    reward_models = None
    if args.reward_models:   # loaded (and a malformed spec fails) now, not after hours of training
        from parsona.recipes.eval_front import load_reward_models, reference_values

        reward_models = load_reward_models(args.reward_models.split(","), OBJECTIVES)
        reference_values(args.reference_point or "base")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    out_root = Path(args.output_dir)
    pairs = eval_set(args.eval_pairs)
    began = time.perf_counter()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"eval: {len(pairs)} held-out pairs ({sum('helpful' in p.labels for p in pairs)} helpful-labelled, "
          f"{sum('harmless' in p.labels for p in pairs)} harmless-labelled), grid simplex_grid(2, {args.n_partitions}), "
          f"dps grid simplex_grid(2, {args.dps_partitions})")
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = out_root / f"seed{seed}"
        runs = train_all(args, seed, out, methods)
        results = evaluate_all(args, runs, methods, pairs, out, reward_models)
        rows = compare(results)
        print(f"\nseed {seed}  (metric: {results[0].metric}; HV reference point {results[0].reference_point.tolist()}, "
              "fixed before the run; IGD+ vs the union front of these methods)")
        print(format_table(rows, COLUMNS))
        for r in results:
            print(f"  {r.method:13s} " + "  ".join(f"λ={lam[0]:.1f}:({a[0]:.3f},{a[1]:.3f})" for lam, a in zip(r.preferences, r.points)))
        per_seed[seed] = {r["method"]: r for r in rows}
        print("\n".join(targets(per_seed[seed])))
        print("\n".join(intervals(results)))
        write_json(out / "results.json", [json.loads(r.to_json()) for r in results])
        plot_front(results, out / "front.png")
    if len(per_seed) > 1:
        print("\n".join(across_seeds(per_seed)))
    print(f"\ntotal wall time {time.perf_counter() - began:.0f} s; results and front.png under {out_root}")


if __name__ == "__main__":
    main()
