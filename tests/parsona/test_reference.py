"""Reference log-probs kept on disk: training with them is the same computation, a changed setting
misses, other runs on the same base reuse them, and the file is never half-written or misread."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from parsona.adapters import LoRAConfig, PreferenceLoRAConfig, attach
from parsona.base_model import load_base_model
from parsona.recipes.train_preference_lora import Config, main
from parsona.training.reference import ReferenceLogProbs, ReferenceStore, model_fingerprint, pair_key


def summary(out):
    return json.loads((out / "adapter" / "training_summary.json").read_text())


def trained(out):
    return load_file(out / "adapter" / "adapter.safetensors")


@pytest.fixture
def cfg(tiny_dir, tmp_path):
    return Config(model=tiny_dir, max_length=48, pairs_per_step=2, max_steps=3, rank=2, max_train_pairs=4,
                  warmup_steps=1, reference_cache=str(tmp_path / "ref"))


def test_precomputed_reference_trains_exactly_as_computing_it_in_the_step(cfg, tmp_path):
    on = main(dataclasses.replace(cfg, output_dir=str(tmp_path / "on"))).parent
    off = main(dataclasses.replace(cfg, output_dir=str(tmp_path / "off"), precompute_reference=False)).parent
    a, b = trained(on), trained(off)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)     # the same numbers, not just close
    assert summary(on)["history"] == summary(off)["history"]
    ref_on, ref_off = summary(on)["reference"], summary(off)["reference"]
    assert ref_on["computed"] == 4 and ref_on["reused"] == 6            # 4 distinct pairs; 3 steps × 2 read back
    assert ref_off == {"store": None, "reused": 0, "computed": 6}       # computed in every step


def test_another_run_on_the_same_base_reuses_them_and_a_changed_setting_misses(cfg, tmp_path):
    main(dataclasses.replace(cfg, output_dir=str(tmp_path / "a")))
    again = main(dataclasses.replace(cfg, output_dir=str(tmp_path / "b"), learning_rate=1e-3, rank=4)).parent
    assert summary(again)["reference"]["computed"] == 0                 # same pairs, same base: all reused
    longer = main(dataclasses.replace(cfg, output_dir=str(tmp_path / "c"), max_length=40)).parent
    assert summary(longer)["reference"]["computed"] == 4                # other tokens: a miss, never a stale hit


def test_the_fingerprint_follows_the_base_weights_not_the_adapters(tiny_dir):
    model, _ = load_base_model(tiny_dir)
    before = model_fingerprint(model)
    attach(model, PreferenceLoRAConfig(rank=2))
    attach(model, LoRAConfig(rank=2))
    assert model_fingerprint(model) == before                           # every seed and method shares a store
    assert model_fingerprint(model, "bf16") != before                   # autocast changes the numbers
    with torch.no_grad():
        model.get_input_embeddings().weight[0, 0] += 1e-3
    assert model_fingerprint(model)["weights_sha256"] != before["weights_sha256"]


def test_the_store_round_trips_merges_and_ignores_another_models_file(tmp_path):
    path = tmp_path / "store.safetensors"
    one, two = ReferenceStore(path, {"model": "x"}), ReferenceStore(path, {"model": "x"})
    k1, k2 = pair_key([1, 2], [[3], [4, 5]]), pair_key([1, 2], [[3], [4]])
    one.put(k1, torch.tensor([-1.5, -2.25]))
    one.flush()
    two.put(k2, torch.tensor([-0.5, -3.0]))
    two.flush()                                                          # merges what `one` wrote meanwhile
    again = ReferenceStore(path, {"model": "x"})
    torch.testing.assert_close(again.get(k1), torch.tensor([-1.5, -2.25]), rtol=0, atol=0)
    torch.testing.assert_close(again.get(k2), torch.tensor([-0.5, -3.0]), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["store.safetensors"]   # no temp file left behind
    assert ReferenceStore(path, {"model": "y"}).get(k1) is None           # another fingerprint: never read


def test_a_model_with_dropout_computes_its_reference_in_the_step(tiny_dir, tmp_path):
    from parsona.training.preference import setup

    cfg = Config(model=tiny_dir, max_length=48, pairs_per_step=2, max_steps=1, rank=2, max_train_pairs=2)
    run = setup(cfg)
    assert isinstance(run.reference, ReferenceLogProbs) and run.reference.store is not None
    run.model.config.attention_dropout = 0.1                              # not the same numbers twice in training
    with pytest.warns(UserWarning, match="dropout"):
        from parsona.training.preference import reference_source

        source = reference_source(cfg, run.scorer, run.adapter, run.tokenizer, run.accelerator)
    assert source.store is None


def test_the_baselines_reuse_the_preference_runs_reference_log_probs(cfg, tmp_path):
    from parsona.recipes import baselines

    main(dataclasses.replace(cfg, output_dir=str(tmp_path / "pref"), max_steps=4))     # sees all 4 pairs
    out = baselines.main(baselines.Config(model=cfg.model, output_dir=str(tmp_path / "soups"), max_steps=4, rank=2,
                                          max_length=cfg.max_length, pairs_per_step=2, max_train_pairs=4,
                                          warmup_steps=1, reference_cache=cfg.reference_cache))
    first = json.loads((out / "helpful" / "training_summary.json").read_text())
    assert first["reference"]["computed"] == 0 and first["reference"]["reused"] > 0   # same base: no new pass
