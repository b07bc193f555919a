"""Generated LoRAs: the exact blend is PEFT's own rank-concatenating add_weighted_adapter, one-hot weights
give the expert back, the compact blend's error is the one the singular values of ΔW say, a row of the
generated_lora type computes what its blend written as a PEFT LoRA computes in PEFT, and the CVAE
generator's coordinates and coefficients are the bank's own."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import peft_lora_dir
from parsona.adapters.generated_lora import LoRAGenerator, attach_experts, blend_compact, blend_exact
from parsona.adapters.generated_lora.cvae import gram
from parsona.adapters.peft_format import read_peft_lora, write_peft_lora
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError

IDS = torch.tensor([[5, 17, 99, 140, 7, 250]])
PATHS = [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")]


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
            peft_lora_dir(root / "c", seed=2, r=4)]


@pytest.fixture(scope="module")
def mixed_scale_experts(tmp_path_factory):
    """Experts whose alpha / r differ (2, 3.5, 0.25): a blend that used one expert's scale for all would show."""
    root = tmp_path_factory.mktemp("mixed")
    return [peft_lora_dir(root / "a", seed=0, r=4), peft_lora_dir(root / "b", seed=1, r=2, alpha=7),
            peft_lora_dir(root / "c", seed=2, r=4, alpha=1)]


@pytest.mark.parametrize("bank", ["experts", "mixed_scale_experts"])
def test_the_exact_blend_is_pefts_cat_combination(bank, request, tmp_path):
    from peft import PeftModel

    experts = request.getfixturevalue(bank)
    weights = [0.5, 0.3, 0.2]
    ours = write_peft_lora(blend_exact([read_peft_lora(d) for d in experts], weights), tmp_path / "blend",
                           PATHS)
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
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    other.save_pretrained(tmp_path / "wide")
    (tmp_path / "wide" / "README.md").unlink(missing_ok=True)
    with pytest.raises(ConfigError) as err:
        blend_exact([read_peft_lora(experts[0]), read_peft_lora(tmp_path / "wide")], [0.5, 0.5])
    assert err.value.field == "experts[1]" and "one base model" in str(err.value)
    with pytest.raises(ConfigError) as err:
        blend_compact([read_peft_lora(experts[0])], [1.0], rank=0)
    assert err.value.field == "rank"


def test_experts_of_other_modules_or_another_named_base_are_refused(experts, tmp_path):
    loras = [read_peft_lora(d) for d in experts[:2]]
    fewer = dataclasses.replace(loras[1], factors={p: f for p, f in loras[1].factors.items() if "down_proj" not in p})
    with pytest.raises(ConfigError) as err:
        blend_exact([loras[0], fewer], [0.5, 0.5])
    assert err.value.field == "experts[1]" and "same modules" in str(err.value)
    named = [dataclasses.replace(loras[0], base_model="org/a"), dataclasses.replace(loras[1], base_model="org/b")]
    with pytest.raises(ConfigError) as err:
        blend_exact(named, [0.5, 0.5])
    assert err.value.field == "experts[1]" and "org/b" in str(err.value)


def test_a_generated_lora_row_computes_its_blend_as_peft_does(experts, tmp_path):
    loras = [read_peft_lora(d) for d in experts]
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    with torch.no_grad():
        base = model(IDS.expand(3, -1)).logits[2:3]     # the same batch shape: CPU kernels round by shape
    adapter = attach_experts(model, loras)
    w = torch.tensor([[0.6, 0.1, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    with torch.no_grad(), adapter.inputs(expert_weights=w):
        rows = model(IDS.expand(3, -1)).logits
    torch.testing.assert_close(rows[0:1], logits_of(adapter.to_peft(w[0], tmp_path / "blend")), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rows[1:2], logits_of(experts[1]), rtol=1e-5, atol=1e-5)   # one-hot: the expert itself
    torch.testing.assert_close(rows[2:3], base, rtol=0, atol=0)                          # no weights: the base model
    exact = blend_exact(loras, w[0].tolist())
    for path in exact.factors:
        torch.testing.assert_close(dense(adapter.blend(w[0]), path), dense(exact, path), rtol=1e-6, atol=1e-9)


def test_attaching_experts_that_do_not_fit_names_them(experts, tmp_path):
    loras = [read_peft_lora(d) for d in experts]
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    adapter = attach_experts(model, loras)
    with pytest.raises(ConfigError) as err:
        adapter.set_experts(loras[:2])
    assert err.value.field == "experts" and "ranks" in str(err.value)
    adapter.detach()
    wide = tiny_causal_lm(hidden_size=64, vocab_size=259, pad_token_id=0)
    with pytest.raises(ConfigError) as err:
        attach_experts(wide, loras)
    assert err.value.field == "experts"
    assert not any("generated_lora" in n for n, _ in wide.named_modules())              # nothing left attached


# -- the CVAE generator -----------------------------------------------------------------------------------

def dense_sum(loras, c, path):
    return sum(float(c_i) * dense(lo, path) for lo, c_i in zip(loras, c))


def leave_one_out(n):
    """Each expert's condition: the two other experts, weighted 0.7 / 0.3."""
    return [([j for j in range(n) if j != i][:2], [0.7, 0.3]) for i in range(n)]


def test_the_generators_coordinates_are_the_frobenius_geometry_of_the_updates(experts):
    loras = [read_peft_lora(d) for d in experts]
    gen = LoRAGenerator(steps=0).fit(loras, leave_one_out(3))
    G = gram(loras)
    for i in range(3):
        for j in range(3):
            expected = sum(float((dense(loras[i], p) * dense(loras[j], p)).sum()) for p in loras[0].factors)
            assert G[i, j] == pytest.approx(expected, rel=1e-9)
            distance = sum(float((dense(loras[i], p) - dense(loras[j], p)).square().sum()) for p in loras[0].factors)
            assert np.sum((gen.coords_[i] - gen.coords_[j]) ** 2) == pytest.approx(distance, rel=1e-6)
        c = 1 / 3 + gen.to_coefficients_ @ gen.coords_[i]                     # an expert's own point: itself
        np.testing.assert_allclose(c, np.eye(3)[i], atol=1e-9)


def test_an_untrained_generator_returns_the_blend_and_a_trained_one_stays_in_the_banks_span(experts):
    loras = [read_peft_lora(d) for d in experts]
    rows, w = [2, 0], [0.8, 0.2]
    lora, _ = LoRAGenerator(steps=0).fit(loras, leave_one_out(3)).generate(rows, w, sample=False)
    blend = blend_exact([loras[2], loras[0]], w)
    for path in blend.factors:                                                # g = 0: x̂ is the chosen experts' mean
        torch.testing.assert_close(dense(lora, path), dense(blend, path), rtol=1e-5, atol=1e-6)
    gen = LoRAGenerator(steps=200, seed=3).fit(loras, leave_one_out(3))
    c = gen.coefficients(rows, w)
    assert c.sum() == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(c, gen.coefficients(rows, w))               # one seed, one sample
    lora, info = gen.generate(rows, w)
    for path in blend.factors:
        torch.testing.assert_close(dense(lora, path), dense_sum(loras, c, path), rtol=1e-5, atol=1e-6)
    small, info = gen.generate(rows, w, rank=2)
    assert small.rank == 2 and 0 < info["max_relative_error"] < 1


@pytest.mark.parametrize("bad, field", [("two", "experts"), ("self", "neighbours")])
def test_the_generator_refuses_a_tiny_bank_or_an_expert_conditioned_on_itself(experts, bad, field):
    loras = [read_peft_lora(d) for d in experts]
    with pytest.raises(ConfigError) as err:
        if bad == "two":
            LoRAGenerator().fit(loras[:2], leave_one_out(2))
        else:
            LoRAGenerator().fit(loras, [([0, 1], [0.5, 0.5])] * 3)
    assert err.value.field == field
    gen = LoRAGenerator(steps=0).fit(loras, leave_one_out(3))
    for rows, w, name in (([5], [1.0], "rows"), ([0, 1], [0.9, 0.3], "weights")):
        with pytest.raises(ConfigError) as err:
            gen.coefficients(rows, w)
        assert err.value.field == name


def test_compacting_never_pads_and_any_named_base_counts(experts):
    loras = [read_peft_lora(d) for d in experts]
    small, _ = blend_compact(loras[:2], [0.5, 0.5], rank=50)                     # Σ r = 6
    assert small.rank == 6 and all(A.shape[0] == 6 for A, _ in small.factors.values())
    mixed = [loras[0], dataclasses.replace(loras[1], base_model="org/a"), dataclasses.replace(loras[2], base_model="org/b")]
    with pytest.raises(ConfigError) as err:
        blend_exact(mixed, [0.2, 0.3, 0.5])
    assert err.value.field == "experts[2]" and "org/a" in str(err.value)


def test_a_batch_row_off_the_simplex_is_refused_and_a_zero_row_is_the_base(experts):
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    adapter = attach_experts(model, [read_peft_lora(d) for d in experts])
    with pytest.raises(ConfigError) as err:
        with adapter.inputs(expert_weights=torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])):
            pass
    assert err.value.field == "expert_weights" and "row 0" in str(err.value)
    with adapter.inputs(expert_weights=torch.tensor([[0.2, 0.3, 0.5], [0.0, 0.0, 0.0]])):
        pass
