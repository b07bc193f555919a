"""Preference LoRA (Panacea): the math, per-row preferences, PEFT export and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import perturb
from parsona.adapters import PreferenceLoRAConfig, attach, load_adapter, names, save_adapter
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError


def logits(model, adapter, input_ids, preference):
    with torch.no_grad(), adapter.inputs(preference=torch.as_tensor(preference, dtype=torch.float32)):
        return model(input_ids).logits


@pytest.fixture
def trained(tiny_model):
    adapter = attach(tiny_model, PreferenceLoRAConfig(rank=4, n_objectives=2))
    perturb(adapter, std=0.1)  # about the size a few hundred training steps reach
    return tiny_model, adapter


def test_layer_matches_the_panacea_formula(trained):
    model, adapter = trained
    layer = adapter.layers["model.layers.0.self_attn.q_proj"]
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    lam = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    for b in range(2):
        # ΔW = alpha/(k+m) · U diag(σ_1..σ_k, s·λ_1, s·λ_2) Vᵀ, written out independently
        singular = torch.cat([layer.sigma, layer.pref_scale * lam[b]])
        delta_w = (16.0 / (4 + 2)) * layer.U @ torch.diag(singular) @ layer.V.T
        out = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(b))  # the Linear's W0 x
        torch.testing.assert_close(layer(x[b : b + 1], out, lam[b : b + 1])[0], out[0] + x[b] @ delta_w.T)


@pytest.mark.parametrize("k, p", [(4, 1), (0, 8), (2, 3)])
def test_the_exported_form_is_the_same_delta(k, p):
    """What torch.export traces (σ, s and alpha / r folded into U, [1, λ] per row) equals the layer's own math,
    written out independently: ΔW = alpha/(k+m·p) · U diag(σ, s·λ_1 ×p, s·λ_2 ×p) Vᵀ."""
    from parsona.adapters.preference_lora.layer import PreferenceLoRALayer

    g = torch.Generator().manual_seed(k + p)
    layer = PreferenceLoRALayer(32, 24, rank=k, n_objectives=2, alpha=16.0, preference_rank=p)
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape, generator=g))
    x, out = torch.randn(2, 3, 32, generator=g), torch.randn(2, 3, 24, generator=g)
    lam = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    got = layer._exported(x, out, lam)
    for b in range(2):
        singular = torch.cat([layer.sigma, layer.pref_scale * lam[b].repeat_interleave(p)])
        delta_w = 16.0 / (k + 2 * p) * layer.U @ torch.diag(singular) @ layer.V.T
        torch.testing.assert_close(got[b], out[b] + x[b] @ delta_w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [3, 0])  # k = 0: preference blocks only (Rewarded Soups' form, trained as one)
def test_preference_rank_gives_each_objective_its_own_columns(k, input_ids, tmp_path):
    # p = 2 singular values per objective: ΔW = scale · (Σ_j σ_j u_j v_jᵀ + Σ_i s·λ_i Σ_{c ∈ block i} u_c v_cᵀ)
    model = tiny_causal_lm()
    adapter = attach(model, PreferenceLoRAConfig(rank=k, n_objectives=2, preference_rank=2))
    perturb(adapter, std=0.1)
    layer = adapter.layers["model.layers.0.mlp.down_proj"]
    assert layer.U.shape[1] == layer.V.shape[1] == k + 2 * 2
    lam = torch.tensor([0.3, 0.7])
    u, v = layer.U, layer.V
    expected = sum((layer.sigma[j] * torch.outer(u[:, j], v[:, j]) for j in range(k)), torch.zeros(len(u), len(v)))
    for i, block in enumerate(([k, k + 1], [k + 2, k + 3])):
        expected = expected + layer.pref_scale * lam[i] * sum(torch.outer(u[:, c], v[:, c]) for c in block)
    torch.testing.assert_close(layer.delta_weight(lam),
                               expected * 16.0 / (k + 4))
    adapter.to_peft(preference=[0.3, 0.7], out_dir=tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == k + 4
    save_adapter(adapter, tmp_path / "saved")
    loaded = load_adapter(tiny_causal_lm(), tmp_path / "saved")
    assert loaded.config.preference_rank == 2
    torch.testing.assert_close(logits(loaded.model, loaded, input_ids, [[0.3, 0.7]] * 4),
                               logits(model, adapter, input_ids, [[0.3, 0.7]] * 4))
    with pytest.raises(ConfigError, match="preference_rank"):
        PreferenceLoRAConfig(preference_rank=0)
    with pytest.raises(ConfigError, match="rank"):
        PreferenceLoRAConfig(rank=-1)


def test_changing_the_preference_changes_the_output(trained, input_ids):
    model, adapter = trained
    a = logits(model, adapter, input_ids[:1], [[1.0, 0.0]])
    b = logits(model, adapter, input_ids[:1], [[0.0, 1.0]])
    assert (a - b).abs().max() > 1e-3


def test_rows_with_opposite_preferences_equal_their_separate_runs(trained, input_ids):
    model, adapter = trained
    model.double()  # a batch of 2 and of 1 round differently in fp32 (other GEMM blockings); fp64 does not
    both = logits(model, adapter, input_ids[:2], [[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(both[:1], logits(model, adapter, input_ids[:1], [[1.0, 0.0]]))
    torch.testing.assert_close(both[1:], logits(model, adapter, input_ids[1:2], [[0.0, 1.0]]))


@pytest.mark.parametrize("bad, problem", [
    ([[0.5, 0.3, 0.2]], "shape"),
    ([0.5, 0.5], "shape"),
    ([[1.5, -0.5]], "negative"),
    ([[float("nan"), 1.0]], "NaN"),
    ([[0.5, 0.4]], "sums to 0.9"),
])
def test_bad_preferences_are_clear_errors(trained, bad, problem):
    _, adapter = trained
    with pytest.raises(ConfigError, match=problem) as err:
        with adapter.inputs(preference=bad):
            pass
    assert err.value.field == "preference"


def test_batch_size_mismatch_is_an_error(trained, input_ids):
    model, adapter = trained
    with pytest.raises(ValueError, match="preference has 1 rows but the batch has 4"):
        logits(model, adapter, input_ids, [[0.5, 0.5]])


def test_to_peft_loads_in_peft_with_the_same_logits(trained, input_ids, tmp_path):
    from peft import PeftModel

    model, adapter = trained
    expected = logits(model, adapter, input_ids, [[0.3, 0.7]] * len(input_ids))
    adapter.to_peft(preference=[0.3, 0.7], out_dir=tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4 + 2
    peft_model = PeftModel.from_pretrained(tiny_causal_lm(), tmp_path / "peft").eval()
    with torch.no_grad():
        got = peft_model(input_ids=input_ids).logits
    assert (got - expected).abs().max() <= 1e-5


def test_merge_at_a_preference_equals_that_preference(trained, input_ids):
    model, adapter = trained
    expected = logits(model, adapter, input_ids, [[0.3, 0.7]] * len(input_ids))
    adapter.merge(preference=[0.3, 0.7])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids).logits, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="unmerge"):
        with adapter.inputs(preference=[[0.5, 0.5]]):
            pass
    adapter.unmerge()
    torch.testing.assert_close(logits(model, adapter, input_ids, [[0.3, 0.7]] * len(input_ids)), expected)


def test_detach_gives_back_the_base_model(input_ids):
    base = tiny_causal_lm()
    with torch.no_grad():
        expected = base(input_ids).logits
    adapter = attach(base, PreferenceLoRAConfig())
    perturb(adapter)
    adapter.detach()
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids).logits, expected, rtol=0, atol=0)
    assert not any("preference_lora" in k for k in base.state_dict())


@pytest.mark.parametrize("init, moving", [("lora", ["U"]), ("panacea", ["sigma", "pref_scale"])])
def test_both_inits_start_at_the_base_and_get_gradients(init, moving, input_ids):
    model = tiny_causal_lm()
    with torch.no_grad():
        base = model(input_ids).logits
    adapter = attach(model, PreferenceLoRAConfig(rank=2, init=init))
    lam = [[0.2, 0.8]] * len(input_ids)
    with adapter.inputs(preference=lam):
        out = model(input_ids).logits
    torch.testing.assert_close(out, base, rtol=0, atol=0)
    out.square().mean().backward()
    layer = next(iter(adapter.layers.values()))
    for name in moving:
        assert getattr(layer, name).grad.abs().sum() > 0, name
    if init == "lora":  # the preference columns of U learn in proportion to λ_j
        assert layer.U.grad[:, 2:].abs().sum() > 0


# -- files: bad input and atomic saves --------------------------------------------------------

def test_corrupt_foreign_or_incomplete_directories_are_clear_errors(trained, tmp_path):
    model, adapter = trained
    save_adapter(adapter, tmp_path / "ok")
    (tmp_path / "ok" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_adapter(tiny_causal_lm(), tmp_path / "ok")

    save_adapter(adapter, tmp_path / "foreign")
    (tmp_path / "foreign" / "adapter_config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="adapter_type"):
        load_adapter(tiny_causal_lm(), tmp_path / "foreign")

    save_adapter(adapter, tmp_path / "nope")
    config = json.loads((tmp_path / "nope" / "adapter_config.json").read_text())
    (tmp_path / "nope" / "adapter_config.json").write_text(json.dumps({**config, "adapter_type": "nope"}))
    with pytest.raises(ConfigError, match=", ".join(names())):                 # every registered type, listed
        load_adapter(tiny_causal_lm(), tmp_path / "nope")

    (tmp_path / "nope" / "adapter_config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ConfigError, match="Upgrade parsona"):
        load_adapter(tiny_causal_lm(), tmp_path / "nope")

    (tmp_path / "nope" / "adapter_config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.warns(UserWarning, match="colour"):
        load_adapter(tiny_causal_lm(), tmp_path / "nope")

    (tmp_path / "nope" / "adapter.safetensors").unlink()
    with pytest.raises(ConfigError, match="adapter.safetensors: file is missing"):
        load_adapter(tiny_causal_lm(), tmp_path / "nope")


def test_a_failed_save_leaves_nothing_behind(trained, tmp_path, monkeypatch):
    import safetensors.torch

    _, adapter = trained
    save_adapter(adapter, tmp_path / "a")
    before = (tmp_path / "a" / "adapter.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(adapter, tmp_path / "a")
    with pytest.raises(OSError, match="disk full"):
        save_adapter(adapter, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp dirs, no half-written "b"
    assert (tmp_path / "a" / "adapter.safetensors").read_bytes() == before


def test_model_with_no_matching_modules_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1))
    with pytest.raises(ConfigError, match="no Linear module matches"):
        attach(model, PreferenceLoRAConfig())


def test_attaching_the_same_type_twice_is_an_error(trained):
    model, _ = trained
    with pytest.raises(ConfigError, match="already attached"):
        attach(model, PreferenceLoRAConfig())


def test_a_preference_tensor_changed_in_place_is_seen(trained, input_ids):
    # the layers keep [σ, s·λ] per block (adapters/preference_lora/layer.py); an edited λ is a new one
    model, adapter = trained
    lam = torch.tensor([[1.0, 0.0]]).expand(len(input_ids), 2).clone()
    with torch.no_grad(), adapter.inputs(preference=lam):
        first = model(input_ids).logits
    lam[:] = torch.tensor([0.0, 1.0])
    with torch.no_grad(), adapter.inputs(preference=lam):
        second = model(input_ids).logits
    torch.testing.assert_close(second, logits(model, adapter, input_ids, [[0.0, 1.0]] * len(input_ids)))
    assert (second - first).abs().max() > 1e-3


def test_an_adapter_names_its_base_and_refuses_a_base_of_another_shape(tmp_path):
    import json
    import warnings

    from parsona.adapters import load_adapter, save_adapter

    base = tiny_causal_lm()
    base.name_or_path = "org/tiny-a"
    save_adapter(attach(base, PreferenceLoRAConfig(rank=2)), tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "org/tiny-a" and saved["base_model_shape"]["hidden_size"] == 32
    renamed = tiny_causal_lm()
    renamed.name_or_path = "/elsewhere/tiny-a-copy"        # the same model under another name: a warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_adapter(renamed, tmp_path / "a")
    assert any("trained on 'org/tiny-a'" in str(w.message) for w in caught)
    wider = tiny_causal_lm(hidden_size=64, intermediate_size=128)
    wider.name_or_path = "org/tiny-b"
    with pytest.raises(ConfigError, match="hidden_size 32 vs 64") as err:
        load_adapter(wider, tmp_path / "a")
    assert "--model org/tiny-a" in str(err.value)
