"""The command line end to end on a tiny model: train -> eval front -> generate, and bad input."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

import numpy as np
import pytest

from parsona.cli import main


def union_volume(points, reference) -> float:
    """Hypervolume by inclusion–exclusion over every subset of the points' boxes [reference, p]:
    exponential, exact, and sharing no code with parsona.objectives."""
    P = np.asarray(points, float) - np.asarray(reference, float)
    total = 0.0
    for k in range(1, len(P) + 1):
        for subset in itertools.combinations(range(len(P)), k):
            total += (-1) ** (k + 1) * np.prod(np.clip(P[list(subset)].min(axis=0), 0, None))
    return total


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
    assert "plots:" in capsys.readouterr().out
    header = (front / "front.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["method", "preference_helpful", "preference_harmless"]     # one column per weight
    # no --model: generate uses the base model the adapter recorded it was trained on
    assert main(["generate", "--preference-adapter", str(run / "adapter"), "--preference", "0.2,0.8",
                 "--max-new-tokens", "4", "hello"]) == 0
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny_dir
    assert capsys.readouterr().out.strip()                      # it answered (what, the parity test checks)
    assert main(["generate", "--preference-adapter", str(run / "adapter"), "--preference", "0.5,0.6", "hi"]) == 2
    assert "sums to 1.1" in capsys.readouterr().err


def test_three_objectives_train_and_evaluate_with_exact_hypervolume(tiny_dir, tmp_path):
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
    assert report["indicators"][0]["hypervolume"] == pytest.approx(union_volume(points, [0.4, 0.4, 0.4]), abs=1e-12)


def test_defaults_train_on_fully_labelled_pairs_and_the_papers_setup_is_a_few_flags_away(tiny_dir, tmp_path):
    from parsona.training.front_data import front_pairs

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
    assert indicators["hypervolume"] == pytest.approx(union_volume(points, [-5.0, -4.0]), abs=1e-9)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--preference", "0.5,0.5", "hi"], "no adapter on this host takes it"),
    (["generate", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "hi"], "cannot load"),
    (["train", "preference-lora", "--n-objectives", "3"], "n_objectives"),
    (["eval", "front"], "adapter"),
    (["eval", "front", "--adapter", "run/adapter", "--reward-models", "runs/rewards/helpful"], "objective=DIR"),
    (["eval", "front", "--adapter", "run/adapter", "--reference-point", "0.5,x"], "reference_point"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys, tiny_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on these machines: a hub id cannot be fetched
    if argv[0] == "generate" and "--model" not in argv:
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


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "99999"], "--port"),
    (["serve", "--expert-cache-mb", "-1"], "--expert-cache-mb"),
    (["serve", "--expert-cache-mb", "nan"], "--expert-cache-mb"),
    (["generate"], "prompt"),
])
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_eval_front_on_a_plain_lora_says_what_it_needs(tiny_dir, tmp_path, capsys):
    from conftest import peft_lora_dir

    lora = peft_lora_dir(tmp_path / "lora", seed=0)
    assert main(["eval", "front", "--model", tiny_dir, "--adapter", str(lora), "--out", str(tmp_path / "front")]) == 2
    err = capsys.readouterr().err
    assert "holds a lora adapter" in err and "--baselines" in err and "Traceback" not in err


def test_serve_without_its_extra_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # importing it now raises ImportError
    assert main(["serve", "--store", str(tmp_path / "store")]) == 2
    assert "pip install 'parsona[serve]'" in capsys.readouterr().err


def test_the_old_adapter_flag_still_works_and_says_its_new_name(tiny_dir, tmp_path, capsys):
    from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
    from parsona.base_model import load_base_model

    model, _ = load_base_model(tiny_dir)
    save_adapter(attach(model, PreferenceLoRAConfig(rank=2)), tmp_path / "pref")
    assert main(["generate", "--adapter", str(tmp_path / "pref"), "--max-new-tokens", "2", "hi"]) == 0
    assert "--adapter is deprecated; use --preference-adapter" in capsys.readouterr().err


def test_generate_and_the_http_api_give_the_same_greedy_text(tiny_dir, tmp_path, capsys, monkeypatch):
    from fastapi.testclient import TestClient

    from conftest import peft_lora_dir, perturb
    from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
    from parsona.base_model import load_base_model
    from parsona.cli import build_parser
    from parsona.serve.cli import build_app

    model, _ = load_base_model(tiny_dir)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    save_adapter(pref, tmp_path / "pref")
    lora = peft_lora_dir(tmp_path / "lora", seed=3)
    cli = ["generate", "--preference-adapter", str(tmp_path / "pref"), "--preference", "0.3,0.7", "--max-new-tokens", "8"]
    assert main([*cli, "--lora", str(lora), "hello"]) == 0
    from_cli = capsys.readouterr().out[:-1]                         # print's newline
    assert main([*cli, "hello"]) == 0
    assert capsys.readouterr().out[:-1] != from_cli                 # the LoRA matters, so the parity means something

    monkeypatch.setenv("PARSONA_ADMIN_KEY", "admin")
    app = build_app(build_parser().parse_args(["serve", "--preference-adapter", str(tmp_path / "pref"),
                                               "--store", str(tmp_path / "store")]))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(lora, arcname="lora")
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {client.post('/v1/users', headers={'Authorization': 'Bearer admin'}).json()['api_key']}"}
        adapter = client.post("/v1/adapters", content=archive.getvalue(), headers={**key, "Content-Type": "application/x-tar"})
        assert adapter.status_code == 201, adapter.text
        model_id = client.get("/v1/models", headers=key).json()["data"][0]["id"]
        r = client.post("/v1/chat/completions", headers=key, json={
            "model": model_id, "messages": [{"role": "user", "content": "hello"}], "temperature": 0, "max_tokens": 8,
            "preference": [0.3, 0.7], "adapter": adapter.json()["id"]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == from_cli
    app.state.store.close()


def test_serve_without_a_preference_adapter_serves_the_base_and_refuses_a_preference(tiny_dir, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from parsona.cli import build_parser
    from parsona.serve.cli import build_app

    monkeypatch.setenv("PARSONA_ADMIN_KEY", "admin")
    app = build_app(build_parser().parse_args(["serve", "--model", tiny_dir, "--store", str(tmp_path / "store")]))
    body = {"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    with TestClient(app) as client:
        key = {"Authorization": f"Bearer {client.post('/v1/users', headers={'Authorization': 'Bearer admin'}).json()['api_key']}"}
        assert client.post("/v1/chat/completions", json=body, headers=key).status_code == 200
        r = client.post("/v1/chat/completions", json={**body, "preference": [0.5, 0.5]}, headers=key)
        assert r.status_code == 400 and r.json()["error"]["param"] == "preference"
        assert client.get("/v1/models", headers=key).json()["data"][0]["n_objectives"] is None
    app.state.store.close()


def test_demo_trains_evaluates_plots_and_says_whether_the_preference_steers(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", tiny_dir, "--output-dir", str(out), "--max-steps", "2", "--max-length", "48",
                 "--pairs-per-step", "2", "--eval-pairs", "4", "--max-new-tokens", "3"]) == 0
    printed = capsys.readouterr().out
    assert (out / "train" / "adapter" / "adapter.safetensors").is_file()
    assert {p.name for p in (out / "front").iterdir()} == {"front.csv", "front.json", "front.png"}
    report = json.loads((out / "front" / "front.json").read_text())
    assert len(report["methods"][0]["rows"]) == 11 and report["eval_pairs"] == 4      # the whole grid, scored
    summary = json.loads((out / "train" / "adapter" / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["reference"]["computed"] == 4           # precomputed, then read
    assert printed.count("preference ") == 3                                         # the prompt at 3 λ
    row = report["indicators"][0]
    line = next(l for l in printed.splitlines() if l.startswith("Spearman"))
    assert f"{row['n_non_dominated']} of 11 points non-dominated" in line and "took" in printed
