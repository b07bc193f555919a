"""The group-predictor recipe: GPO-format groups in, a predictor that loads and predicts out; reruns reuse it."""

from __future__ import annotations

import json
import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.persona import GroupPreferencePredictor
from parsona.recipes import train_group_predictor as recipe
from parsona.recipes.config_cli import run_recipe


def write_groups(path, n_questions=6):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n_questions):
            options = ["a lot", "some", "none"] if i % 2 else ["yes", "no"]
            for group in ("Overall", "Left", "Right"):
                f.write(json.dumps({"qkey": f"Q{i}_W{i % 2}", "wave": f"W{i % 2}", "question": f"question {i}?",
                                    "options": options, "attribute": "X", "group": group,
                                    "dist": rng.dirichlet(np.ones(len(options))).round(6).tolist()}) + "\n")
    return path


def args(tmp_path, encoder, *more):
    return ["--groups", str(write_groups(tmp_path / "g.jsonl")), "--encoder", str(encoder), "--steps", "3",
            "--d-model", "8", "--n-layers", "1", "--output-dir", str(tmp_path / "run"), *more]


def test_it_trains_saves_and_reuses_a_finished_run(tmp_path, tiny_encoder_dir, capsys):
    out = run_recipe(recipe.Config, recipe.main, args(tmp_path, tiny_encoder_dir, "--use-prior", "--mixed-groups", "4",
                                                      "--exclude-groups", "Right"))
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["groups"] == 1 + 4                      # Left (Overall is the prior, Right excluded) + mixed
    model = GroupPreferencePredictor.load(out)
    assert model.use_prior and model.dim_ == 16
    assert run_recipe(recipe.Config, recipe.main, args(tmp_path, tiny_encoder_dir, "--use-prior", "--mixed-groups", "4",
                                                       "--exclude-groups", "Right")) == out
    assert "already trained" in capsys.readouterr().out


def test_the_loss_is_a_setting_and_the_saved_predictor_keeps_it(tmp_path, tiny_encoder_dir):
    out = run_recipe(recipe.Config, recipe.main, args(tmp_path, tiny_encoder_dir, "--loss", "cross_entropy_w1"))
    assert json.loads((out / "group_predictor.json").read_text())["loss"] == "cross_entropy_w1"
    assert GroupPreferencePredictor.load(out).loss.__name__ == "cross_entropy_w1"


@pytest.mark.parametrize("extra, field", [({"prior_group": "Nobody", "use_prior": True}, "prior_group"),
                                          ({"exclude_groups": "Martians"}, "exclude_groups"),
                                          ({"steps": 0}, "steps"), ({"groups": "missing.jsonl"}, "groups"),
                                          ({"loss": "mse"}, "loss")])
def test_bad_settings_name_their_field(tmp_path, tiny_encoder_dir, extra, field):
    settings = {"groups": str(write_groups(tmp_path / "g.jsonl")), "encoder": str(tiny_encoder_dir), "steps": 3,
                "output_dir": str(tmp_path / "run"), **extra}
    with pytest.raises(ConfigError) as e:
        recipe.main(recipe.Config(**settings))
    assert e.value.field == field
    assert not (tmp_path / "run" / "predictor").exists()


def test_the_cli_lists_it_with_help(capsys):
    from parsona.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "group-predictor", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "--use-prior" in out and "GPO" in out and "--mixed-groups" in out
