"""Evaluate a trained preference LoRA over a grid of preferences and draw its front.

    parsona eval front --adapter runs/preference_lora/adapter --out runs/front
    parsona eval front --adapter A --baselines runs/baselines/rewarded_soups --out runs/front
    parsona eval front --adapter A --reward-models helpful=runs/rewards/helpful,harmless=runs/rewards/harmless

Writes ``front.csv`` (one row per λ and method, a ``preference_<objective>`` column per weight),
``front.json`` (rows + indicators: hypervolume with its reference point, IGD+ against the union
front of every method evaluated, sparsity, Panacea's inner product, Spearman ρ per objective) and
the plots of :mod:`parsona.plots` (``front.png``; with 3 objectives also ``front_3d.png`` and a
ternary ``simplex_<method>.png`` per method). The objectives and their
order come from the adapter's ``training_summary.json``. With ``--reward-models`` (one saved
BradleyTerryReward per objective, e.g. from ``bench/reward_accuracy.py --save-dir``) greedy replies
at every λ are scored too and the indicators use those rewards; the HV reference point is then the
base model's mean reward minus 0.4 (``--reference-point base``) or the values given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from parsona.errors import ConfigError


@dataclass
class Config:
    """Every field is a flag of ``parsona eval front`` (``eval_pairs`` -> ``--eval-pairs``)."""

    adapter: str = ""
    """Directory of a preference LoRA written by the training recipe (required)."""
    out: str = "runs/front"
    """Where front.csv, front.json and the plots (front.png; front_3d.png, simplex_*.png for 3 objectives) go."""
    model: str | None = None
    """HF model id or local directory (default: the base model the adapter records it was trained on, else SmolLM2)."""
    baselines: tuple[str, ...] = ()
    """Baseline run directories (output_dir/<method> of `parsona train baselines`) to draw and compare."""
    n_partitions: int = 10
    """The λ grid is simplex_grid(m, n_partitions): 11 points for m = 2."""
    eval_pairs: int = 48
    """Held-out pairs scored at every λ (the same pairs for every method)."""
    max_length: int = 256
    """Tokens per prompt + reply."""
    beta: float = 0.1
    """β of the implicit reward β (log π − log π_ref) and of the held-out DPO loss."""
    batch_size: int = 8
    """Pairs per forward pass."""
    reward_models: tuple[str, ...] = ()
    """Real eval: objective=DIR of a saved BradleyTerryReward for every objective (helpful=DIR,harmless=DIR)."""
    reference_point: str = "base"
    """HV reference point for rewards: 'base' (the base model's mean reward on the eval prompts minus 0.4) or
    one comma-separated value per objective. Accuracies always use 0.4 (chance minus 0.1)."""
    max_new_tokens: int = 32
    """Real eval: tokens of each greedy reply."""

    def __post_init__(self) -> None:
        if not self.adapter:
            raise ConfigError("adapter", "Pass --adapter DIR (a preference LoRA saved by the training recipe).",
                              problem="missing")
        reward_specs(self.reward_models)   # malformed specs fail here, before any model is loaded
        reference_values(self.reference_point)
        for name in ("n_partitions", "eval_pairs", "max_length", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")


def training_config(adapter_dir: Path) -> dict:
    """The recipe config stored beside the adapter, or {} for an adapter saved some other way."""
    summary = adapter_dir / "training_summary.json"
    return json.loads(summary.read_text())["config"] if summary.is_file() else {}


def reward_specs(specs) -> dict[str, str]:
    """{objective: DIR} from objective=DIR specs."""
    for spec in specs:
        if "=" not in spec:
            raise ConfigError("reward_models", "Give objective=DIR per objective, e.g. helpful=runs/rewards/helpful.",
                              problem=f"got {spec!r}")
    return dict(spec.split("=", 1) for spec in specs)


def load_reward_models(specs, objectives) -> dict:
    """{objective: BradleyTerryReward} from objective=DIR specs, one per objective, none extra."""
    from parsona.objectives.rewards import BradleyTerryReward

    named = reward_specs(specs)
    if set(named) != set(objectives):
        raise ConfigError("reward_models", f"Give exactly one reward model per objective: {', '.join(objectives)}.",
                          problem=f"got {', '.join(named) or 'none'}")
    return {o: BradleyTerryReward.load(named[o]) for o in objectives}


def reference_values(spec: str) -> list[float] | None:
    """The numbers of a ``--reference-point`` spec, or None for 'base' (measured on the base model)."""
    if spec.strip() == "base":
        return None
    try:
        return [float(x) for x in spec.split(",")]
    except ValueError:
        raise ConfigError("reference_point", "Use 'base' or one number per objective, e.g. 0.5,-1.",
                          problem=f"got {spec!r}") from None


def reward_reference(spec: str, model, tokenizer, pairs, reward_models, objectives, **kw) -> list[float]:
    """The HV reference point for a reward front, fixed before any policy is scored (``spec``: 'base' or a,b,...)."""
    from parsona.evaluate import base_reward_reference, eval_prompts

    values = reference_values(spec)
    if values is None:   # the same prompts evaluate_front generates for
        return base_reward_reference(model, tokenizer, eval_prompts(pairs), reward_models, objectives, **kw).tolist()
    if len(values) != len(objectives):
        raise ConfigError("reference_point", f"Give one number per objective ({', '.join(objectives)}) or 'base'.",
                          problem=f"got {len(values)} for {len(objectives)} objectives")
    return values


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of several methods (their union of columns) as one CSV, atomically."""
    import csv

    from parsona.io import atomic_file

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_file(path) as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def baseline_methods(directory: Path) -> dict[str, tuple[str, list | None]]:
    """{method name: (mode, own grid or None)} for one baselines run directory.

    Rewarded Soups is scored both ways, its LoRAs interpolated (``<dir>_linear``) and concatenated
    (``<dir>_cat``); a DPS grid run has one LoRA per grid λ, nothing to interpolate, so it is scored
    once, at its own grid points (``<dir>_linear``). Read from the run's front.json (what
    load_front_policy reads) before any scoring, so a wrong directory fails first."""
    from parsona.front_policies import FRONT_FILE

    front_file = directory / FRONT_FILE
    if not front_file.is_file():
        raise ConfigError(str(front_file), "Point to output_dir/<method> of a finished baselines run.",
                          problem="file is missing")
    front = json.loads(front_file.read_text())
    if front["method"] == "rewarded_soups":
        return {f"{directory.name}_{mode}": (mode, None) for mode in ("linear", "cat")}
    grid = [[float(x) for x in lora["preference"]] for lora in front["loras"]]   # GridPolicy's own keys, in order
    return {f"{directory.name}_linear": ("linear", grid)}


def method_builders(model, policy, baselines) -> tuple[dict, dict]:
    """``(policies, grids)`` for evaluate_methods: the preference LoRA (already attached) first, then
    each baseline's policies, built only when their turn comes (one adapter attached at a time)."""
    from parsona.front_policies import load_front_policy

    policies, grids = {"preference_lora": lambda: policy}, {}
    for directory in map(Path, baselines):
        for method, (mode, grid) in baseline_methods(directory).items():
            if method in policies:
                raise ConfigError("baselines", "Give each baseline run a directory name of its own (the method "
                                  "names come from it).", problem=f"two methods would be called {method!r}")
            policies[method] = lambda d=directory, m=mode: load_front_policy(model, d, mode=m)
            if grid is not None:
                grids[method] = grid
    return policies, grids


def held_out_pairs(trained: dict, objectives, n: int) -> list:
    """The first ``n`` pairs held out from the adapter's own training split, labelled for every
    objective (any held-out pairs when none is)."""
    from parsona.training.front_data import front_pairs

    _, held_out = front_pairs(objectives, trained.get("eval_fraction", 0.1))
    return [p for p in held_out if len(p.labels) == len(objectives)][:n] or held_out[:n]


def load_preference_adapter(model, adapter_dir: Path):
    """The preference LoRA at ``adapter_dir``, attached to ``model``; any other adapter type is refused."""
    from parsona.adapters import PreferenceLoRA, load_adapter

    adapter = load_adapter(model, adapter_dir)
    if not isinstance(adapter, PreferenceLoRA):
        raise ConfigError("adapter", "Pass a preference LoRA (parsona train preference-lora); a baselines run goes in "
                          "--baselines.", problem=f"{adapter_dir} holds a {adapter.adapter_type} adapter")
    return adapter


def reward_scoring(cfg: Config, model, tokenizer, policy, pairs, objectives) -> dict:
    """evaluate_front's keywords for a real eval: the reward models, and the HV reference point fixed
    on the base model (the policy's reference) before any method is scored."""
    rewards = load_reward_models(cfg.reward_models, objectives)
    with policy.reference():
        point = reward_reference(cfg.reference_point, model, tokenizer, pairs, rewards, objectives,
                                 max_new_tokens=cfg.max_new_tokens, max_length=cfg.max_length,
                                 batch_size=cfg.batch_size)
    print(f"HV reference point for rewards: {[round(x, 4) for x in point]} ({cfg.reference_point})")
    return dict(reward_models=rewards, reference_point=point, max_new_tokens=cfg.max_new_tokens)


def write_front(out: Path, results: list, objectives, n_pairs: int) -> Path:
    """front.csv, front.json and the plots (``parsona.plots.write_plots``: front.png, and front_3d.png and
    simplex_<method>.png for 3 objectives) under ``out``; prints the indicators' table; returns front.png."""
    from parsona.evaluate import compare, format_table
    from parsona.io import write_json
    from parsona.plots import write_plots

    rows = compare(results)
    write_csv(out / "front.csv", [row for r in results for row in r.csv_rows()])
    write_json(out / "front.json", {"objectives": list(objectives), "eval_pairs": n_pairs,
                                    "methods": [json.loads(r.to_json()) for r in results], "indicators": rows})
    plots = write_plots(results, out)
    print(format_table(rows, list(rows[0])))
    print(f"\nfront: {out / 'front.csv'}, {out / 'front.json'}\nplots: {', '.join(str(p) for p in plots)}")
    return plots[0]


def main(cfg: Config) -> Path:
    from parsona.base_model import load_base_model, model_for
    from parsona.front_policies import PreferenceLoRAPolicy
    from parsona.fronts import evaluate_methods
    from parsona.objectives import simplex_grid

    adapter_dir, out = Path(cfg.adapter), Path(cfg.out)
    trained = training_config(adapter_dir)
    # every command's --model rule; an adapter saved before bases were recorded names it in its training summary
    model, tokenizer = load_base_model(model_for(cfg.model, adapter_dir) or trained.get("model"))
    policy = PreferenceLoRAPolicy(load_preference_adapter(model, adapter_dir))
    m = policy.n_objectives
    objectives = tuple(trained.get("objectives", ("helpful", "harmless", "brevity")[:m]))
    pairs = held_out_pairs(trained, objectives, cfg.eval_pairs)
    policies, grids = method_builders(model, policy, cfg.baselines)   # a bad baseline dir fails here, early
    common = dict(beta=cfg.beta, max_length=cfg.max_length, batch_size=cfg.batch_size)
    if cfg.reward_models:
        common.update(reward_scoring(cfg, model, tokenizer, policy, pairs, objectives))
    # One reference pass (the base model) serves every method; each adapter is detached once scored.
    results = evaluate_methods(model, tokenizer, policies, pairs, objectives, simplex_grid(m, cfg.n_partitions),
                               grids=grids, **common)
    return write_front(out, results, objectives, len(pairs))


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
