"""The command line end to end on a tiny model: train -> eval front -> generate, and bad input."""

from __future__ import annotations

import json

import pytest

from parsona.cli import main


def test_train_eval_generate_round_trip(tiny_dir, tmp_path, capsys):
    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["train", "preference-lora", "--model", tiny_dir, "--output-dir", str(run), "--max-steps", "2",
                 "--max-length", "48", "--pairs-per-step", "2", "--rank", "2"]) == 0
    assert (run / "adapter" / "adapter.safetensors").is_file()
    assert main(["eval", "front", "--adapter", str(run / "adapter"), "--out", str(front), "--eval-pairs", "4",
                 "--max-length", "48", "--n-partitions", "4"]) == 0
    assert {p.name for p in front.iterdir()} == {"front.csv", "front.json", "front.png"}
    report = json.loads((front / "front.json").read_text())
    assert report["objectives"] == ["helpful", "harmless"] and len(report["methods"][0]["rows"]) == 5
    assert report["indicators"][0]["reference_point"] == [0.4, 0.4]
    assert main(["generate", "--model", tiny_dir, "--adapter", str(run / "adapter"), "--preference", "0.2,0.8",
                 "--max-new-tokens", "4", "hello"]) == 0
    assert "plot:" in capsys.readouterr().out


def test_three_objectives_train_and_evaluate_with_exact_hypervolume(tiny_dir, tmp_path):
    from parsona.objectives import hypervolume_info

    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["train", "preference-lora", "--model", tiny_dir, "--output-dir", str(run), "--max-steps", "2",
                 "--max-length", "48", "--pairs-per-step", "2", "--rank", "2",
                 "--objectives", "helpful,harmless,brevity", "--n-objectives", "3"]) == 0
    assert main(["eval", "front", "--adapter", str(run / "adapter"), "--out", str(front), "--eval-pairs", "4",
                 "--max-length", "48", "--n-partitions", "2"]) == 0
    report = json.loads((front / "front.json").read_text())
    assert report["objectives"] == ["helpful", "harmless", "brevity"]
    rows = report["methods"][0]["rows"]
    assert len(rows) == 6                                           # simplex_grid(3, 2)
    points = [[r[f"accuracy_{o}"] for o in report["objectives"]] for r in rows]
    value, method = hypervolume_info(points, [0.4, 0.4, 0.4])
    assert method == "exact" and value == pytest.approx(report["indicators"][0]["hypervolume"])


def test_defaults_train_on_fully_labelled_pairs_and_the_papers_setup_is_a_few_flags_away(tiny_dir, tmp_path):
    from parsona.recipes.front_data import front_pairs

    train, _ = front_pairs()
    both = sum({"helpful", "harmless"} <= set(p.labels) for p in train)    # counted here, not by the recipe
    flags = ["--model", tiny_dir, "--max-steps", "1", "--max-length", "32", "--pairs-per-step", "2"]
    paper = ["--rank", "8", "--preference-rank", "1", "--alpha", "16", "--no-all-labels-only"]
    for name, extra, pairs, ranks in (("ours", [], both, (0, 8)), ("paper", paper, len(train), (8, 1))):
        assert main(["train", "preference-lora", "--output-dir", str(tmp_path / name), *flags, *extra]) == 0
        summary = json.loads((tmp_path / name / "adapter" / "training_summary.json").read_text())
        assert summary["train_pairs"] == pairs
        assert (summary["config"]["rank"], summary["config"]["preference_rank"]) == ranks


@pytest.mark.real
def test_eval_front_scores_replies_with_saved_reward_models(tiny_dir, tmp_path):
    from parsona.objectives import hypervolume_info
    from parsona.objectives.features import SentenceEncoder
    from parsona.objectives.rewards import BradleyTerryReward

    run, front = tmp_path / "run", tmp_path / "front"
    assert main(["train", "preference-lora", "--model", tiny_dir, "--output-dir", str(run), "--max-steps", "1",
                 "--max-length", "48", "--pairs-per-step", "2"]) == 0
    pairs = [("How do I bake bread?", "Knead flour, water and yeast, let it rise, bake.", "No."),
             ("Capital of France?", "Paris.", "I won't say.")]
    for name in ("helpful", "harmless"):
        BradleyTerryReward(SentenceEncoder(device="cpu"), C=10.0).fit(pairs).save(tmp_path / name)
    specs = f"helpful={tmp_path / 'helpful'},harmless={tmp_path / 'harmless'}"
    common = ["eval", "front", "--adapter", str(run / "adapter"), "--eval-pairs", "3", "--max-length", "48",
              "--n-partitions", "2", "--max-new-tokens", "3", "--reward-models"]
    assert main([*common, f"helpful={tmp_path / 'helpful'}", "--out", str(front)]) == 2     # harmless is missing
    assert main([*common, specs, "--reference-point=-5,-4", "--out", str(front)]) == 0
    report = json.loads((front / "front.json").read_text())
    indicators, rows = report["indicators"][0], report["methods"][0]["rows"]
    assert indicators["metric"] == "reward" and indicators["reference_point"] == [-5.0, -4.0]
    points = [[r["reward_helpful"], r["reward_harmless"]] for r in rows]
    assert indicators["hypervolume"] == pytest.approx(hypervolume_info(points, [-5.0, -4.0])[0])


@pytest.mark.parametrize("argv, message", [
    (["generate", "--preference", "0.5,0.6", "hi"], "sums to 1.1"),
    (["train", "preference-lora", "--n-objectives", "3"], "n_objectives"),
    (["eval", "front"], "adapter"),
    (["eval", "front", "--adapter", "run/adapter", "--reward-models", "runs/rewards/helpful"], "objective=DIR"),
    (["eval", "front", "--adapter", "run/adapter", "--reference-point", "0.5,x"], "reference_point"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tiny_dir):
    if argv[0] == "generate":
        argv = [argv[0], "--model", tiny_dir, *argv[1:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_an_explicit_reference_point_needs_one_value_per_objective():
    from parsona.errors import ConfigError
    from parsona.recipes.eval_front import reward_reference

    assert reward_reference("0.5,-1", None, None, [], None, ("helpful", "harmless")) == [0.5, -1.0]
    with pytest.raises(ConfigError) as err:                 # before any reply is generated
        reward_reference("0.5", None, None, [], None, ("helpful", "harmless"))
    assert err.value.field == "reference_point" and "1 for 2 objectives" in str(err.value)
