"""PEFT snapshots for multi-LoRA servers: PEFT and transformers load them, their logits equal the host's at that λ,
the config is the classic key set with the public base id, and the files are readable by others."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from conftest import peft_lora_dir, perturb
from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.export.peft import CLASSIC_KEYS, export_peft, hub_id

LAM = [0.3, 0.7]


@pytest.fixture
def pref_dir(tiny_dir, tmp_path):
    model, _ = load_base_model(tiny_dir)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref, std=1.0)
    save_adapter(pref, tmp_path / "pref")
    with torch.no_grad(), pref.inputs(preference=torch.tensor([LAM])):
        expected = model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
    pref.detach()
    return tmp_path / "pref", expected


def test_peft_and_transformers_load_the_snapshot_with_the_hosts_logits(pref_dir, tiny_dir, tmp_path):
    from peft import PeftModel

    src, expected = pref_dir
    out = export_peft(src, tmp_path / "snap", LAM, base_model_id="org/tiny-model")
    config = json.loads((out / "adapter_config.json").read_text())
    assert set(config) == set(CLASSIC_KEYS) and config["base_model_name_or_path"] == "org/tiny-model"
    assert config["r"] == 2 + 2 * 1 and config["inference_mode"] is True
    ids = torch.tensor([[5, 6, 7, 8]])
    peft_model = PeftModel.from_pretrained(load_base_model(tiny_dir)[0], out).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    hf = load_base_model(tiny_dir)[0]
    hf.load_adapter(str(out))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask


def test_a_peft_lora_is_cleaned_and_a_local_base_needs_a_public_id(tmp_path):
    lora = peft_lora_dir(tmp_path / "lora", seed=1)
    assert not json.loads((lora / "adapter_config.json").read_text()).get("base_model_name_or_path")
    with pytest.raises(ConfigError, match="^base_model_id"):                  # no public base recorded
        export_peft(lora, tmp_path / "out")
    out = export_peft(lora, tmp_path / "out2", base_model_id="org/base")
    assert set(json.loads((out / "adapter_config.json").read_text())) == set(CLASSIC_KEYS)
    with pytest.raises(ConfigError, match="^preference"):
        export_peft(lora, tmp_path / "out3", LAM, base_model_id="org/base")
    with pytest.raises(ConfigError, match="^out"):
        export_peft(lora, tmp_path / "out2", base_model_id="org/base")
    assert not (tmp_path / "out3").exists()


def test_hub_ids():
    assert hub_id("SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("org/model") == "org/model" and hub_id("/some/dir", "org/x") == "org/x"
    with pytest.raises(ConfigError, match="^base_model_id"):
        hub_id("/root/.cache/parsona/models/x")


def test_loras_the_classic_keys_cannot_describe_are_refused(tmp_path):
    lora = peft_lora_dir(tmp_path / "lora", seed=2)
    config = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match="DoRA"):
        export_peft(lora, tmp_path / "out", base_model_id="org/base")
    (lora / "adapter_config.json").write_text(json.dumps(config))
    (lora / "adapter_model.safetensors").rename(lora / "adapter_model.bin")
    with pytest.raises(ConfigError, match="safetensors"):
        export_peft(lora, tmp_path / "out", base_model_id="org/base")
    assert not (tmp_path / "out").exists()
