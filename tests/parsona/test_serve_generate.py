"""POST /v1/adapters/generate and GET /v1/experts as a hostile user would use them: a generated LoRA is the
caller's own and usable at once; only public experts and the caller's own adapters can be blended; bad
input is a 4xx naming the field; nothing of another user is revealed."""

from __future__ import annotations

import pytest
import torch

from conftest import peft_lora_dir, tiny_tokenizer
from parsona.adapters.generated_lora import blend_exact
from parsona.adapters.peft_format import read_peft_lora
from parsona.base_model import tiny_causal_lm
from parsona.generate import GeneratedLoRAs
from parsona.host import Host, Request
from parsona.persona import HistoryEncoder
from parsona.store import Quotas, Store

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from parsona.serve.app import create_app  # noqa: E402

TOPICS = ["the dog barks at the cat .", "call me on monday", "gas prices rose again", "the report is late"]
URL = "/v1/adapters/generate"


@pytest.fixture
def lora_dirs(expert_lora_dirs):
    return expert_lora_dirs[: len(TOPICS)]


@pytest.fixture
def world(tmp_path, tiny_encoder_dir, lora_dirs):
    encoder = HistoryEncoder(model=str(tiny_encoder_dir), progress=False).fit()
    store = Store(tmp_path / "store")
    for n, (d, text) in enumerate(zip(lora_dirs, TOPICS)):
        store.experts.add(d, f"expert {n}", text, encoder.transform([text])[0], encoder.key)
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, [], max_resident_loras=4)
    app = create_app(host, store, model_id="tiny", batch_wait_s=0.0,
                     generated=GeneratedLoRAs(store, encoder, check=host.check_lora))
    (alice, alice_key), (bob, bob_key) = store.create_user(), store.create_user()
    with TestClient(app) as client:
        yield client, host, store, (alice, {"Authorization": f"Bearer {alice_key}"}), \
            (bob, {"Authorization": f"Bearer {bob_key}"})
    store.close()


def test_a_description_gives_the_caller_a_lora_usable_at_once(world, lora_dirs):
    client, host, store, (alice, a), (bob, b) = world
    r = client.post(URL, json={"description": "the dog sleeps", "k": 2, "name": "from words"}, headers=a)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["object"] == "adapter" and made["name"] == "from words" and len(made["experts"]) == 2
    assert sum(e["weight"] for e in made["experts"]) == pytest.approx(1.0)
    ids = [e["id"] for e in client.get("/v1/experts", headers=a).json()["data"]]
    chosen = [read_peft_lora(lora_dirs[ids.index(e["id"])]) for e in made["experts"]]
    expected = blend_exact(chosen, [e["weight"] for e in made["experts"]])
    stored = read_peft_lora(store.adapter_path(alice, made["id"]))
    for path in expected.factors:
        torch.testing.assert_close(stored.scale * stored.factors[path][1] @ stored.factors[path][0],
                                   expected.scale * expected.factors[path][1] @ expected.factors[path][0])
    chat = {"model": "tiny", "prompt": "the dog", "max_tokens": 5, "temperature": 0, "adapter": made["id"]}
    r = client.post("/v1/completions", json=chat, headers=a)
    assert r.status_code == 200, r.text
    base = host.generate([Request(prompt="the dog", max_new_tokens=5)])[0].text
    assert r.json()["choices"][0]["text"] != base                                 # the blend changes the answer
    assert client.post("/v1/completions", json=chat, headers=b).status_code == 404   # alice's, not bob's
    assert [x["id"] for x in client.get("/v1/adapters", headers=b).json()["data"]] == []


def test_explicit_weights_blend_public_experts_and_the_callers_own_adapters_only(world, lora_dirs):
    client, _, store, (alice, a), (bob, b) = world
    public = [e["id"] for e in client.get("/v1/experts", headers=a).json()["data"]]
    bobs = store.put_adapter(bob, lora_dirs[1], "lora", "bob's")
    alices = store.put_adapter(alice, lora_dirs[2], "lora", "alice's")
    r = client.post(URL, json={"experts": [public[0], alices], "weights": [0.5, 0.5], "rank": 2}, headers=a)
    assert r.status_code == 201 and 0 <= r.json()["max_relative_error"] < 1, r.text
    theirs = client.post(URL, json={"experts": [public[0], bobs], "weights": [0.5, 0.5]}, headers=a)
    missing = client.post(URL, json={"experts": [public[0], "adp_" + "0" * 32], "weights": [0.5, 0.5]}, headers=a)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json() and theirs.json()["error"]["param"] == "experts[1]"   # nothing revealed
    assert len(store.list_adapters(bob)) == 1


@pytest.mark.parametrize("body, param", [
    ({"description": ""}, "description"),
    ({}, "description"),
    ({"description": "x", "texts": ["y"]}, "description"),
    ({"texts": []}, "texts"),
    ({"texts": ["a"] * 6}, "texts"),
    ({"texts": "one string"}, "texts"),
    ({"description": "x", "k": 0}, "k"),
    ({"description": "x", "tau": 0}, "tau"),
    ({"description": "x", "rank": 10_000}, "rank"),
    ({"description": "x", "method": "pickle"}, "method"),
    ({"description": "x", "adapter": "../../etc/passwd"}, "adapter"),
    ({"experts": ["exp_" + "0" * 32, "exp_" + "1" * 32], "weights": [0.5, 0.6]}, "weights"),
    ({"experts": ["../../secrets", "exp_" + "1" * 32], "weights": [0.5, 0.5]}, "experts[0]"),
    ({"experts": ["exp_" + "0" * 32]}, "weights"),
    ({"experts": ["exp_" + "0" * 32, "exp_" + "0" * 32], "weights": [0.5, 0.5]}, "experts"),
    ({"experts": ["exp_" + "0" * 32, "exp_" + "1" * 32], "weights": [0.5, 0.5], "k": 2}, "k"),
    ({"description": "x", "tau": 1e-300}, "tau"),
    (b'{"description": "\\ud800"}', "description"),
])
def test_bad_input_is_a_4xx_naming_the_field(world, body, param):
    client, _, store, (alice, a), _ = world
    r = client.post(URL, content=body, headers={**a, "Content-Type": "application/json"}) if isinstance(body, bytes) \
        else client.post(URL, json=body, headers=a)
    assert 400 <= r.status_code < 500 and r.status_code != 422, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert store.list_adapters(alice) == []                                       # nothing half-made is kept


def test_the_cvae_is_fitted_once_and_reports_every_coefficient(world):
    client, _, store, (alice, a), _ = world
    r = client.post(URL, json={"texts": ["my dog sleeps"], "method": "cvae", "rank": 2}, headers=a)
    assert r.status_code == 201, r.text
    made = r.json()
    assert [e["id"] for e in made["experts"]] == [e["id"] for e in client.get("/v1/experts", headers=a).json()["data"]]
    assert sum(e["weight"] for e in made["experts"]) == pytest.approx(1.0) and made["max_relative_error"] is not None


def test_a_blend_past_the_rank_limit_is_refused_before_anything_is_loaded(world, tmp_path):
    client, _, store, (alice, a), _ = world
    big = [store.put_adapter(alice, peft_lora_dir(tmp_path / f"big{n}", seed=n, r=130), "lora", "big") for n in range(2)]
    r = client.post(URL, json={"experts": big, "weights": [0.5, 0.5]}, headers=a)
    assert r.status_code == 400 and r.json()["error"]["param"] == "rank" and "260" in r.json()["error"]["message"]
    r = client.post(URL, json={"experts": big, "weights": [0.5, 0.5], "rank": 4}, headers=a)
    assert r.status_code == 201 and read_peft_lora(store.adapter_path(alice, r.json()["id"])).rank == 4


def test_without_a_key_or_an_expert_bank_nothing_is_generated(world, tmp_path):
    client, *_ = world
    assert client.post(URL, json={"description": "x"}).status_code == 401
    assert client.get("/v1/experts").status_code == 401
    with Store(tmp_path / "bare") as store:
        host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, [])
        _, key = store.create_user()
        with TestClient(create_app(host, store, model_id="tiny")) as bare:
            r = bare.post(URL, json={"description": "x"}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 501 and "build-expert-bank" in r.json()["error"]["message"]


def test_generating_counts_against_the_adapter_quota(world, tmp_path, tiny_encoder_dir, lora_dirs):
    client, _, store, (alice, a), _ = world
    store.quotas = Quotas(max_adapters_per_user=1)
    assert client.post(URL, json={"description": "the dog"}, headers=a).status_code == 201
    r = client.post(URL, json={"description": "the dog"}, headers=a)
    assert r.status_code == 429 and len(store.list_adapters(alice)) == 1


def test_serve_refuses_to_start_with_a_bank_it_cannot_use(tmp_path, tiny_encoder_dir, lora_dirs):
    from parsona.errors import ConfigError
    from parsona.serve.cli import check_expert_bank

    encoder = HistoryEncoder(model=str(tiny_encoder_dir), progress=False).fit()
    with Store(tmp_path / "store") as store:
        store.experts.add(lora_dirs[0], "e0", "dogs", encoder.transform(["dogs"])[0], "another-encoder|d=16")
        host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, [])
        generated = GeneratedLoRAs(store, encoder)
        with pytest.raises(ConfigError) as err:
            check_expert_bank(store, generated, host)
        assert err.value.field == "--encoder" and "another-encoder" in str(err.value)
        e1 = store.experts.add(lora_dirs[1], "e1", "dogs", encoder.transform(["dogs"])[0], encoder.key)
        check_expert_bank(store, generated, host)                                # fits: starts
        assert generated.cache.load(store.experts.path(e1)) is generated.cache.load(store.experts.path(e1))  # read once
        wide = Host(tiny_causal_lm(hidden_size=64, vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, [])
        with pytest.raises(ConfigError) as err:
            check_expert_bank(store, GeneratedLoRAs(store, encoder), wide)
        assert err.value.field == "--store"
