"""bench/onnx_export.py end to end on a tiny model: both exports, parity and the latency table are reported."""

from __future__ import annotations

import pytest

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe

pytest.importorskip("onnxruntime")


def test_it_reports_parity_and_latency_at_both_batch_sizes(tiny_dir, tmp_path, capsys):
    bench = load_bench("onnx_export")
    r = run_recipe(bench.Config, bench.main, ["--model", tiny_dir, "--decode-tokens", "2", "--prompt-tokens", "4",
                                              "--threads", "1", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "parity: max |Δlogit|" in printed and "batch 8: per-token ms" in printed
    assert r["parity"]["max_abs_logit_diff"] <= 1e-4 and r["parity"]["greedy_20_identical"]
    assert set(r["latency"]) == {1, 8} and all(v > 0 for t in r["latency"].values() for v in t.values())
    assert (tmp_path / "results-onnx.json").is_file() and (tmp_path / "preference" / "parsona_onnx.json").is_file()
    assert "fp16: " in printed and "int8: " in printed and set(r["variant_parity"]) == {"fp16", "int8"}
    if r["genai"] is not None:                                         # onnxruntime-genai installed (dev)
        assert r["genai"]["max_abs_logit_diff"] <= 1e-4 and "onnxruntime-genai on the LoRA export" in printed
    assert r["variant_parity"]["fp16"]["max_abs_logit_diff"] <= 2e-2 and all(
        f"ort_preference_{v}" in t for v in ("fp16", "int8") for t in r["latency"].values())


def test_a_reused_export_gets_only_the_variants_it_lacks(tiny_dir, tmp_path, capsys):
    bench = load_bench("onnx_export")
    common = ["--model", tiny_dir, "--decode-tokens", "2", "--prompt-tokens", "4", "--threads", "1",
              "--output-dir", str(tmp_path)]
    run_recipe(bench.Config, bench.main, [*common, "--variants", ""])
    assert not (tmp_path / "preference" / "model.int8.onnx").exists()
    (tmp_path / "preference" / "genai_config.json").unlink()                    # an export from before it existed
    r = run_recipe(bench.Config, bench.main, [*common, "--reuse", "--variants", "int8"])
    assert "export_seconds_preference" not in r and set(r["variant_parity"]) == {"int8"}
    assert (tmp_path / "preference" / "model.int8.onnx").is_file() and (tmp_path / "preference" / "genai_config.json").is_file()


def test_decoders_are_timed_one_step_of_each_in_turn():
    bench = load_bench("onnx_export")
    order = []

    def steps(name, n):
        for i in range(n):
            order.append(name)
            yield float(i)

    decoders = {"a": steps("a", 3), "b": steps("b", 2), "c": steps("c", 2)}
    times = bench.interleaved(decoders)
    assert order == ["a", "b", "c", "b", "c", "a", "a"]            # each round starts one decoder later
    assert times == {"a": [0.0, 1.0, 2.0], "b": [0.0, 1.0], "c": [0.0, 1.0]} and len(decoders) == 3
