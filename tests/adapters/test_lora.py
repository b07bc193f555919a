"""Per-user LoRA bank: PEFT is the file format and the reference for the numbers."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from conftest import perturb
from parsona.adapters import LoRAConfig, PreferenceLoRAConfig, attach, load_adapter, save_adapter
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError

USERS = ("alice", "bob", "carol")


def peft_lora_dir(path, seed, r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj")):
    """A real PEFT LoRA with random non-zero weights, saved the way PEFT saves it."""
    torch.manual_seed(seed)
    model = get_peft_model(tiny_causal_lm(), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                         init_lora_weights=False))
    model.save_pretrained(path)
    return path


@pytest.fixture
def user_dirs(tmp_path):
    return {u: peft_lora_dir(tmp_path / u, seed=i, r=2 + 2 * i) for i, u in enumerate(USERS)}


def run(model, bank, input_ids, names):
    with torch.no_grad(), bank.inputs(adapter=names):
        return model(input_ids).logits


def test_each_user_equals_peft_itself(user_dirs, input_ids):
    model = tiny_causal_lm()
    bank = attach(model, LoRAConfig())
    for user, path in user_dirs.items():
        bank.add(user, path)
    for user, path in user_dirs.items():
        reference = PeftModel.from_pretrained(tiny_causal_lm(), path).eval()
        with torch.no_grad():
            expected = reference(input_ids=input_ids).logits
        assert (run(model, bank, input_ids, user) - expected).abs().max() <= 1e-5


def test_mixed_batch_equals_peft_per_row_adapter_names(user_dirs, input_ids):
    reference = PeftModel.from_pretrained(tiny_causal_lm(), user_dirs["alice"], adapter_name="alice")
    for user in USERS[1:]:
        reference.load_adapter(user_dirs[user], adapter_name=user)
    reference.eval()
    rows = ["carol", "alice", "__base__", "bob"]  # PEFT's name for "no adapter" on that row
    with torch.no_grad():
        expected = reference(input_ids=input_ids, adapter_names=rows).logits

    model = tiny_causal_lm()
    bank = attach(model, LoRAConfig())
    for user, path in user_dirs.items():
        bank.add(user, path)
    got = run(model, bank, input_ids, ["carol", "alice", None, "bob"])
    assert (got - expected).abs().max() <= 1e-5


def test_training_path_matches_inference_path_and_only_used_loras_get_gradients(user_dirs, input_ids):
    model = tiny_causal_lm().double()  # the two paths sum in other orders: fp64 keeps that far below the tolerance
    bank = attach(model, LoRAConfig())
    for user, path in user_dirs.items():
        bank.add(user, path)
    rows = ["bob", "alice", "bob", None]
    inference = run(model, bank, input_ids, rows)            # gathered path (no grad)
    with bank.inputs(adapter=rows):
        training = model(input_ids).logits                   # grouped path (grad enabled)
    torch.testing.assert_close(training, inference)
    training.square().mean().backward()
    layer = bank.layers["model.layers.0.self_attn.q_proj"]
    assert layer.B["alice"].grad.abs().sum() > 0 and layer.B["bob"].grad.abs().sum() > 0
    assert layer.B["carol"].grad is None


def test_an_unknown_adapter_is_an_error_never_the_base(tiny_model, input_ids):
    bank = attach(tiny_model, LoRAConfig())
    with pytest.raises(ConfigError, match="unknown LoRA 'mallory'") as err:
        run(tiny_model, bank, input_ids, ["default", "mallory", None, None])
    assert err.value.field == "adapter"


def test_save_peft_loads_in_peft(tiny_model, input_ids, tmp_path):
    bank = attach(tiny_model, LoRAConfig(rank=3, target_modules=("q_proj", "up_proj")))
    perturb(bank)
    expected = run(tiny_model, bank, input_ids, "default")
    bank.save_peft("default", tmp_path / "out")
    reference = PeftModel.from_pretrained(tiny_causal_lm(), tmp_path / "out").eval()
    with torch.no_grad():
        assert (reference(input_ids=input_ids).logits - expected).abs().max() <= 1e-5


def test_save_adapter_uses_peft_layout_for_every_lora(user_dirs, input_ids, tmp_path):
    model = tiny_causal_lm()
    bank = attach(model, LoRAConfig(target_modules=("q_proj", "v_proj", "down_proj")))
    perturb(bank)
    bank.add("alice", user_dirs["alice"])
    save_adapter(bank, tmp_path / "bank")
    assert json.loads((tmp_path / "bank" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    loaded = load_adapter(tiny_causal_lm(), tmp_path / "bank")
    assert set(loaded.names) == {"default", "alice"}
    rows = ["alice", "default", None, "alice"]
    torch.testing.assert_close(run(loaded.model, loaded, input_ids, rows), run(model, bank, input_ids, rows))


def test_a_row_composes_a_user_lora_with_a_preference_vector(user_dirs, input_ids):
    model = tiny_causal_lm()
    bank = attach(model, LoRAConfig())
    bank.add("alice", user_dirs["alice"])
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    lam = torch.tensor([[0.3, 0.7]] * len(input_ids))
    with torch.no_grad(), bank.inputs(adapter="alice"), pref.inputs(preference=lam):
        both = model(input_ids).logits
    # h = W0 x + Δ_lora x + Δ_pref x: folding the user's LoRA into W0 must give the same logits
    bank.merge(adapter="alice")
    with torch.no_grad(), pref.inputs(preference=lam):
        folded = model(input_ids).logits
    torch.testing.assert_close(both, folded, rtol=1e-4, atol=1e-5)
    bank.unmerge()
    with torch.no_grad(), bank.inputs(adapter=[None] * len(input_ids)), pref.inputs(preference=lam):
        assert (model(input_ids).logits - both).abs().max() > 1e-4  # the user's LoRA did matter


@pytest.mark.parametrize("edit, problem", [
    (lambda d: (d / "adapter_model.safetensors").rename(d / "adapter_model.bin"), "pickled"),
    (lambda d: (d / "adapter_model.safetensors").write_bytes(b"garbage"), "corrupt"),
    (lambda d: (d / "adapter_config.json").write_text(json.dumps({**json.loads((d / "adapter_config.json").read_text()), "use_dora": True})), "use_dora"),
    (lambda d: (d / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"})), "Only PEFT LoRA"),
])
def test_bad_peft_directories_are_clear_errors(tiny_model, tmp_path, edit, problem):
    path = peft_lora_dir(tmp_path / "lora", seed=0)
    edit(path)
    bank = attach(tiny_model, LoRAConfig())
    with pytest.raises(ConfigError, match=problem):
        bank.add("alice", path)
    assert bank.names == ("default",)


def test_lora_for_modules_the_bank_does_not_adapt_is_refused(tiny_model, tmp_path):
    path = peft_lora_dir(tmp_path / "lora", seed=0, targets=("gate_proj",))
    bank = attach(tiny_model, LoRAConfig(target_modules=("q_proj",)))
    with pytest.raises(ConfigError, match="gate_proj"):
        bank.add("alice", path)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "v1.2", "x" * 65, None])
def test_lora_names_are_strict(tiny_model, name):
    bank = attach(tiny_model, LoRAConfig())
    with pytest.raises(ConfigError, match="name"):
        bank.add(name)


def test_one_name_applies_to_every_row_with_and_without_gradients(user_dirs, input_ids):
    model = tiny_causal_lm()
    bank = attach(model, LoRAConfig())
    bank.add("alice", user_dirs["alice"])
    expected = run(model, bank, input_ids, ["alice"] * len(input_ids))
    torch.testing.assert_close(run(model, bank, input_ids, "alice"), expected)
    with bank.inputs(adapter="alice"):              # grad enabled: the training path
        torch.testing.assert_close(model(input_ids).logits, expected)
    with pytest.raises(ValueError, match="adapter has 2 rows but the batch has 4"):
        run(model, bank, input_ids, ["alice", None])


def test_peft_keyword_adapter_names_is_the_same_input(tiny_model, input_ids):
    bank = attach(tiny_model, LoRAConfig())
    perturb(bank)
    rows = ["default", None, "default", None]
    with torch.no_grad():
        with bank.inputs(adapter=rows):
            ours = tiny_model(input_ids).logits
        with bank.inputs(adapter_names=rows):
            peft_spelling = tiny_model(input_ids).logits
    torch.testing.assert_close(peft_spelling, ours, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="got both") as err:
        with bank.inputs(adapter=rows, adapter_names=rows):
            pass
    assert err.value.field == "adapter"
