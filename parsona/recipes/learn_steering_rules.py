"""One user's preference agent (arXiv 2410.03731): the large model writes rules from how its zero-shot
drafts differ from the user's texts; a small model (the base + a PEFT LoRA) learns intent -> rules.

    parsona train steering-rules --author 965226 --output-dir runs/agent_965226
    parsona train steering-rules --texts mine.txt --endpoint http://localhost:8000/v1 --endpoint-model llama-3-8b
    parsona train steering-rules --store runs/store --user-id usr_... --put-rules   # a server user's history

The large model is the base model (``--model``) or, with ``--endpoint``, any OpenAI-compatible
``/chat/completions`` server (its key read from the environment variable ``--api-key-env``, never from a
flag). The small model is always the base model here, fine-tuned with the user-LoRA recipe on
(intent chat -> rules) pairs, the loss on the rules alone. ``output_dir`` gets, atomically:

    agent.json    the large model's quote-checked rules per text and the recurring ones (``rules``: what
                  ``PUT /v1/profile/rules`` takes); no text of the user's (not the intents either)
    small_lora/   the small model's PEFT LoRA

Serve it: ``Host(model, tokenizer, loras={"agent": DIR / "small_lora"})`` and
:func:`load` (DIR, host, the user's texts: they rebuild the quote check, which is not stored). The large
model's calls are the cost: three per text (intent, draft, rules); the user's texts go to it, so an
``--endpoint`` sees them. With ``--store``, the texts are the user's newest history items and their
intents are kept in the store with the history (``parsona.personalize.Intents``): a rerun, or a run after
new items arrive, summarises only what is new. ``--put-rules`` then makes the recurring rules the user's
steering rules (``GET /v1/profile/rules`` shows them, source "agent").
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from parsona.errors import ConfigError
from parsona.persona.agent import RulesAgent


MIN_TEXTS = 3   # the fewest texts the agent learns from (RulesAgent's min_texts)
DEFAULT_OUTPUT = "runs/steering_agent"


@dataclass
class Config:
    """Every field is a flag (``max_steps`` -> ``--max-steps``)."""

    model: str | None = None
    """Base model (the small one, and the large one without --endpoint): HF id or local dir (default: SmolLM2)."""
    texts: str = ""
    """The user's texts: a .txt file (one per line) or a .jsonl file with a "text" field per line."""
    author: str = ""
    """Instead of texts: the train-split emails of this PAN-2011 Enron author id (``$PARSONA_DATA``)."""
    store: str = ""
    """Instead of texts: the Parsona store (``parsona serve --store``) holding the user's history ..."""
    user_id: str = ""
    """... of this user; their intents are kept there, beside the history."""
    put_rules: bool = False
    """With --store: keep the recurring rules as the user's steering rules (replacing theirs)."""
    max_texts: int = 30
    """Use at most this many texts (the first ones, 0: all; with --store the newest, 0: the newest 1,000).
    Each costs three large-model calls (two once a text's intent is stored)."""
    max_text_chars: int = 1500
    """Each text is cut to this many characters before it goes into a prompt."""
    output_dir: str = DEFAULT_OUTPUT
    """Where agent.json and small_lora/ go (with --store and this default: a folder per user under it)."""
    endpoint: str = ""
    """The large model as an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (empty: the base model)."""
    endpoint_model: str = "default"
    """The endpoint's model name."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's key (unset: no key is sent)."""
    max_new_tokens: int = 96
    """Tokens of each large-model reply, and of the small model's rules."""
    max_rule_tokens: int = 150
    """The rules' budget in a prompt (counted with the base model's tokenizer)."""
    max_quote_words: int = 3
    """The longest run of the user's words a rule may repeat ..."""
    min_quote_texts: int = 3
    """... and only if it is in at least this many of their texts."""
    rank: int = 8
    """The small model's LoRA rank."""
    learning_rate: float = 1e-3
    """AdamW learning rate of the small model's LoRA."""
    max_steps: int = 40
    """Optimizer steps of the small model's LoRA."""
    batch_size: int = 4
    """(intent, rules) pairs per step."""
    max_length: int = 256
    """Tokens per pair, the chat prompt included."""
    seed: int = 0
    """Seed of the LoRA's init and of its batches."""

    def __post_init__(self) -> None:
        sources = [name for name in ("texts", "author", "store") if getattr(self, name)]
        if len(sources) > 1:
            raise ConfigError(sources[1], "Pass one of --texts FILE, --author ID or --store DIR --user-id ID.",
                              problem=f"got {' and '.join(sources)}")
        if bool(self.store) != bool(self.user_id):
            raise ConfigError("user_id" if self.store else "store", "Pass --store DIR and --user-id ID together.",
                              problem="only one given")
        if self.put_rules and not self.store:
            raise ConfigError("put_rules", "Rules are put into a store: pass --store DIR --user-id ID.",
                              problem="no store")
        if self.store:
            from parsona.store_ids import check_id
            from parsona.store import NotFound

            try:
                check_id("user_id", self.user_id, "usr")
            except NotFound:
                raise ConfigError("user_id", "Give a user id of the store (usr_...).", problem="not a user id") from None
            if self.output_dir == DEFAULT_OUTPUT:       # one user's agent never replaces another's
                self.output_dir = f"{DEFAULT_OUTPUT}/{self.user_id}"
        for name in ("max_new_tokens", "max_rule_tokens", "max_quote_words", "rank", "max_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.max_texts < 0:
            raise ConfigError("max_texts", "Use 0 (all) or a whole number ≥ 1.", problem=f"got {self.max_texts}")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError("endpoint", "Give the endpoint's URL, e.g. http://localhost:8000/v1.",
                              problem=f"got {self.endpoint!r:.60}")
        from parsona.recipes import train_user_lora

        train_user_lora.Config(**train_user_lora.settings_from(self))   # the LoRA's settings, checked before any model call


class NoRules(ConfigError):
    """The large model wrote no rule that passed the checks: a finding about the model, not a bad setting."""


def large_writer(cfg: Config, host):
    """The endpoint when one is configured, else the host's base model."""
    from parsona.writers import EndpointWriter, HostWriter

    if cfg.endpoint:
        return EndpointWriter(cfg.endpoint, model=cfg.endpoint_model, api_key=os.environ.get(cfg.api_key_env) or None,
                              max_tokens=cfg.max_new_tokens)
    return HostWriter(host, max_new_tokens=cfg.max_new_tokens, progress="large model")


def open_store(cfg: Config):
    """The store at ``cfg.store`` (which must exist: a typo is not a new, empty store), checked before any
    model call: ``user_id`` is a user of it with texts to learn from, whose own rules ``--put-rules`` would
    not overwrite."""
    from parsona.store import NotFound, Store

    if not (Path(cfg.store) / "parsona.sqlite3").is_file():
        raise ConfigError("store", "Give the directory a server keeps its store in (parsona serve --store).",
                          problem=f"no store at {cfg.store!r:.80}")
    store = Store(cfg.store)
    try:
        texts = [h["text"] for h in store.history(cfg.user_id, limit=cfg.max_texts or None) if h["text"].strip()]
        if len(texts) < MIN_TEXTS:
            raise ConfigError("user_id", f"Add history first (PUT /v1/profile/history): the agent learns from at "
                              f"least {MIN_TEXTS} texts.", problem=f"this user has {len(texts)}")
        own = store.get_rules(cfg.user_id)
        if cfg.put_rules and own and own["source"] == "user" and own["rules"]:
            raise ConfigError("put_rules", "Leave out --put-rules: this user wrote their own rules, which it would "
                              "replace (they can clear them with PUT /v1/profile/rules []).", problem="the user's own rules")
    except NotFound:
        store.close()
        raise ConfigError("user_id", "Give the id of a user of this store.", problem="no such user") from None
    except ConfigError:
        store.close()
        raise
    return store


def main(cfg: Config, *, model: torch.nn.Module | None = None, tokenizer=None, texts: Sequence[str] | None = None,
         intents: Sequence[str] | None = None) -> Path:
    """Learn the agent and write ``output_dir``; return it. ``model``/``tokenizer`` reuse a loaded base;
    ``texts`` and ``intents`` (one per text; None: the large model summarises) replace the config's."""
    from parsona.base_model import load_base_model
    from parsona.host import Host
    from parsona.recipes import train_user_lora

    if cfg.store and texts is not None:
        raise ConfigError("store", "Pass texts or --store, not both.", problem="texts given with a store")
    with open_store(cfg) if cfg.store else contextlib.nullcontext() as store:
        if texts is None and store is None:
            texts = train_user_lora.author_texts(cfg.author) if cfg.author else train_user_lora.read_texts(cfg.texts)
        if model is None:
            model, tokenizer = load_base_model(cfg.model, dtype=torch.float32)
        host = Host(model, tokenizer)
        large = large_writer(cfg, host)
        if store is not None:          # the newest history items, their intents summarised once and kept
            from parsona.personalize import MAX_INTENT_ITEMS, Intents

            texts, intents = Intents(store, large, max_items=cfg.max_texts or MAX_INTENT_ITEMS,
                                     max_chars=cfg.max_text_chars).pairs(cfg.user_id)
        agent = learn(cfg, host, large, texts, intents)
        if store is not None and cfg.put_rules and agent.rules_:
            from parsona.persona.rules import MAX_RULES

            store.put_rules(cfg.user_id, agent.rules_[:MAX_RULES], source="agent")
    print("\n".join(f"  - {r}" for r in agent.rules_) or "  (none)")
    return Path(cfg.output_dir)


def learn(cfg: Config, host, large, texts: Sequence[str], intents: Sequence[str] | None) -> RulesAgent:
    """Fit the agent on ``texts`` with ``large``, train the small model on its pairs, write ``output_dir``."""
    from parsona.host import Request
    from parsona.io import atomic_dir, write_json
    from parsona.recipes import train_user_lora

    texts = [t[: cfg.max_text_chars] for t in list(texts)[: cfg.max_texts or None]]
    intents = list(intents)[: len(texts)] if intents is not None else None
    agent = RulesAgent(large, tokenizer=host.tokenizer, max_tokens=cfg.max_rule_tokens, min_texts=MIN_TEXTS,
                       max_quote_words=cfg.max_quote_words, min_quote_texts=cfg.min_quote_texts).fit(texts, intents)
    pairs = [(host.prepare(Request(messages=chat)).input_ids, rules) for chat, rules in agent.examples_]
    pairs = [(ids, rules) for ids, rules in pairs if len(ids) < cfg.max_length - 8]   # room for the rules
    if not pairs:
        raise NoRules("texts", "The large model wrote no usable rules for these texts: try a larger model "
                      "(--endpoint) or more texts.", problem=f"0 of {len(texts)} texts gave a rule that fits max_length")
    settings = train_user_lora.settings_from(cfg)
    with atomic_dir(cfg.output_dir) as tmp:
        train_user_lora.main(train_user_lora.Config(**{**settings, "output_dir": str(tmp / "small_lora")}),
                             model=host.model, tokenizer=host.tokenizer, pairs=pairs)
        agent.save(tmp / "agent.json")
        write_json(tmp / "config.json", {k: v for k, v in asdict(cfg).items() if k != "api_key_env"})
    print(f"{len(pairs)} of {len(texts)} texts gave rules; recurring rules:")
    return agent


def load(output_dir: str | Path, host, user_texts: Sequence[str], name: str = "agent"):
    """The agent in ``output_dir``, its small model served by ``host``, which must hold ``small_lora/`` as
    LoRA ``name`` (``Host(..., loras={name: output_dir / "small_lora"})``); ``user_texts`` rebuild the quote
    check on what the small model writes (no text of the user's is stored with the agent)."""
    import json

    from parsona.writers import HostWriter

    out = Path(output_dir)
    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    small = HostWriter(host, max_new_tokens=cfg["max_new_tokens"], conditioning={"adapter": name})
    return RulesAgent.load(out / "agent.json", user_texts, small=small, tokenizer=host.tokenizer)


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
