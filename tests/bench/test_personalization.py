"""bench/personalization.py end to end on a tiny model and encoder, and its ranking arithmetic by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_ranks_count_ties_against_the_true_author():
    bench = load_bench("personalization")
    scores = np.array([[0.9, 0.1, 0.3], [0.5, 0.5, 0.2], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(bench.ranks_of(scores, np.array([0, 1, 0])), [1, 2, 3])


def test_the_bench_runs_both_parts_and_a_rerun_trains_and_scores_nothing_again(tiny_dir, tiny_encoder_dir, tmp_path,
                                                                              capsys, monkeypatch):
    bench = load_bench("personalization")
    argv = ["--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--authors", "3", "--max-emails", "4",
            "--population-steps", "0", "--eval-every", "0", "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--rank", "2", "--output-dir", str(tmp_path)]
    first = run_recipe(bench.Config, bench.main, [*argv, "--persona-steps", "2"])
    printed = capsys.readouterr().out
    r = first["lora"]
    assert "author retrieval" in printed and "own LoRA lowest for" in printed and "command:" in printed
    assert "own − other" in printed and len(first["persona"]["nll_own"]) == 3
    assert first["cold_start"]["items"] == 12 and len(first["cold_start"]["seconds"]) == 5   # 3 authors × 4 emails
    p = first["persona"]
    np.testing.assert_allclose(p["own_minus_none"]["mean"], np.mean(np.array(p["nll_own"]) - p["nll_none"]))
    r = first["lora"]
    assert len(r["nll"]) == 3 and len(r["nll"][0]) == 4 and r["columns"][0] == "base"
    assert 0 <= r["own_lora_wins"] <= 3 and r["mean_nll_base"] > 0
    assert set(first["retrieval"]) == {"authors", "test_emails", "persona", "persona_input_aware", "tfidf_char", "chance"}
    assert first["retrieval"]["chance"]["top1"] == pytest.approx(1 / 3)
    weights = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")}
    assert len(weights) == 3 + 1                                                       # 3 LoRAs, 1 persona prefix

    def no_scoring(*args, **kwargs):
        raise AssertionError("an NLL column was scored again")

    import parsona.logprobs

    with monkeypatch.context() as patch:
        patch.setattr(parsona.logprobs, "lora_nll", no_scoring)                   # the rerun reads nll.json
        again = run_recipe(bench.Config, bench.main, [*argv, "--parts", "lora"])
    assert "LoRA 1/3" not in capsys.readouterr().out                                   # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.safetensors")} == weights
    assert again["lora"]["nll"] == r["nll"]
    assert json.loads((tmp_path / "results.json").read_text())["lora"]["nll"] == r["nll"]
    other = run_recipe(bench.Config, load_bench("personalization").main, [*argv, "--parts", "lora", "--max-steps", "3"])
    assert len(list((tmp_path / "loras").rglob("adapter_model.safetensors"))) == 2 * 3     # new settings: new LoRAs
    assert other["lora"]["nll"] != r["nll"] and len(json.loads((tmp_path / "nll.json").read_text())) == 2


def test_unknown_parts_are_refused(tmp_path):
    bench = load_bench("personalization")
    with pytest.raises(SystemExit) as exit_:
        run_recipe(bench.Config, bench.main, ["--parts", "lora,vibes", "--output-dir", str(tmp_path)])
    assert exit_.value.code == 2


def test_early_stopped_loras_are_checked_on_the_valid_emails_and_kept_apart(tiny_dir, tmp_path, capsys):
    bench = load_bench("personalization")
    argv = ["--model", tiny_dir, "--authors", "2", "--max-emails", "3", "--max-steps", "2", "--batch-size", "2",
            "--max-length", "32", "--rank", "2", "--parts", "lora", "--output-dir", str(tmp_path), "--population-steps", "0", "--eval-every", "0"]
    plain = run_recipe(bench.Config, bench.main, argv)
    stopped = run_recipe(bench.Config, bench.main, [*argv, "--eval-every", "1"])
    printed = capsys.readouterr().out
    from parsona.data.enron import users_valid

    valid = users_valid(stopped["lora"]["authors"], max_emails=3)
    assert printed.count("(kept)") == 2 and printed.count("; 3 held-out texts") == sum(len(v) == 3 for v in valid.values())
    assert len(list((tmp_path / "loras").rglob("adapter_model.safetensors"))) == 2 * 2      # its own LoRAs
    assert len(json.loads((tmp_path / "nll.json").read_text())) == 2                     # its own columns
    assert plain["lora"]["authors"] == stopped["lora"]["authors"]


def test_authors_can_start_from_a_population_lora_scored_as_its_own_column(tiny_dir, tmp_path, capsys):
    bench = load_bench("personalization")
    argv = ["--model", tiny_dir, "--authors", "2", "--max-emails", "3", "--max-steps", "2", "--batch-size", "2",
            "--max-length", "32", "--rank", "2", "--parts", "lora", "--output-dir", str(tmp_path), "--population-steps", "0", "--eval-every", "0"]
    r = run_recipe(bench.Config, bench.main, [*argv, "--population-steps", "2"])["lora"]
    assert "the population LoRA every author's starts from" in capsys.readouterr().out
    assert len(list((tmp_path / "loras").rglob("adapter_model.safetensors"))) == 2 + 1
    assert r["columns"] == ["base", *r["authors"]] and len(r["nll_population"]) == 2
    assert r["own_beats_population"] == sum(r["nll"][i][1 + i] < r["nll_population"][i] for i in range(2))
    plain = run_recipe(bench.Config, bench.main, argv)["lora"]                       # the same authors from ΔW = 0
    assert len(list((tmp_path / "loras").rglob("adapter_model.safetensors"))) == 2 + 1 + 2
    assert plain["nll"] != r["nll"] and "nll_population" not in plain


def test_an_early_stopped_population_lora_is_checked_on_a_few_emails_of_each_author_a_few_times(
        tiny_dir, tmp_path, capsys, monkeypatch):
    import parsona.logprobs
    from parsona.data.enron import users_valid

    bench = load_bench("personalization")
    checks = []
    score = parsona.logprobs.lora_nll
    monkeypatch.setattr(parsona.logprobs, "lora_nll", lambda *a, **k: checks.append(len(a[3])) or score(*a, **k))
    argv = ["--model", tiny_dir, "--authors", "2", "--max-emails", "6", "--max-steps", "2", "--batch-size", "2",
            "--max-length", "32", "--rank", "2", "--parts", "lora", "--output-dir", str(tmp_path),
            "--population-steps", "16", "--eval-every", "1"]
    r = run_recipe(bench.Config, bench.main, argv)["lora"]
    valid = users_valid(r["authors"], max_emails=6)
    held = sum(min(len(v), bench.POPULATION_HELD) for v in valid.values())
    # the population: every 16 // POPULATION_CHECKS = 2 steps (0, 2, ..., 16) on each author's first emails;
    # then each author at its own eval_every (steps 0, 1, 2) on all of its valid emails
    # (then the NLL matrix, scored through the same function)
    own = [len(valid[a]) for a in r["authors"] if a in valid for _ in range(3)]
    assert checks[:9] == [held] * 9 and checks[9:9 + len(own)] == own


def test_two_processes_share_the_nll_matrix_and_one_scores_what_the_other_claimed_but_never_wrote(
        tiny_dir, tmp_path, monkeypatch):
    import threading
    import time

    import parsona.io
    import parsona.logprobs
    from parsona.io import claimed

    bench = load_bench("personalization")
    argv = ["--model", tiny_dir, "--authors", "2", "--max-emails", "3", "--max-steps", "1", "--batch-size", "2",
            "--max-length", "32", "--rank", "2", "--parts", "lora", "--output-dir", str(tmp_path), "--population-steps", "0", "--eval-every", "0"]
    first = run_recipe(bench.Config, bench.main, argv)["lora"]
    [key] = json.loads((tmp_path / "nll.json").read_text())
    gone = first["authors"][1]
    cached = json.loads((tmp_path / "nll.json").read_text())
    del cached[key][gone]                                                         # a column not yet scored ...
    (tmp_path / "nll.json").write_text(json.dumps(cached))
    scored, score = [], parsona.logprobs.lora_nll
    monkeypatch.setattr(parsona.logprobs, "lora_nll", lambda *a, **k: scored.append(a[2]) or score(*a, **k))
    waiting, claim = threading.Event(), parsona.io.claimed

    def claimed_noting_waits(lock, wait=True):
        if wait and Path(lock).name.startswith("nll-"):
            waiting.set()                                                         # the worker reached the wait
        return claim(lock, wait)

    monkeypatch.setattr(parsona.io, "claimed", claimed_noting_waits)
    result = {}
    with claimed(tmp_path / ".locks" / f"nll-{key}-{gone}.lock", wait=False) as mine:   # ... claimed elsewhere
        assert mine
        worker = threading.Thread(target=lambda: result.update(run_recipe(bench.Config, bench.main, argv)["lora"]))
        worker.start()
        assert waiting.wait(120)                                                  # it skipped the column, then waits
        time.sleep(0.5)
        assert worker.is_alive() and scored == []                                 # and scores nothing twice
    worker.join(60)                                                               # released unwritten: scored here
    assert set(scored) == {gone} and result["nll"] == first["nll"]
