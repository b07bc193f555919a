"""One user cannot break another's requests (tracker issue 15, findings 1 and 2).

Each test reproduces an attack that used to fail a whole batch, or a stored adapter that used to
make every request beside it a 500, and checks that now only the attacker's row is affected: B's
ordinary request, decoded in the same batch, succeeds with the text it gets alone.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import tarfile

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import peft_lora_dir, tiny_tokenizer
from parsona.adapters.peft_format import LoRAWeights, read_peft_lora
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.decoding import RowFailed
from parsona.host import Host, Request
from parsona.serve.app import create_app
from parsona.store import Store

MODEL = "tiny"
ADMIN = {"Authorization": "Bearer admin"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("iso") / "store")
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, max_prompt_tokens=200)
    # a long batch wait: concurrent requests always share a batch, which is what these tests are about
    app = create_app(host, store, model_id=MODEL, admin_key="admin", batch_wait_s=0.3, max_upload_bytes=200_000)
    with TestClient(app) as client:
        app.state.client = client   # one client for the module: each TestClient runs the app's lifespan
        yield app
    store.close()


def user(client) -> dict:
    return {"Authorization": f"Bearer {client.post('/v1/users', headers=ADMIN).json()['api_key']}"}


def archive(directory) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(directory.iterdir()):
            tar.add(f, arcname=f.name)
    return buf.getvalue()


def upload(client, key, data: bytes):
    return client.post("/v1/adapters?name=x", content=data, headers={**key, "Content-Type": "application/x-tar"})


def chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0, **extra}


def together(app, requests: list[tuple[dict, dict]]) -> list[httpx.Response]:
    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*[c.post("/v1/chat/completions", json=b, headers=k) for k, b in requests])

    app.state.metrics.max_batch_size = 0
    responses = asyncio.run(send())
    assert app.state.metrics.max_batch_size == len(requests)  # they really shared one batch
    return responses


def text(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("attack", [{"temperature": 1e-40}, {"temperature": 5e-324}, {"top_p": 5e-324, "temperature": 1},
                                    {"temperature": 1e-40, "top_p": 5e-324}])
def test_extreme_sampling_fails_nobody_and_the_limit_is_greedy(app, attack):
    client = app.state.client
    a, b = user(client), user(client)
    alone = text(client.post("/v1/chat/completions", json=chat(), headers=b))
    attacker, victim = together(app, [(a, chat(**attack, seed=1)), (b, chat())])
    assert text(victim) == alone
    assert text(attacker) == alone  # T → 0 and top_p → 0 both leave only the most likely token


def bad_config(tmp_path, **fields) -> bytes:
    """A real PEFT LoRA for the tiny model whose adapter_config.json has ``fields`` set (None: removed)."""
    directory = peft_lora_dir(tmp_path / "lora", seed=0)
    cfg = json.loads((directory / "adapter_config.json").read_text())
    for key, value in fields.items():
        cfg.pop(key) if value is None else cfg.__setitem__(key, value)
    (directory / "adapter_config.json").write_text(json.dumps(cfg))
    return archive(directory)


CONFIG_ATTACKS = [({"r": None}, "r"), ({"r": "abc"}, "r"), ({"r": 1.5}, "r"), ({"r": True}, "r"), ({"r": 0}, "r"),
                  ({"r": -1}, "r"), ({"r": 2**70}, "r"), ({"lora_alpha": None}, "lora_alpha"), ({"lora_alpha": "x"}, "lora_alpha"),
                  ({"lora_alpha": []}, "lora_alpha"), ({"lora_alpha": 1e308}, "lora_alpha"), ({"lora_alpha": -4}, "lora_alpha"),
                  ({"lora_alpha": 10**400}, "lora_alpha"), ({"use_rslora": "yes"}, "use_rslora"), ({"r": -4, "use_rslora": True}, "r"),
                  ({"fan_in_fan_out": True}, "fan_in_fan_out"), ({"use_dora": True}, "use_dora"), ({"r": 8}, "rank")]


@pytest.mark.parametrize("fields, problem", CONFIG_ATTACKS)
def test_a_bad_lora_config_is_a_400_at_upload_and_stores_nothing(app, tmp_path, fields, problem):
    client = app.state.client
    key = user(client)
    r = upload(client, key, bad_config(tmp_path, **fields))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "file" and problem in r.json()["error"]["message"]
    assert client.get("/v1/adapters", headers=key).json()["data"] == []


@pytest.mark.parametrize("raw", [b'{"peft_type": "LORA", "r": 4, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
                                 b'{"peft_type": "LORA", "r": 1e400, "lora_alpha": 8}', b'{"r": NaN}',
                                 b'{"peft_type": "LORA", "r": 4, "lora_alpha": NaN}'])
def test_hostile_config_json_is_a_400(app, tmp_path, raw):
    directory = peft_lora_dir(tmp_path / "lora", seed=0)
    (directory / "adapter_config.json").write_bytes(raw)
    client = app.state.client
    r = upload(client, user(client), archive(directory))
    assert r.status_code in (400, 413), r.text  # a 200,000-deep document may already exceed the upload limit
    assert r.json()["error"]["param"] in ("file", "body")


def test_the_upload_checks_run_again_when_the_host_loads_a_stored_adapter(app, tmp_path, monkeypatch):
    """A stored adapter corrupted on disk fails its owner's request alone; B's, in the same batch, succeeds."""
    client = app.state.client
    a, b = user(client), user(client)
    good = upload(client, a, archive(peft_lora_dir(tmp_path / "ok", seed=1)))
    assert good.status_code == 201, good.text
    adapter = good.json()["id"]
    stored = app.state.store.adapter_path(app.state.store.authenticate(a["Authorization"][7:]), adapter)
    cfg = json.loads((stored / "adapter_config.json").read_text())
    (stored / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": math.nan}))
    alone = text(client.post("/v1/chat/completions", json=chat(), headers=b))
    broken, victim = together(app, [(a, chat(adapter=adapter)), (b, chat())])
    assert text(victim) == alone
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "adapter"
    message = broken.json()["error"]["message"]
    assert "Upload the adapter again" in message and str(stored) not in message   # the checksum caught it first
    # without the checksum, the upload's own checks run at load and catch it too
    store = app.state.store
    monkeypatch.setattr(store, "verified_adapter_path", store.adapter_path)
    with pytest.raises(ConfigError, match="lora_alpha") as err:
        app.state.host._stored_lora(store.authenticate(a["Authorization"][7:]), adapter)
    assert err.value.field == "adapter" and str(stored) not in str(err.value)


def test_a_row_whose_lora_makes_scores_non_finite_fails_alone(tmp_path):
    weights = read_peft_lora(peft_lora_dir(tmp_path / "lora", seed=2))
    nan = LoRAWeights(weights.rank, weights.alpha, {p: (A, torch.full_like(B, math.nan)) for p, (A, B) in weights.factors.items()})
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), loras={"nan": nan})
    ok = Request(prompt="hello", max_new_tokens=5)
    alone = host.generate([ok])[0].text
    results = host.run([host.prepare(Request(prompt="hello", max_new_tokens=5, conditioning={"adapter": "nan"})),
                        host.prepare(ok)])
    assert isinstance(results[0], RowFailed) and "not finite" in str(results[0])
    assert results[1].text == alone

