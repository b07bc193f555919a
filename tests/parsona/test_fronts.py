"""parsona.fronts: a FrontResult survives the disk exactly, several methods share one reference pass."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import load_base_model
from parsona.data.hh_rlhf import MultiObjectivePair
from parsona.errors import ConfigError
from parsona.evaluate import FrontResult, evaluate_front
from parsona.front_policies import PreferenceLoRAPolicy
from parsona.fronts import ARRAY_FIELDS, evaluate_methods, front_settings, load_front, save_front, seed_means

OBJECTIVES = ("helpful", "harmless")
PAIRS = [
    MultiObjectivePair("\n\nHuman: hi there\n\nAssistant:", " Hello! How can I help?", " Go away.", {"helpful": 0, "harmless": 1}),
    MultiObjectivePair("\n\nHuman: a lock?\n\nAssistant:", " I can't help with that.", " Use a pick.", {"helpful": 1}),
    MultiObjectivePair("\n\nHuman: weather\n\nAssistant:", " Sunny.", " It is sunny and warm today.", {"harmless": 0}),
]


def reward_front() -> FrontResult:
    """Every optional field set, NaN where a pair is unlabelled, a nested info dict."""
    rng = np.random.default_rng(0)
    correct = rng.integers(0, 2, size=(3, 5, 2)).astype(float)
    correct[0, 1, 0] = np.nan
    prompt_reward = rng.normal(size=(3, 4, 2))
    return FrontResult("pref_linear", OBJECTIVES, np.array([[0, 1], [0.5, 0.5], [1, 0]]), np.nanmean(correct, axis=1),
                       rng.random((3, 2)), [4, 5], np.array([-1.25, 0.75]), reward=prompt_reward.mean(axis=1),
                       pair_correct=correct, prompt_reward=prompt_reward, seconds=1.5,
                       info={"train_steps": 120, "train_s": 3.5, "budget": {"tokens": [1, 2]}, "note": "λ"})


def assert_same(back: FrontResult, result: FrontResult) -> None:
    for name in ARRAY_FIELDS:
        want = getattr(result, name)
        if want is None:
            assert getattr(back, name) is None, name
        else:
            np.testing.assert_array_equal(getattr(back, name), want)   # NaN == NaN here
    assert (back.method, back.objectives, back.n_labelled, back.seconds, back.info) == \
           (result.method, result.objectives, result.n_labelled, result.seconds, result.info)


def test_save_then_load_gives_the_same_front(tmp_path):
    result = reward_front()
    path = save_front(result, tmp_path / "eval" / "pref_linear.npz", settings='{"eval_pairs": 5}')
    back = load_front(path)
    assert_same(back, result)
    assert back.metric == "reward" and front_settings(path) == '{"eval_pairs": 5}'
    assert [p.name for p in path.parent.iterdir()] == ["pref_linear.npz"]          # no temp file left


def test_none_fields_nan_info_and_no_settings_round_trip(tmp_path):
    result = FrontResult("dps", OBJECTIVES, np.array([[0.0, 1.0]]), np.array([[np.nan, 0.5]]), np.ones((1, 2)),
                         [0, 3], np.array([0.4, 0.4]), info={"train_s": float("nan")})
    back = load_front(save_front(result, tmp_path / "dps.npz"))
    assert back.reward is None and back.pair_correct is None and back.prompt_reward is None
    assert np.isnan(back.accuracy[0, 0]) and math.isnan(back.info["train_s"])
    assert back.metric == "accuracy" and front_settings(tmp_path / "dps.npz") is None


def test_every_front_result_field_is_saved():
    # a field added to FrontResult must be added to save_front/load_front too, not dropped silently
    saved_otherwise = {"method", "objectives", "n_labelled", "seconds", "info"}
    assert {f.name for f in dataclasses.fields(FrontResult)} == set(ARRAY_FIELDS) | saved_otherwise


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "single array", "foreign archive"])
def test_a_damaged_file_is_a_config_error_naming_it(tmp_path, damage):
    path = save_front(reward_front(), tmp_path / "front.npz")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("method,accuracy\n")
    elif damage == "single array":
        np.save(open(path, "wb"), np.zeros(3))
    else:
        np.savez(open(path, "wb"), weights=np.zeros(3))
    with pytest.raises(ConfigError) as err:
        load_front(path)
    assert err.value.field == str(path) and "score the front again" in str(err.value)


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="file is missing") as err:
        load_front(tmp_path / "nothing.npz")
    assert err.value.field == str(tmp_path / "nothing.npz")


def test_a_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = save_front(reward_front(), tmp_path / "front.npz", settings="old")
    before = path.read_bytes()

    def half_written(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_front(reward_front(), path, settings="new")
    monkeypatch.undo()
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["front.npz"]


def test_an_object_array_is_refused_before_anything_is_written(tmp_path):
    result = reward_front()
    result.accuracy = np.array([[None, 0.5]], dtype=object)
    with pytest.raises(ConfigError, match="pickle") as err:
        save_front(result, tmp_path / "front.npz")
    assert err.value.field == "result.accuracy" and list(tmp_path.iterdir()) == []


def perturbed_policy(model, seed: int) -> PreferenceLoRAPolicy:
    """The same policy for the same seed, however often it is built (attach draws U, V from torch's RNG)."""
    torch.manual_seed(seed)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return PreferenceLoRAPolicy(adapter)


def test_evaluate_methods_equals_scoring_each_alone_with_one_reference_pass(tiny_dir, monkeypatch):
    import parsona.evaluate

    model, tokenizer = load_base_model(tiny_dir)
    grid, own = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]), np.array([[0.5, 0.5]])
    kw = dict(beta=0.5, max_length=64, batch_size=2, progress=False)
    alone = []
    for seed, g in ((1, grid), (2, own)):
        policy = perturbed_policy(model, seed)
        alone.append(evaluate_front(model, tokenizer, policy, PAIRS, OBJECTIVES, g, method=f"m{seed}", **kw))
        policy.adapter.detach()

    passes, seen = [], []
    real = parsona.evaluate.reference_logprobs
    monkeypatch.setattr(parsona.evaluate, "reference_logprobs", lambda *a, **k: passes.append(1) or real(*a, **k))
    results = evaluate_methods(model, tokenizer, {"m1": lambda: perturbed_policy(model, 1),
                                                  "m2": lambda: perturbed_policy(model, 2)},
                               PAIRS, OBJECTIVES, grid, grids={"m2": own}, on_result=seen.append, **kw)
    assert passes == [1] and seen == results and [r.method for r in results] == ["m1", "m2"]
    for got, want in zip(results, alone):      # m1's adapter was gone while m2 was scored
        np.testing.assert_array_equal(got.preferences, want.preferences)
        np.testing.assert_allclose(got.accuracy, want.accuracy)
        np.testing.assert_allclose(got.dpo_loss, want.dpo_loss, rtol=1e-5)
    assert not any(m._forward_hooks for m in model.modules())                       # every adapter detached


def test_a_failing_method_still_detaches_its_adapter(tiny_dir):
    model, tokenizer = load_base_model(tiny_dir)
    with pytest.raises(ConfigError, match="grid"):
        evaluate_methods(model, tokenizer, {"bad": lambda: perturbed_policy(model, 1)}, PAIRS, OBJECTIVES,
                         np.array([[1.0, 0.0, 0.0]]), max_length=64, progress=False)
    assert not any(m._forward_hooks for m in model.modules())


def test_seed_means_over_the_methods_every_seed_has():
    def rows(*pairs):
        return {m: {"method": m, "hypervolume": hv} for m, hv in pairs}

    stats = seed_means({0: rows(("pref", 0.02), ("dps", 0.1), ("soups", 0.5)), 1: rows(("soups", 0.3), ("pref", 0.04))},
                       ["hypervolume"])
    assert list(stats) == ["pref", "soups"]                                          # dps ran in one seed only
    mean, sd = stats["pref"]["hypervolume"]
    assert mean == pytest.approx(0.03) and sd == pytest.approx(math.sqrt(2) * 0.01)   # sd with ddof = 1
    assert math.isnan(seed_means({0: rows(("pref", 0.02))}, ["hypervolume"])["pref"]["hypervolume"][1])
    with pytest.raises(ConfigError):
        seed_means({}, ["hypervolume"])
