"""Blending LoRAs: the exact blend is PEFT's own rank-concatenating add_weighted_adapter, one-hot weights
give the expert back, and the compact blend's error is the one the singular values of ΔW say."""

from __future__ import annotations

import pytest
import torch

from conftest import peft_lora_dir
from parsona.adapters.lora_blend import blend_compact, blend_exact
from parsona.adapters.peft_format import read_peft_lora, write_peft_lora
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError

IDS = torch.tensor([[5, 17, 99, 140, 7, 250]])


def logits_of(lora_dir, model=None):
    from peft import PeftModel

    model = PeftModel.from_pretrained(model or tiny_causal_lm(vocab_size=259, pad_token_id=0), str(lora_dir)).eval()
    with torch.no_grad():
        return model(IDS).logits


def dense(lora, path):
    A, B = lora.factors[path]
    return lora.scale * B.double() @ A.double()


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    root = tmp_path_factory.mktemp("experts")
    return [peft_lora_dir(root / "a", seed=0, r=4), peft_lora_dir(root / "b", seed=1, r=2),
            peft_lora_dir(root / "c", seed=2, r=4, targets=("q_proj", "o_proj"))]   # c adapts other modules too


def test_the_exact_blend_is_pefts_cat_combination(experts, tmp_path):
    from peft import PeftModel

    weights = [0.5, 0.3, 0.2]
    ours = write_peft_lora(blend_exact([read_peft_lora(d) for d in experts], weights), tmp_path / "blend",
                           [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj", "o_proj")])
    peft = PeftModel.from_pretrained(tiny_causal_lm(vocab_size=259, pad_token_id=0), str(experts[0]), adapter_name="a")
    for name, d in zip("bc", experts[1:]):
        peft.load_adapter(str(d), adapter_name=name)
    peft.add_weighted_adapter(["a", "b", "c"], weights, "blend", combination_type="cat")
    peft.set_adapter("blend")
    with torch.no_grad():
        expected = peft.eval()(IDS).logits
    torch.testing.assert_close(logits_of(ours), expected, rtol=1e-5, atol=1e-5)


def test_one_hot_weights_give_the_expert_back(experts, tmp_path):
    loras = [read_peft_lora(d) for d in experts[:2]]
    blended = blend_exact(loras, [0.0, 1.0])
    for path in loras[1].factors:
        torch.testing.assert_close(dense(blended, path), dense(loras[1], path), rtol=0, atol=1e-12)
    assert all(dense(blended, p).abs().max() == 0 for p in set(blended.factors) - set(loras[1].factors))


def test_the_compact_blends_error_is_what_the_singular_values_say(experts):
    loras = [read_peft_lora(d) for d in experts]
    weights = [0.2, 0.5, 0.3]
    exact = blend_exact(loras, weights)
    small, errors = blend_compact(loras, weights, rank=3)
    for path in exact.factors:
        target = dense(exact, path)
        sigma = torch.linalg.svdvals(target)                                     # of the dense ΔW, directly
        said = float((sigma[3:].square().sum() / sigma.square().sum()).sqrt())
        got = float(torch.linalg.norm(dense(small, path) - target) / torch.linalg.norm(target))
        assert errors[path] == pytest.approx(said, rel=1e-6, abs=1e-9) and got == pytest.approx(said, rel=1e-4, abs=1e-7)
    full, errors = blend_compact(loras, weights, rank=10)                        # Σ r = 10: nothing lost
    assert max(errors.values()) < 1e-6
    for path in exact.factors:
        torch.testing.assert_close(dense(full, path), dense(exact, path), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("weights, field", [([0.5, 0.6], "weights"), ([1.0], "weights"), ([1.5, -0.5], "weights"),
                                            ([float("nan"), 1.0], "weights")])
def test_bad_weights_are_named(experts, weights, field):
    with pytest.raises(ConfigError) as err:
        blend_exact([read_peft_lora(d) for d in experts[:2]], weights)
    assert err.value.field == field


def test_an_empty_bank_or_another_base_models_expert_is_refused(experts, tmp_path):
    with pytest.raises(ConfigError) as err:
        blend_exact([], [])
    assert err.value.field == "experts"
    from peft import LoraConfig, get_peft_model

    other = get_peft_model(tiny_causal_lm(hidden_size=64, vocab_size=259, pad_token_id=0),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    other.save_pretrained(tmp_path / "wide")
    with pytest.raises(ConfigError) as err:
        blend_exact([read_peft_lora(experts[0]), read_peft_lora(tmp_path / "wide")], [0.5, 0.5])
    assert err.value.field == "experts[1]" and "one base model" in str(err.value)
    with pytest.raises(ConfigError) as err:
        blend_compact([read_peft_lora(experts[0])], [1.0], rank=0)
    assert err.value.field == "rank"
