"""Build the public expert bank of generated LoRAs (SG-LoRA): expert LoRAs, each with a description and
its embedding, kept in the store, which every user may then blend from (POST /v1/adapters/generate).

Default bank: one LoRA per PAN-2011 Enron author with ≥ ``min_train_emails`` train emails (18 at 30), the
per-user LoRA recipe on that author's train emails (reused when already trained with the same settings),
described by the mean embedding of those emails. Or ``--experts FILE``: a .jsonl manifest, one expert per
line, ``{"name": ..., "lora": "<PEFT dir>", "description": "<text>"}`` or ``"texts": [...]`` instead of a
description (their mean embedding). An expert whose name is already in the bank is kept as it is
(``--replace`` swaps it), so rerunning is safe.

    parsona build-expert-bank --store parsona-store                      # the Enron authors
    parsona build-expert-bank --store parsona-store --experts experts.jsonl --encoder DIR
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from parsona.errors import ConfigError


@dataclass
class Config:
    store: str = "parsona-store"
    """The store directory the bank goes into (created if missing)."""
    experts: str = ""
    """A .jsonl manifest of experts ({"name", "lora", "description" or "texts"} per line); empty: the Enron authors."""
    encoder: str | None = None
    """Sentence encoder of the descriptions (default: all-MiniLM-L6-v2); serve with the same one."""
    replace: bool = False
    """Replace an expert of the same name instead of keeping it."""
    model: str | None = None
    """Base model the Enron authors' LoRAs are trained on (default: SmolLM2-135M-Instruct)."""
    output_dir: str = "runs/expert_bank"
    """Where the Enron authors' LoRAs are trained (and found again on a rerun)."""
    min_train_emails: int = 30
    """An Enron author becomes an expert with at least this many train emails."""
    authors: int = 0
    """Only the this many authors with the most train emails (0: all that qualify)."""
    max_emails: int = 0
    """Train on at most this many emails per author (0: all; for smoke runs)."""
    rank: int = 8
    """Each author's LoRA rank."""
    learning_rate: float = 1e-3
    """AdamW learning rate of each author's LoRA."""
    max_steps: int = 40
    """Optimizer steps of each author's LoRA."""
    batch_size: int = 8
    """Emails per training step."""
    max_length: int = 128
    """Tokens per email."""
    seed: int = 0
    """Seed of every LoRA's init and batches."""


def read_manifest(path: str) -> list[dict]:
    """The experts of a .jsonl manifest, each with a name, a LoRA directory and a description or texts."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError("experts", "Pass a .jsonl file, one expert per line.", problem=f"no file {path!r}")
    experts = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise ConfigError(f"{path}:{n}", "Write one JSON object per line.", problem=str(exc)) from None
        if not isinstance(entry, dict) or not {"name", "lora"} <= set(entry) or ("description" in entry) == ("texts" in entry):
            raise ConfigError(f"{path}:{n}", 'Give "name", "lora" and one of "description" or "texts".',
                              problem=f"keys {sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
        experts.append(entry)
    return experts


def enron_experts(cfg: Config) -> list[dict]:
    """One expert per qualifying Enron author: their LoRA (trained or reused) and their train emails."""
    from parsona.data.enron import users_split
    from parsona.recipes.train_user_lora import settings_from, train_for_users

    authors, train, _ = users_split(cfg.min_train_emails, cfg.authors, cfg.max_emails)
    dirs = train_for_users(settings_from(cfg), train, Path(cfg.output_dir) / "loras")
    return [{"name": f"enron:{a}", "lora": str(dirs[a]), "texts": train[a],
             "description": f"the Enron emails of {a} ({len(train[a])} train emails)"} for a in authors]


def main(cfg: Config) -> Path:
    """Add the experts to the store's public bank; returns the store directory."""
    from tqdm.auto import tqdm

    from parsona.persona import HistoryEncoder, UserProfile
    from parsona.store import Store

    experts = read_manifest(cfg.experts) if cfg.experts else enron_experts(cfg)
    encoder = HistoryEncoder(cfg.encoder, progress=False).fit()
    with Store(cfg.store) as store:
        have = {e["name"]: e["expert_id"] for e in store.experts.list()}
        for entry in tqdm(experts, desc="experts"):
            if entry["name"] in have and not cfg.replace:
                continue
            texts = entry.get("texts")
            vector = UserProfile.from_history(entry["name"], encoder.transform(texts)).persona if texts \
                else encoder.transform([entry["description"]])[0]
            description = entry.get("description") or f"{entry['name']}: described by {len(texts)} of its texts"
            added = store.experts.add(entry["lora"], entry["name"], description, vector, encoder.key)
            if entry["name"] in have:                            # the new one is in: only now drop the old
                store.experts.delete(have[entry["name"]])
            have[entry["name"]] = added                          # a name the manifest repeats is added once
        print(f"{len(store.experts.list())} experts in {cfg.store} (encoder {encoder.key})")
    return Path(cfg.store)


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
