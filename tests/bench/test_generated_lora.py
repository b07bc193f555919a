"""bench/generated_lora.py end to end on a tiny model: it reuses bench/personalization.py's LoRAs as
its expert bank, and its oracle is exactly that bench's diagonal."""

from __future__ import annotations

import numpy as np

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_it_blends_the_other_authors_loras_and_its_oracle_is_the_lora_diagonal(tiny_dir, tiny_encoder_dir, tmp_path,
                                                                              capsys):
    common = ["--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--authors", "4", "--max-emails", "4",
              "--max-steps", "2", "--batch-size", "2", "--max-length", "32", "--rank", "2", "--output-dir", str(tmp_path)]
    matrix = run_recipe(load_bench("personalization").Config, load_bench("personalization").main,
                        [*common, "--parts", "lora", "--population-steps", "0", "--eval-every", "0"])["lora"]
    capsys.readouterr()
    r = run_recipe(load_bench("generated_lora").Config, load_bench("generated_lora").main, [*common, "--k", "2"])
    printed = capsys.readouterr().out
    assert "LoRA 1/4" not in printed and "blend − uniform" in printed and "cvae  − base" in printed
    assert "servable adapter, experts warm: median" in printed
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
