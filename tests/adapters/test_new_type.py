"""A new adapter type needs its own code and one ``register`` line, nothing else.

The type here is registered from inside the test and defined in this file only: a per-row additive
bias on the input embeddings, with its own runtime input ``bias`` (one (d,) vector per row). With
no other file changed it must attach, pass the whole conformance suite, be served row by row by
``Host.generate`` beside preference and user-LoRA rows, and be accepted in an HTTP request body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn

from test_conformance import check_contract
from conftest import peft_lora_dir, perturb, tiny_tokenizer
from parsona.adapters import Adapter, AdapterConfig, PreferenceLoRAConfig, attach, register
from parsona.adapters.base import input_embedding
from parsona.adapters.registry import RuntimeInput, unregister
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.host import Host, Request
from parsona.store import Store

NAME = "embedding_bias"


@dataclass
class EmbeddingBiasConfig(AdapterConfig):
    """scale: multiplies every row's bias (after the learned per-dimension gain)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ConfigError("scale", "Use a positive number.", problem=f"got {self.scale!r}")


class EmbeddingBiasLayer(nn.Module):
    def __init__(self, d: int, scale: float):
        super().__init__()
        self.scale = scale
        self.gain = nn.Parameter(torch.zeros(d))      # 0 at init: the adapted model starts as the base

    def forward(self, input_ids: torch.Tensor, out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """out (B, T, d) + scale · gain ⊙ bias_b for every token of row b; bias (B, d)."""
        if bias.shape[0] != out.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} rows but the batch has {out.shape[0]}")
        return out + (self.scale * self.gain * bias.to(out.dtype))[:, None, :]


class EmbeddingBias(Adapter):
    mergeable = False  # a per-row vector is not a weight: it cannot fold into W

    def _targets(self, model: nn.Module):
        return input_embedding(model)

    def _make_layer(self, path: str, module: nn.Module) -> nn.Module:
        self.dim = module.embedding_dim
        return EmbeddingBiasLayer(module.embedding_dim, self.config.scale)

    def check_row(self, name: str, value: Any) -> torch.Tensor:
        try:
            vector = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(name, f"Pass {self.dim} numbers.", problem=f"got {value!r:.40}") from None
        if vector.shape != (self.dim,) or not torch.isfinite(vector).all():
            raise ConfigError(name, f"Pass {self.dim} finite numbers.", problem=f"shape {tuple(vector.shape)}")
        return vector

    def stack_rows(self, name: str, rows: list) -> torch.Tensor:
        zero = torch.zeros(self.dim)                       # a row without a bias is the base model
        return torch.stack([zero if r is None else r for r in rows])

    def _prepare_inputs(self, bias: Any = None, **unknown: Any) -> dict[str, torch.Tensor]:
        if unknown or bias is None:
            raise ConfigError("bias", "Pass bias=(B, d) only.", problem=f"got {sorted(unknown) or 'nothing'}")
        bias = torch.as_tensor(bias, dtype=torch.float32)
        if bias.ndim != 2 or bias.shape[1] != self.dim:
            raise ConfigError("bias", f"Pass shape (B, {self.dim}).", problem=f"got {tuple(bias.shape)}")
        return {"bias": bias.to(self.device)}

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {"bias": torch.randn(batch_size, self.dim, generator=generator)}


@pytest.fixture
def bias_type():
    register(NAME, EmbeddingBiasConfig, EmbeddingBias,
             runtime_inputs=(RuntimeInput("bias", list[float], "A vector added to every input embedding of the row."),))
    yield NAME
    unregister(NAME)


def test_it_passes_the_conformance_suite(bias_type, tmp_path):
    ran = check_contract(bias_type, tmp_path)
    assert {"test_identity_at_init", "test_mixed_batch_equals_row_by_row", "test_merge_equals_unmerged",
            "test_save_load_round_trip_and_base_untouched", "test_rows_checked_and_stacked_give_the_batch"} <= set(ran)


@pytest.fixture
def world(bias_type, tmp_path):
    """A host with a preference LoRA and the new type attached, and a user with an uploaded LoRA."""
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    bias = attach(model, EmbeddingBiasConfig())
    perturb(pref)
    perturb(bias, std=3.0)
    store = Store(tmp_path / "store")
    user, key = store.create_user()
    lora = store.put_adapter(user, peft_lora_dir(tmp_path / "lora", seed=0), "lora", "mine")
    host = Host(model, tiny_tokenizer(), store, [pref, bias])
    yield host, store, user, key, lora, bias.dim
    store.close()


def test_the_host_serves_it_per_row_beside_other_types(world):
    host, _, user, _, lora, d = world
    b = [float(x) for x in torch.randn(d, generator=torch.Generator().manual_seed(1))]
    rows = [{"preference": [0.5, 0.5]}, {"preference": [0.5, 0.5], "bias": b},
            {"preference": [0.2, 0.8], "bias": b, "adapter": lora}, {"preference": [0.2, 0.8], "adapter": lora}]
    requests = [Request(prompt="the cat sat", user_id=user, conditioning=c, max_new_tokens=8) for c in rows]
    batch = [c.text for c in host.generate(requests)]
    assert batch == [host.generate([r])[0].text for r in requests]   # each row as if alone
    assert batch[0] != batch[1] and batch[2] != batch[3]              # and the bias changed its rows
    assert "bias" in {i.name for i in host.runtime_inputs}
    with pytest.raises(ConfigError) as err:
        host.generate([Request(prompt="hi", conditioning={"preference": [0.5, 0.5], "bias": [1.0]})])
    assert err.value.field == "bias"


def test_an_http_request_body_takes_it(world):
    from fastapi.testclient import TestClient

    from parsona.serve.app import create_app

    host, store, user, key, lora, d = world
    b = [0.5] * d
    app = create_app(host, store, model_id="tiny", batch_wait_s=0.0)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": "tiny", "prompt": "the cat sat", "max_tokens": 8, "temperature": 0,
            "preference": [0.3, 0.7], "bias": b, "adapter": lora}
    with TestClient(app) as client:
        r = client.post("/v1/completions", json=body, headers=headers)
        assert r.status_code == 200, r.text
        expected = host.generate([Request(prompt="the cat sat", user_id=user, max_new_tokens=8,
                                          conditioning={"preference": [0.3, 0.7], "bias": b, "adapter": lora})])[0]
        assert r.json()["choices"][0]["text"] == expected.text
        bad = client.post("/v1/completions", json={**body, "bias": [0.5] * (d + 1)}, headers=headers)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "bias"
        assert "bias" in app.openapi()["components"]["schemas"]["CompletionRequest"]["properties"]
