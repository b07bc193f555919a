"""bench/generated_lora.py end to end on a tiny model: it reuses bench/personalization.py's LoRAs as
its expert bank, and its oracle is exactly that bench's diagonal."""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_it_blends_the_other_authors_loras_and_its_oracle_is_the_lora_diagonal(tiny_dir, tiny_encoder_dir, tmp_path,
                                                                              capsys):
    common = ["--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--authors", "4", "--max-emails", "4",
              "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--rank", "2", "--output-dir", str(tmp_path)]
    matrix = run_recipe(load_bench("personalization").Config, load_bench("personalization").main,
                        [*common, "--parts", "lora", "--population-steps", "0", "--eval-every", "0"])["lora"]
    capsys.readouterr()
    threads = torch.get_num_threads()
    r = run_recipe(load_bench("generated_lora").Config, load_bench("generated_lora").main,
                   [*common, "--k", "2", "--timing-threads", "1"])
    printed = capsys.readouterr().out
    assert "LoRA 1/4" not in printed and "blend − uniform" in printed and "cvae  − base" in printed
    assert "servable adapter, experts warm, 1 thread: median" in printed and r["timing_threads"] == 1
    assert torch.get_num_threads() == threads                                   # the scoring's threads are put back
    assert r["seconds_to_adapter"]["cold"]["max"] > 0 and r["seconds_to_adapter"]["warm"]["max"] > 0
    assert [r["rows"][a]["oracle"] for a in r["authors"]] == [matrix["nll"][i][1 + i] for i in range(4)]
    assert [r["rows"][a]["base"] for a in r["authors"]] == [row[0] for row in matrix["nll"]]
    for a in r["authors"]:
        assert a not in r["rows"][a]["chosen"] and len(r["rows"][a]["chosen"]) == 2     # never its own LoRA
        assert abs(sum(r["rows"][a]["weights"]) - 1) < 1e-9
        assert np.isfinite(r["rows"][a]["cvae"]) and r["rows"][a]["cvae"] != r["rows"][a]["base"]
    assert (tmp_path / "results-generated.json").is_file()


def test_early_stopped_experts_are_the_ones_the_personalization_bench_trained(tiny_dir, tiny_encoder_dir, tmp_path, capsys):
    common = ["--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--authors", "4", "--max-emails", "3",
              "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--rank", "2", "--eval-every", "1",
              "--output-dir", str(tmp_path)]
    matrix = run_recipe(load_bench("personalization").Config, load_bench("personalization").main,
                        [*common, "--parts", "lora", "--population-steps", "0"])["lora"]
    r = run_recipe(load_bench("generated_lora").Config, load_bench("generated_lora").main, [*common, "--k", "2"])
    assert len(list((tmp_path / "loras").rglob("adapter_model.safetensors"))) == 4         # reused, none trained again
    assert [r["rows"][a]["oracle"] for a in r["authors"]] == [matrix["nll"][i][1 + i] for i in range(4)]


def test_rows_are_kept_shared_between_processes_and_reused(tiny_dir, tiny_encoder_dir, tmp_path, monkeypatch, capsys):
    import fcntl
    import threading
    import time

    bench = load_bench("generated_lora")
    argv = ["--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--authors", "4", "--max-emails", "3",
            "--max-steps", "1", "--batch-size", "2", "--max-length", "32", "--rank", "2", "--k", "2",
            "--output-dir", str(tmp_path)]
    run_recipe(bench.Config, bench.main, [*argv, "--timing-threads", "1"])   # trains the experts; rows are scored
    rows_dir = next((tmp_path / "generated-rows").iterdir())
    first = {p.stem: p.read_text() for p in rows_dir.glob("*.json")}
    held = sorted(first)[1]
    (rows_dir / f"{held}.json").unlink()
    lock = open(tmp_path / ".locks" / f"generated-{rows_dir.name}-{held}.lock", "a")   # another process's claim
    fcntl.flock(lock, fcntl.LOCK_EX)
    scored = []
    real = bench.score_author
    monkeypatch.setattr(bench, "score_author", lambda cfg, a, *rest: scored.append(a) or real(cfg, a, *rest))
    worker = threading.Thread(target=run_recipe, args=(bench.Config, bench.main, argv))
    worker.start()
    for _ in range(600):                                              # it waits on the claimed author ...
        time.sleep(0.1)
        if not worker.is_alive() or "waiting for the other process" in capsys.readouterr().out:
            break
    assert worker.is_alive() and scored == [] and not (rows_dir / f"{held}.json").exists()
    fcntl.flock(lock, fcntl.LOCK_UN)                                  # ... whose claimant gives up: it scores it
    lock.close()
    worker.join(120)
    assert not worker.is_alive() and scored == [held]                 # the kept rows were not scored again,
    assert list((tmp_path / "generated-rows").iterdir()) == [rows_dir]     # though timed on other threads
    assert json.loads((rows_dir / f"{held}.json").read_text())["oracle"] == json.loads(first[held])["oracle"]


def test_a_negative_timing_thread_count_is_a_usage_error_naming_the_flag(capsys):
    import pytest

    bench = load_bench("generated_lora")
    with pytest.raises(SystemExit):
        run_recipe(bench.Config, bench.main, ["--timing-threads", "-1"])
    assert "timing_threads" in capsys.readouterr().err.replace("-", "_")
