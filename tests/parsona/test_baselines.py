"""The baselines recipe on a tiny model: budgets, shared init, files written, resume, loading."""

from __future__ import annotations

import json

import pytest
import torch

from parsona.adapters.peft_format import read_peft_lora
from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.front_policies import GridPolicy, RewardedSoupsPolicy, load_front_policy
from parsona.recipes.baselines import FRONT_FILE, Config, main, plan

COMMON = dict(max_length=48, pairs_per_step=2, rank=2, warmup_steps=1)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def logits_with_delta(tiny_dir, loras, lam, input_ids) -> torch.Tensor:
    """Logits of a fresh base whose Linears got W0 + Σ λ_i s_i B_i A_i by hand: the exact mixture of
    updates that RewardedSoupsPolicy(mode="cat") promises, built without the bank."""
    model, _ = load_base_model(tiny_dir)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for l, lora in zip(lam, loras):
            for path, (A, B) in lora.factors.items():
                modules[path].weight += l * lora.scale * (B.float() @ A.float())     # (d_out, d_in)
        return model(input_ids).logits


def test_plan_splits_the_budget():
    soups = plan(Config(method="rewarded_soups", max_steps=5))
    assert [(e["name"], e["steps"], e["preference"]) for e in soups] == [("helpful", 3, [1.0, 0.0]), ("harmless", 2, [0.0, 1.0])]
    dps = plan(Config(method="dps", n_partitions=2, dps_steps_each=7))
    assert sorted(tuple(e["preference"]) for e in dps) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert all(e["steps"] == 7 and "." not in e["name"] for e in dps)


def test_rewarded_soups_trains_one_lora_per_objective(tiny_dir, tmp_path):
    out = main(Config(method="rewarded_soups", model=str(tiny_dir), output_dir=str(tmp_path), max_steps=2, **COMMON))
    front = json.loads((out / FRONT_FILE).read_text())
    assert front["total_steps"] == 2 and [l["steps"] for l in front["loras"]] == [1, 1]
    assert front["total_tokens"] > 0 and front["data_sha256"]
    one, two = read_peft_lora(out / "helpful"), read_peft_lora(out / "harmless")
    assert any(B.abs().sum() > 0 for _, B in one.factors.values())          # B left zero init: it trained
    model, _ = load_base_model(tiny_dir)
    policy = load_front_policy(model, out, mode="cat")
    assert isinstance(policy, RewardedSoupsPolicy) and policy.names == ("helpful", "harmless")
    input_ids = torch.arange(3, 19)[None]                                       # (1, 16)
    w0 = base_weights(model)
    with torch.no_grad():
        with policy.reference():                                               # W0: the bank switched off
            base = model(input_ids).logits
        with policy.at([0.3, 0.7]):                                            # what eval_front scores at λ
            merged = model(input_ids).logits
    expected = logits_with_delta(tiny_dir, [one, two], [0.3, 0.7], input_ids)
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    assert (merged - base).abs().max() > 1e-4                                  # the LoRAs did move the model (~4e-3)
    # leaving at() takes the soup out again: W0 back (unmerge subtracts ΔW, so up to float rounding,
    # ~4e-9 here), no combined LoRA left in the bank, and the model answers as the base again
    after = base_weights(model)
    assert after.keys() == w0.keys() and policy.adapter.names == ("helpful", "harmless")
    for key in w0:
        torch.testing.assert_close(after[key], w0[key], rtol=0, atol=1e-7)
    with torch.no_grad(), policy.reference():
        torch.testing.assert_close(model(input_ids).logits, base, rtol=0, atol=1e-6)
    # Rerunning skips finished LoRAs: nothing is retrained.
    before = (out / "helpful" / "adapter_model.safetensors").stat().st_mtime_ns
    main(Config(method="rewarded_soups", model=str(tiny_dir), output_dir=str(tmp_path), max_steps=2, **COMMON))
    assert (out / "helpful" / "adapter_model.safetensors").stat().st_mtime_ns == before
    # ... but LoRAs of other settings are not passed off as this run's
    for other, named in (({"max_steps": 4}, "steps"), ({"max_steps": 2, "learning_rate": 1.0}, "learning_rate")):
        with pytest.raises(ConfigError) as err:
            main(Config(method="rewarded_soups", model=str(tiny_dir), output_dir=str(tmp_path), **other, **COMMON))
        assert err.value.field == "output_dir" and named in str(err.value)
    assert json.loads((out / FRONT_FILE).read_text()) == front                  # the run's record is untouched
    # DPS-only fields do not touch Soups LoRAs: reused as they are
    main(Config(method="rewarded_soups", model=str(tiny_dir), output_dir=str(tmp_path), max_steps=2, n_partitions=3,
                dps_steps_each=7, scalarization="tchebycheff", **COMMON))
    assert (out / "helpful" / "adapter_model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("flag", [{}, {"all_labels_only": False}])
def test_default_trains_on_the_fully_labelled_pairs_like_the_preference_lora(tiny_dir, tmp_path, flag):
    from parsona.training.front_data import front_pairs
    from parsona.recipes.train_preference_lora import Config as PreferenceConfig

    out = main(Config(method="rewarded_soups", model=str(tiny_dir), output_dir=str(tmp_path), max_steps=2,
                      **flag, **COMMON))
    train, _ = front_pairs(("helpful", "harmless"))
    both = sum({"helpful", "harmless"} <= set(p.labels) for p in train)    # counted here, not by the recipe
    for name in ("helpful", "harmless"):
        summary = json.loads((out / name / "training_summary.json").read_text())
        labelled = sum(name in p.labels for p in train)
        assert summary["train_pairs"] == (labelled if flag else both) and both < labelled
    assert Config.all_labels_only == PreferenceConfig.all_labels_only     # the two CLIs agree by default


def test_dps_grid_loras_share_one_init(tiny_dir, tmp_path):
    # learning_rate 0: every LoRA must still equal the shared seeded init after training.
    out = main(Config(method="dps", model=str(tiny_dir), output_dir=str(tmp_path), n_partitions=1, dps_steps_each=2,
                      learning_rate=0.0, **COMMON))
    front = json.loads((out / FRONT_FILE).read_text())
    assert front["total_steps"] == 4 and front["budget"] == "2 × 2 steps"
    a, b = (read_peft_lora(out / l["name"]) for l in front["loras"])
    for path in a.factors:
        torch.testing.assert_close(a.factors[path][0], b.factors[path][0], rtol=0, atol=0)
    model, _ = load_base_model(tiny_dir)
    policy = load_front_policy(model, out)
    assert isinstance(policy, GridPolicy)
    assert policy.name_at([1.0, 0.0]) == "lam-10000-00000"                       # λ picks its own LoRA
    w0 = base_weights(model)
    with policy.at([1.0, 0.0]):
        assert policy.adapter.merged                                            # folded into the weights
    after = base_weights(model)
    assert not policy.adapter.merged and all(torch.equal(after[k], w0[k]) for k in w0)   # ΔW = 0 here (lr 0)
    with pytest.raises(ConfigError):
        policy.merge([0.5, 0.5])
    # a finer grid keeps the LoRAs it shares with the coarse one and trains only the new λ
    vertices = {l["name"]: (out / l["name"] / "adapter_model.safetensors").stat().st_mtime_ns for l in front["loras"]}
    main(Config(method="dps", model=str(tiny_dir), output_dir=str(tmp_path), n_partitions=2, dps_steps_each=2,
                learning_rate=0.0, **COMMON))
    finer = json.loads((out / FRONT_FILE).read_text())
    assert [l["name"] for l in finer["loras"]] == ["lam-00000-10000", "lam-05000-05000", "lam-10000-00000"]
    assert {n: (out / n / "adapter_model.safetensors").stat().st_mtime_ns for n in vertices} == vertices


@pytest.mark.parametrize("bad, field", [
    (dict(method="soup"), "method"),
    (dict(objectives=("helpful",)), "objectives"),
    (dict(scalarization="max"), "scalarization"),
    (dict(method="rewarded_soups", max_steps=1), "max_steps"),
    (dict(dps_steps_each=0), "dps_steps_each"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        Config(**bad)
    assert err.value.field == field
