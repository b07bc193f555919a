"""Meta-train a group preference predictor (GPO) on groups' answer distributions.

    parsona train group-predictor --output-dir runs/group_predictor               # OpinionQA's 5 groups
    parsona train group-predictor --groups answers.jsonl --use-prior --output-dir runs/gp

``--groups`` is a .jsonl file in GPO's format (OpinionQA's): one line per (question, group),
``{"qkey", "wave", "question", "options", "attribute", "group", "dist"}``; without it, OpinionQA from
``$PARSONA_DATA/opinionqa-groups``. Each (question, option) is embedded once as ``"Question: …\\nAnswer: …"``
(``HistoryEncoder``: the base model, mean-pooled last hidden state, by default; cached under
output_dir/embeddings). With ``--use-prior`` the ``--prior-group``'s distribution (``Overall``) is every
question's population prior, that group is not a task of its own, and ``--mixed-groups`` synthetic
groups (random combinations of the real groups' departures from it) join the real ones. The predictor is
written atomically to output_dir/predictor (safetensors and JSON, no pickle) with its
training_summary.json; a finished run with the same settings is returned as it is.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from parsona.errors import ConfigError


@dataclass
class Config:
    """Every field is a flag (``max_context`` -> ``--max-context``)."""

    groups: str = ""
    """A GPO-format .jsonl of (question, group) answer distributions (default: OpinionQA's 5 groups)."""
    encoder: str | None = None
    """Encoder of (question, option) texts: model dir or HF id (default: the base model, mean-pooled)."""
    output_dir: str = "runs/group_predictor"
    """The predictor goes to output_dir/predictor."""
    exclude_groups: str = ""
    """Comma-separated groups left out of meta-training (to test on them later)."""
    use_prior: bool = False
    """Give every token the prior group's share of its option; the predictor learns departures from it."""
    prior_group: str = "Overall"
    """With use_prior: the group whose distribution is the population prior."""
    mixed_groups: int = 200
    """With use_prior: synthetic groups added to the real ones (0: none)."""
    steps: int = 1000
    """Meta-training steps."""
    batch_size: int = 16
    """Tasks per step."""
    learning_rate: float = 1e-3
    """AdamW learning rate."""
    d_model: int = 64
    """Transformer width."""
    n_layers: int = 2
    """Transformer layers."""
    max_context: int = 40
    """Most context questions of a meta-training task (the fewest: 5)."""
    loss: str = "cross_entropy"
    """Meta-training loss: cross_entropy (GPO's), ordinal_w1 (W1 over the ordered options, what the alignment
    score measures) or cross_entropy_w1 (their sum)."""
    seed: int = 0
    """Seed of the init, the tasks and the synthetic groups."""

    def __post_init__(self) -> None:
        from parsona.persona.group_predictor import LOSSES

        if self.loss not in LOSSES:
            raise ConfigError("loss", f"Choose one of {', '.join(sorted(LOSSES))}.", problem=f"got {self.loss!r:.40}")
        for name in ("steps", "batch_size", "d_model", "n_layers", "max_context"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.d_model % 4:
            raise ConfigError("d_model", "Use a multiple of 4 (the predictor has 4 attention heads).",
                              problem=f"got {self.d_model}")
        if self.max_context < 5:
            raise ConfigError("max_context", "Use 5 or more (a task's context has 5 to max_context questions).",
                              problem=f"got {self.max_context}")
        if self.mixed_groups < 0 or not self.learning_rate > 0:
            raise ConfigError("mixed_groups" if self.mixed_groups < 0 else "learning_rate",
                              "Use mixed_groups ≥ 0 and a positive learning_rate.",
                              problem=f"mixed_groups {self.mixed_groups}, learning_rate {self.learning_rate}")


def read_groups(cfg: Config) -> list:
    """The (question, group) rows of ``--groups`` or of OpinionQA."""
    from parsona.data.opinionqa import read_opinionqa, read_opinionqa_file

    if not cfg.groups:
        return read_opinionqa()
    if not Path(cfg.groups).is_file():
        raise ConfigError("groups", "Pass a GPO-format .jsonl file (see --help).", problem=f"no file {cfg.groups!r}")
    return read_opinionqa_file(cfg.groups)


def tasks_of(cfg: Config, tables: dict) -> list[list]:
    """The meta-training groups: every group not excluded (nor the prior group, with a prior), and the mixed ones."""
    from parsona.groups import mixed_groups

    excluded = {g.strip() for g in cfg.exclude_groups.split(",") if g.strip()}
    unknown = excluded - set(tables)
    if unknown:
        raise ConfigError("exclude_groups", f"Name groups the data has: {sorted(tables)}.", problem=f"no {sorted(unknown)}")
    if cfg.use_prior and cfg.prior_group not in tables:
        raise ConfigError("prior_group", f"Name a group the data has: {sorted(tables)}.", problem=f"no {cfg.prior_group!r}")
    keep = [g for g in tables if g not in excluded and not (cfg.use_prior and g == cfg.prior_group)]
    if not keep:
        raise ConfigError("exclude_groups", "Leave at least one group to meta-train on.", problem="none left")
    real = [{k: q for k, q in tables[g].items() if not cfg.use_prior or q.prior is not None} for g in keep]
    mixed = mixed_groups(real, cfg.mixed_groups, seed=cfg.seed) if cfg.use_prior and cfg.mixed_groups else []
    return [list(t.values()) for t in real] + mixed


def main(cfg: Config) -> Path:
    """Meta-train and write the predictor; return ``output_dir/predictor``."""
    from parsona.base_model import _resolve
    from parsona.groups import opinionqa_tasks
    from parsona.persona import GroupPreferencePredictor, HistoryEncoder
    from parsona.persona.group_predictor import LOSSES

    out = Path(cfg.output_dir) / "predictor"
    summary_file = out / "training_summary.json"
    if summary_file.is_file() and json.loads(summary_file.read_text()).get("config") == asdict(cfg):
        print(f"already trained: {out} (same settings)")
        return out
    encoder = HistoryEncoder(cfg.encoder or _resolve(None), max_length=128).fit()
    tables = opinionqa_tasks(encoder, Path(cfg.output_dir) / "embeddings", read_groups(cfg), cfg.prior_group).questions
    groups = tasks_of(cfg, tables)
    began = time.perf_counter()
    model = GroupPreferencePredictor(d_model=cfg.d_model, n_layers=cfg.n_layers, steps=cfg.steps,
                                     batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                                     max_context=cfg.max_context, use_prior=cfg.use_prior, loss=LOSSES[cfg.loss],
                                     seed=cfg.seed).fit(groups)
    summary = {"config": asdict(cfg), "encoder": encoder.key, "groups": len(groups),
               "loss_first": model.losses_[:20], "loss_last": model.losses_[-20:],
               "seconds": round(time.perf_counter() - began, 2)}
    return model.save(out, extra_json={summary_file.name: summary})               # atomic, with its summary


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
