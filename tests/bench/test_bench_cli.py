"""Every bench parses its command line with the recipes' typed-config CLI, and the commands its
docstring and the README show still parse (a renamed or retyped flag would break them silently)."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

from parsona.errors import ConfigError
from parsona.recipes.config_cli import add_config_arguments, config_from_args, run_recipe

BENCH = Path(__file__).resolve().parents[2] / "bench"
F = "--max-steps 120 --max-length 128 --eval-pairs 200 --warmup-steps 5 --learning-rate 2e-4 --output-dir runs/fq11"
DOCUMENTED = {
    "front_quality": ["", f"{F} --seeds 1 --methods pref_linear,dps", f"{F} --seeds 1 --methods soups_linear,soups_cat,pref_tcheb",
                      f"{F} --seeds 0,1,2", "--model DIR", "--reward-models helpful=DIR,harmless=DIR --reference-point base",
                      "--pref-rank 8 --preference-rank 1 --pref-alpha 16 --no-all-labels-only"],
    "adapter_overhead": ["", "--tiny", "--profile bank_users", "--threads 1 --no-decode --all-logits"],
    "serve": ["", "--tiny --rounds 1"],
    "reward_accuracy": ["", "--max-pairs 200", "--save-dir runs/rewards", "--C 0.5 --tfidf-C 2"],
}
BAD = {"front_quality": ("--methods pref_linear,nope", "methods"), "adapter_overhead": ("--batch 0", "batch"),
       "serve": ("--rounds 0", "rounds"), "reward_accuracy": ("--eval-fraction 1.5", "eval_fraction")}


def load(name: str):
    if name not in sys.modules:   # config_cli reads a Config's field docs and type hints through its module
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse(bench, line: str):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, bench.Config)
    return config_from_args(bench.Config, parser.parse_args(shlex.split(line)))


@pytest.mark.parametrize("name,line", [(n, line) for n, lines in DOCUMENTED.items() for line in lines])
def test_documented_commands_parse(name, line):
    assert isinstance(parse(load(name), line), load(name).Config)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_defaults_are_the_configs_and_help_lists_every_field(name, capsys):
    bench = load(name)
    assert parse(bench, "") == bench.Config()
    with pytest.raises(SystemExit) as done:
        run_recipe(bench.Config, bench.main, ["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for field in bench.Config.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_a_config_error_naming_the_field(name, capsys):
    bench, (line, field) = load(name), BAD[name]
    with pytest.raises(ConfigError) as err:
        parse(bench, line)
    assert err.value.field == field
    with pytest.raises(SystemExit) as done:            # on the command line: exit 2 and the message, no traceback
        run_recipe(bench.Config, bench.main, shlex.split(line))
    assert done.value.code == 2 and f"error: {field}:" in capsys.readouterr().err
