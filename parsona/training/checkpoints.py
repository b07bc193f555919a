"""Resumable checkpoints, and what rerunning a recipe in the same output_dir may do.

A checkpoint is a directory swapped in atomically: the adapter's tensors (safetensors, never the
frozen base model: a few MB instead of 540 MB), the optimizer and schedule state, and
``progress.json`` (step, tokens, seconds, loss history and the run's config). A rerun is judged
from what the run recorded: the same settings continue (or return a finished run untouched), other
settings are refused, never silently resumed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from parsona.errors import ConfigError

# where and how long, and where the reference log-probs come from (exact either way): may change between legs
LEG_FIELDS = ("output_dir", "max_steps", "checkpoint_every", "precompute_reference", "reference_cache")
PROGRESS = "progress.json"


def other_settings(saved: dict, cfg, ignore: tuple[str, ...] = ()) -> list[str]:
    """The fields of ``cfg`` (a recipe's Config dataclass) whose value differs in ``saved``, the config a
    run wrote to its JSON (fields only one side has are skipped: a field added later is not a difference)."""
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg)))        # tuples as lists, as the JSON has them
    return sorted(k for k in saved.keys() & wanted.keys() if k not in ignore and saved[k] != wanted[k])


def finished(out: Path, cfg, ignore: tuple[str, ...] = LEG_FIELDS) -> bool:
    """Whether ``out`` already holds this run, done: a rerun then returns the adapter untouched. A run
    there with other settings (but ``ignore``: a larger max_steps trains on from the checkpoint) is refused
    rather than silently resumed, and so is asking for fewer steps than were already taken.

    ``cfg`` is a recipe Config with ``max_steps``; the run's record is ``out/adapter/training_summary.json``
    (a finished run) or ``out/checkpoint/progress.json`` (a killed run has only this).
    """
    summary_file, progress_file = out / "adapter" / "training_summary.json", out / "checkpoint" / PROGRESS
    saved = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    progress = json.loads(progress_file.read_text()) if progress_file.is_file() else {}
    taken = progress.get("step", saved.get("steps", 0))
    other = other_settings(progress.get("config") or saved.get("config", {}), cfg, ignore=ignore)
    if other:
        raise ConfigError("output_dir", "Use a new --output-dir, or the settings of the run already there.",
                          problem=f"{out} holds a run with other {', '.join(other)}")
    if taken > cfg.max_steps:
        raise ConfigError("max_steps", f"Use ≥ {taken}, or a new --output-dir for a shorter run.",
                          problem=f"{out} already took {taken} steps, more than {cfg.max_steps}")
    return bool(saved) and saved["steps"] == cfg.max_steps == taken


def save_checkpoint(path: Path, adapter, optimizer, schedule, progress: dict) -> None:
    """Adapter tensors (safetensors), optimizer and schedule state, and ``progress`` (step, tokens,
    seconds and loss history so far), swapped in atomically."""
    from safetensors.torch import save_file

    from parsona.io import atomic_dir

    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}, str(tmp / "adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, tmp / "optimizer.pt")
        (tmp / PROGRESS).write_text(json.dumps(progress))


def load_checkpoint(path: Path, adapter, optimizer, schedule) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; return its progress (step 0 if none)."""
    progress = {"step": 0, "tokens": 0, "seconds": 0.0, "history": []}
    if not (path / PROGRESS).is_file():
        return progress
    from safetensors.torch import load_file

    adapter.load_state_dict(load_file(str(path / "adapter.safetensors")), source=str(path))
    state = torch.load(path / "optimizer.pt", weights_only=True)  # our own file; weights_only: no code runs
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    return {**progress, **json.loads((path / PROGRESS).read_text())}
