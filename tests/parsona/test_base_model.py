"""Loading the base model: the packaged SmolLM2 (GGUF -> cached safetensors), dirs, tiny models."""

from __future__ import annotations

import time

import pytest
import torch

from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import load_base_model, tiny_causal_lm
from parsona.errors import ConfigError


def test_tiny_causal_lm_is_seeded_and_overridable():
    a, b = tiny_causal_lm(), tiny_causal_lm()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, tiny_causal_lm(seed=1).lm_head.weight)
    assert tiny_causal_lm(num_hidden_layers=3).config.num_hidden_layers == 3


def test_a_local_directory_loads_the_same_way(tmp_path):
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    model = tiny_causal_lm()
    model.save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(256)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
                                        eos_token="t2")
    tokenizer.save_pretrained(tmp_path)
    loaded, tok = load_base_model(tmp_path)
    assert tok.padding_side == "left" and tok.pad_token == "t2"
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_a_bad_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="neither config.json nor a .gguf"):
        load_base_model(tmp_path)
    with pytest.raises(ConfigError, match="not one"):
        load_base_model(tmp_path / "missing")


@pytest.mark.real
def test_real_smollm2_loads_from_the_package_and_generates_with_a_preference_lora():
    load_base_model()  # first load converts (or finds the cache from an earlier test run)
    start = time.perf_counter()
    model, tokenizer = load_base_model()
    assert time.perf_counter() - start < 10, "a second load must hit the safetensors cache"
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)

    adapter = attach(model, PreferenceLoRAConfig(rank=8, n_objectives=2))
    prompts = ["The capital of France is", "Two plus two equals"]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad(), adapter.inputs(preference=[[1.0, 0.0], [0.2, 0.8]]):
        out = model.generate(**batch, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[:, batch["input_ids"].shape[1]:]
    assert new.shape == (2, 8)
    assert "Paris" in tokenizer.decode(new[0])  # identity init: the real model's answer survives the adapter
