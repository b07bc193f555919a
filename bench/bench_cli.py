"""Shared by the benchmarks: a Config dataclass whose fields carry ``metadata={"help": ...}`` -> flags."""

from __future__ import annotations

import argparse
import dataclasses


def parse_config(config_cls, prog: str, description: str, epilog: str, argv: list[str] | None = None):
    """``--field-name`` per field (``--flag/--no-flag`` for booleans), defaults shown in ``--help``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    return config_cls(**vars(parser.parse_args(argv)))
