"""Every bench parses its command line with the recipes' typed-config CLI, and the commands its
docstring and the README show still parse (a renamed or retyped flag would break them silently)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import shlex

import pytest

from conftest import load_bench
from parsona.errors import ConfigError
from parsona.recipes.config_cli import add_config_arguments, config_from_args, run_recipe

F = "--max-steps 120 --max-length 128 --eval-pairs 200 --warmup-steps 5 --learning-rate 2e-4 --output-dir runs/fq11"
DOCUMENTED = {
    "front_quality": ["", f"{F} --seeds 1 --methods pref_linear,dps", f"{F} --seeds 1 --methods soups_linear,soups_cat,pref_tcheb",
                      f"{F} --seeds 0,1,2", "--model DIR", "--reward-models helpful=DIR,harmless=DIR --reference-point base",
                      "--pref-rank 8 --preference-rank 1 --pref-alpha 16 --no-all-labels-only"],
    "adapter_overhead": ["", "--tiny", "--profile bank_users", "--threads 1 --no-decode --all-logits"],
    "serve": ["", "--tiny --rounds 1"],
    "reward_accuracy": ["", "--max-pairs 200", "--save-dir runs/rewards", "--C 0.5 --tfidf-C 2"],
    "train_speed": ["", "--contenders parsona,trl_best", "--contenders parsona --profile", "--tiny", "--tiny --contenders parsona",
                    "--no-trl-gradient-checkpointing", "--no-all-labels-only --loss ipo --threads 0"],
    "serve_fuzz": ["", "--users 1 --examples 20"],
    "scale": ["", "--users 500 --vectors 20000 --requests 500 --load-rounds 1"],
}
BAD = {"front_quality": ("--methods pref_linear,nope", "methods"), "adapter_overhead": ("--batch 0", "batch"),
       "serve": ("--rounds 0", "rounds"), "reward_accuracy": ("--eval-fraction 1.5", "eval_fraction"),
       "train_speed": ("--parsona-steps 0", "parsona_steps"), "serve_fuzz": ("--users 0", "users"),
       "scale": ("--requests 0", "requests")}


def parse(bench, line: str):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, bench.Config)
    return config_from_args(bench.Config, parser.parse_args(shlex.split(line)))


@pytest.mark.parametrize("name,line", [(n, line) for n, lines in DOCUMENTED.items() for line in lines])
def test_documented_commands_parse(name, line):
    assert isinstance(parse(load_bench(name), line), load_bench(name).Config)


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_defaults_are_the_configs_and_help_lists_every_field(name, capsys):
    bench = load_bench(name)
    assert parse(bench, "") == bench.Config()
    with pytest.raises(SystemExit) as done:
        run_recipe(bench.Config, bench.main, ["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for field in dataclasses.fields(bench.Config):   # internal fields (train_speed's --worker) stay out of --help
        assert ("--" + field.name.replace("_", "-") in text) != bool(field.metadata.get("internal"))


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_value_is_a_config_error_naming_the_field(name, capsys):
    bench, (line, field) = load_bench(name), BAD[name]
    with pytest.raises(ConfigError) as err:
        parse(bench, line)
    assert err.value.field == field
    with pytest.raises(SystemExit) as done:            # on the command line: exit 2 and the message, no traceback
        run_recipe(bench.Config, bench.main, shlex.split(line))
    assert done.value.code == 2 and f"error: {field}:" in capsys.readouterr().err


# -- train_speed: what its own parsing has to keep ------------------------------------------------

def test_train_speed_recipe_flags_follow_the_recipes_defaults_and_types():
    import typing

    from parsona.recipes.train_preference_lora import Config as Recipe

    bench, recipe = load_bench("train_speed").Config, Recipe()
    ours, theirs = typing.get_type_hints(bench), typing.get_type_hints(Recipe)
    for name in load_bench("train_speed").RECIPE_FLAGS:
        assert getattr(bench(), name) == getattr(recipe, name) and ours[name] == theirs[name], name


def test_train_speed_commands_parse_back_to_their_config():
    """command(cfg) is printed for people to rerun; the worker's argv is what each subprocess parses."""
    bench = load_bench("train_speed")
    cfg = parse(bench, "--tiny --contenders parsona --learning-rate 1e-3 --no-all-labels-only --model ''")
    assert parse(bench, shlex.join(shlex.split(bench.command(cfg))[2:])) == cfg
    assert "--worker" not in bench.command(cfg) and "--result-file" not in bench.command(cfg)
    child = dataclasses.replace(cfg, worker="parsona", result_file="/tmp/r.json")
    assert parse(bench, shlex.join(bench.flags(child, internal=True))) == child


def test_train_speed_refuses_through_the_recipes_own_checks_and_a_missing_trl(capsys):
    bench = load_bench("train_speed")
    with pytest.raises(ConfigError) as err:                  # checked by the recipe's Config, same field name
        parse(bench, "--loss nope")
    assert err.value.field == "loss"
    with pytest.raises(ConfigError) as err:
        parse(bench, "--worker nope")
    assert err.value.field == "worker"
    if importlib.util.find_spec("trl") is None:              # before any contender starts: exit 2, one line
        with pytest.raises(SystemExit) as done:
            run_recipe(bench.Config, bench.main, [])
        assert done.value.code == 2 and "error: contenders: trl is not installed" in capsys.readouterr().err


def test_run_recipe_returns_what_main_returns():
    """A bench turns it into its exit status: sys.exit(0 if run_recipe(Config, main) else 1)."""
    bench = load_bench("train_speed")
    assert run_recipe(bench.Config, lambda cfg: ("ran", cfg.seed), ["--seed", "3"]) == ("ran", 3)
