"""persona: true over HTTP and GET /v1/profile, as a hostile user would use them: only ever the caller's own
persona, a clear 4xx without history, nothing of another user revealed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import perturb, tiny_tokenizer
from parsona.adapters import PersonaPrefixConfig, PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.host import Host, Request
from parsona.personalize import Personas
from parsona.persona import HistoryEncoder
from parsona.store import Store

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from parsona.serve.app import create_app  # noqa: E402

BODY = {"model": "tiny", "prompt": "the dog", "max_tokens": 6, "temperature": 0, "preference": [0.5, 0.5]}


def serve(tmp_path, encoder_dir, *, stored=True):
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    pref, prefix = attach(model, PreferenceLoRAConfig(rank=2)), attach(model, PersonaPrefixConfig(persona_dim=16))
    perturb(pref)
    perturb(prefix, std=3.0)
    store = Store(tmp_path / "store")
    personas = Personas(store, HistoryEncoder(model=str(encoder_dir), progress=False)) if stored else None
    host = Host(model, tiny_tokenizer(), store, [pref, prefix], stored={"persona": personas.resolve} if stored else None)
    return host, store, personas, create_app(host, store, model_id="tiny", batch_wait_s=0.0, personas=personas)


@pytest.fixture
def world(tmp_path, tiny_encoder_dir):
    host, store, personas, app = serve(tmp_path, tiny_encoder_dir)
    (alice, alice_key), (bob, bob_key) = store.create_user(), store.create_user()
    with TestClient(app) as client:
        yield client, host, store, personas, (alice, {"Authorization": f"Bearer {alice_key}"}), \
            (bob, {"Authorization": f"Bearer {bob_key}"})
    store.close()


def test_persona_true_is_the_callers_own_pooled_given_the_request(world):
    client, host, store, personas, (alice, a), _ = world
    assert client.put("/v1/profile/history", json={"items": ["the dog barks .", "call me monday"]}, headers=a).status_code == 200
    assert store.unembedded_history(alice, personas.encoder_key, 10) == []           # embedded as they arrived
    r = client.post("/v1/completions", json={**BODY, "persona": True}, headers=a)
    assert r.status_code == 200, r.text
    vector = personas.resolve(alice, Request(prompt="the dog"))
    asked = host.prepare(Request(prompt="the dog", user_id=alice, conditioning={"preference": [0.5, 0.5], "persona": True}))
    torch.testing.assert_close(asked.conditioning["persona"], torch.from_numpy(vector))   # alice's, pooled for this prompt
    expected = host.generate([Request(prompt="the dog", user_id=alice, max_new_tokens=6,
                                      conditioning={"preference": [0.5, 0.5], "persona": vector.tolist()})])[0]
    assert r.json()["choices"][0]["text"] == expected.text
    assert r.json()["usage"]["prompt_tokens"] == expected.prompt_tokens == len(asked.input_ids)


def test_without_history_persona_true_is_a_400_naming_the_fix(world):
    client, *_, (_, b) = world
    r = client.post("/v1/completions", json={**BODY, "persona": True}, headers=b)
    assert r.status_code == 400 and r.json()["error"]["param"] == "persona"
    assert "history" in r.json()["error"]["message"]


def test_the_profile_is_the_callers_own_and_never_shows_the_vector(world):
    client, *_, (_, a), (_, b) = world
    client.put("/v1/profile/history", json={"items": ["the cat sleeps", "gas price", "call me ."]}, headers=a)
    mine, theirs = client.get("/v1/profile", headers=a).json(), client.get("/v1/profile", headers=b).json()
    assert (mine["history_items"], mine["persona"], mine["persona_items"]) == (3, True, 3)
    assert (theirs["history_items"], theirs["persona"], theirs["persona_items"]) == (0, False, 0)
    assert set(mine) == {"object", "history_items", "persona", "persona_items", "updated_at"}
    assert client.get("/v1/profile").status_code == 401


@pytest.mark.parametrize("value", [[0.1] * 15, "yes", 1, [None] * 16, {"user": "alice"}, [float("1e400")] * 16])
def test_a_malformed_persona_is_a_400_naming_it(world, value):
    client, *_, (_, b) = world
    r = client.post("/v1/completions", content=__import__("json").dumps({**BODY, "persona": value}).replace(
        "Infinity", "1e400"), headers={**b, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"].startswith("persona")          # the field, or the item of it ("persona[0]")


def test_a_raw_vector_works_and_false_is_no_persona(world):
    client, *_, (_, b) = world
    vector = (np.ones(16) / 4).tolist()
    assert client.post("/v1/completions", json={**BODY, "persona": vector}, headers=b).status_code == 200
    off = client.post("/v1/completions", json={**BODY, "persona": False}, headers=b).json()["choices"][0]["text"]
    assert off == client.post("/v1/completions", json=BODY, headers=b).json()["choices"][0]["text"]


def test_a_server_that_keeps_no_personas_says_so(tmp_path, tiny_encoder_dir):
    host, store, _, app = serve(tmp_path, tiny_encoder_dir, stored=False)
    _, key = store.create_user()
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={**BODY, "persona": True}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and "keeps no persona" in r.json()["error"]["message"]
        assert client.get("/v1/profile", headers={"Authorization": f"Bearer {key}"}).json()["persona"] is False
    store.close()


def test_a_persona_rows_prompt_may_not_carry_the_placeholder_and_other_rows_may(world):
    from parsona.errors import ConfigError

    client, host, *_, (bob, b) = world
    vector = (np.ones(16) / 4).tolist()
    typed = "the dog!"                                            # the tiny tokenizer's id 3 is "!": the placeholder
    with pytest.raises(ConfigError) as err:
        host.prepare(Request(prompt=[3, 40, 41], user_id=bob, conditioning={"preference": [0.5, 0.5], "persona": vector}))
    assert err.value.field == "prompt" and "id 3" in str(err.value)
    r = client.post("/v1/completions", json={**BODY, "prompt": typed, "persona": vector}, headers=b)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert client.post("/v1/completions", json={**BODY, "prompt": typed}, headers=b).status_code == 200


@pytest.mark.parametrize("scale", [1e30, 10.0, 0.01])
def test_a_persona_far_from_unit_length_is_refused(world, scale):
    client, *_, (_, b) = world
    r = client.post("/v1/completions", json={**BODY, "persona": (np.ones(16) / 4 * scale).tolist()}, headers=b)
    assert r.status_code == 400 and r.json()["error"]["param"] == "persona" and "unit length" in r.json()["error"]["message"]


def test_the_prompt_limit_counts_the_placeholders_and_is_checked_before_any_lookup(world):
    _, host, store, personas, (alice, _), _ = world
    from parsona.errors import ConfigError

    host.max_prompt_tokens = 4
    store.add_history(alice, ["the dog barks ."])
    with pytest.raises(ConfigError, match="at most 3 tokens"):
        host.prepare(Request(prompt=[40, 41, 42, 43], user_id=alice, conditioning={"preference": [0.5, 0.5],
                                                                                   "persona": True}))
    calls = []
    host.stored["persona"] = lambda *a: calls.append(a)
    with pytest.raises(ConfigError, match="at most 4 tokens"):
        host.prepare(Request(prompt=[40] * 5, user_id=alice, conditioning={"preference": [0.5, 0.5], "persona": True}))
    assert calls == []                                                         # too long: nothing was looked up


def test_an_unknown_field_named_like_a_type_is_named_in_the_error(world):
    client, *_, (_, b) = world
    r = client.post("/v1/completions", json={**BODY, "list": 1}, headers=b)
    assert r.status_code == 400 and r.json()["error"]["param"] == "list"


def test_a_chat_requests_persona_is_pooled_given_its_last_message(world):
    client, host, store, personas, (alice, a), _ = world
    client.put("/v1/profile/history", json={"items": ["the dog barks .", "call me monday", "gas price"]}, headers=a)
    messages = [{"role": "user", "content": "gas price"}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "the dog"}]
    asked = host.prepare(Request(messages=messages, user_id=alice, conditioning={"preference": [0.5, 0.5], "persona": True}))
    expected = personas.resolve(alice, Request(prompt="the dog"))
    torch.testing.assert_close(asked.conditioning["persona"], torch.from_numpy(expected))


def test_serve_refuses_a_persona_prefix_whose_width_the_encoder_does_not_give(tiny_dir, tiny_encoder_dir, tmp_path):
    from parsona.adapters import PersonaPrefixConfig, attach, save_adapter
    from parsona.base_model import load_base_model
    from parsona.cli import build_parser
    from parsona.errors import ConfigError
    from parsona.serve.cli import build_app

    model, _ = load_base_model(tiny_dir)
    save_adapter(attach(model, PersonaPrefixConfig(persona_dim=8)), tmp_path / "prefix")   # the encoder gives 16
    args = build_parser().parse_args(["serve", "--persona-prefix", str(tmp_path / "prefix"), "--encoder",
                                      str(tiny_encoder_dir), "--store", str(tmp_path / "store")])
    with pytest.raises(ConfigError) as err:
        build_app(args)
    assert err.value.field == "--encoder" and "8" in str(err.value)
