"""Turn a recipe's ``Config`` dataclass into command-line flags: ``max_steps`` -> ``--max-steps``.

Help text comes from the docstring under each field, so ``--help`` always matches the code. A field
declared with ``field(..., metadata={"internal": True})`` is still a flag but is left out of
``--help``: a script passes it to its own subprocesses (``bench/train_speed.py``'s ``--worker``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import sys
import typing
from typing import Any, Callable


def field_docs(config_cls: type) -> dict[str, str]:
    """The string literal right under each field of a dataclass, keyed by field name."""
    docs: dict[str, str] = {}
    body = ast.parse(inspect.getsource(config_cls)).body[0].body
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            docs[node.target.id] = str(following.value.value)
    return docs


def is_internal(f: dataclasses.Field) -> bool:
    """A field a script sets for itself (hidden from --help, left out of reproducing commands)."""
    return bool(f.metadata.get("internal"))


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    docs, hints = field_docs(config_cls), typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind, flag = hints[f.name], "--" + f.name.replace("_", "-")
        help_text = (argparse.SUPPRESS if is_internal(f)
                     else f"{docs.get(f.name, '')} (default: {f.default!r})".replace("%", "%%"))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()),
                                default=f.default, metavar="A,B,...", help=help_text)
        else:
            base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            parser.add_argument(flag, type=base, default=f.default, metavar=base.__name__.upper(), help=help_text)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    return config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})


def run_recipe(config_cls: type, main: Callable[[Any], Any], argv: list[str] | None = None) -> Any:
    """``python -m parsona.recipes.X --flags``: parse, build the Config, run, print errors plainly.

    Returns what ``main`` returns, so a script can turn it into its exit status
    (``sys.exit(0 if run_recipe(Config, main) else 1)``); a ConfigError exits 2 with one line."""
    from parsona.errors import ConfigError

    parser = argparse.ArgumentParser(description=(sys.modules[main.__module__].__doc__ or "").strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, config_cls)
    try:
        return main(config_from_args(config_cls, parser.parse_args(argv)))
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
