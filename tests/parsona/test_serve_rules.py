"""Steering rules over HTTP, as a hostile user would use them: GET/PUT /v1/profile/rules are the caller's
own, `rules: true` puts exactly the caller's rules before the prompt, learning needs the server's
population and enough history, and bad input is a 4xx naming the field."""

from __future__ import annotations

import random

import pytest

from conftest import stored_host, tiny_tokenizer
from parsona.base_model import tiny_causal_lm
from parsona.host import Host, Request
from parsona.persona.rules import HEADER
from parsona.store import Store

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from parsona.serve.app import create_app  # noqa: E402

URL = "/v1/profile/rules"
BODY = {"model": "tiny", "prompt": "the dog", "max_tokens": 6, "temperature": 0, "preference": [0.5, 0.5]}
WORDS = "report meeting price market contract office schedule trade power budget".split()


def population(n=60, seed=0):
    rng = random.Random(seed)
    return [f"Hello team,\n{' '.join(rng.choices(WORDS, k=20)).capitalize()}." for _ in range(n)]


@pytest.fixture
def world(tmp_path):
    host, store = stored_host(tmp_path)
    app = create_app(host, store, model_id="tiny", batch_wait_s=0.0, rules_population=population())
    (alice, alice_key), (bob, bob_key) = store.create_user(), store.create_user()
    with TestClient(app) as client:
        yield client, host, store, (alice, {"Authorization": f"Bearer {alice_key}"}), (bob, {"Authorization": f"Bearer {bob_key}"})
    store.close()


def test_rules_are_the_callers_own_and_go_before_the_prompt(world):
    client, host, store, (alice, a), (bob, b) = world
    rules = ["Keep it short.", "Sign off with 'Cheers'."]
    r = client.put(URL, json={"rules": rules}, headers=a)
    assert r.status_code == 200 and r.json()["rules"] == rules and r.json()["source"] == "user"
    assert client.get(URL, headers=a).json()["rules"] == rules
    assert client.get(URL, headers=b).json() == {"object": "rules", "rules": [], "source": None, "updated_at": None}
    r = client.post("/v1/completions", json={**BODY, "rules": True}, headers=a)
    assert r.status_code == 200, r.text
    by_hand = f"{HEADER}\n- Keep it short.\n- Sign off with 'Cheers'.\n\nthe dog"        # written out independently
    expected = host.generate([Request(prompt=by_hand, max_new_tokens=6, conditioning={"preference": [0.5, 0.5]})])[0]
    assert r.json()["choices"][0]["text"] == expected.text
    assert r.json()["usage"]["prompt_tokens"] == expected.prompt_tokens
    plain = client.post("/v1/completions", json=BODY, headers=a).json()
    assert plain["usage"]["prompt_tokens"] < expected.prompt_tokens                  # no rules unless asked
    r = client.post("/v1/completions", json={**BODY, "rules": True}, headers=b)         # bob has none: never alice's
    assert r.status_code == 400 and r.json()["error"]["param"] == "rules"


def test_chat_gets_the_rules_as_a_system_message(world):
    client, host, store, (alice, a), _ = world
    client.put(URL, json={"rules": ["Be brief."]}, headers=a)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
            "preference": [0.5, 0.5], "rules": True}
    r = client.post("/v1/chat/completions", json=chat, headers=a)
    assert r.status_code == 200, r.text
    expected = host.generate([Request(messages=[{"role": "system", "content": f"{HEADER}\n- Be brief."},
                                                {"role": "user", "content": "hi"}], max_new_tokens=4,
                                      conditioning={"preference": [0.5, 0.5]})])[0]
    assert r.json()["choices"][0]["message"]["content"] == expected.text


def test_learning_mines_the_callers_history_against_the_servers_population(world):
    client, _, store, (alice, a), (bob, b) = world
    r = client.post(f"{URL}/learn", headers=a)
    assert r.status_code == 400 and r.json()["error"]["param"] == "history"          # no history yet
    rng = random.Random(1)
    items = [f"{' '.join(rng.choices(WORDS, k=5)).capitalize()}!\nCheers,\nZed" for _ in range(30)]
    assert client.put("/v1/profile/history", json={"items": items}, headers=a).status_code == 200
    r = client.post(f"{URL}/learn", headers=a)
    assert r.status_code == 200 and r.json()["source"] == "mined", r.text
    assert "End with a short sign-off." in r.json()["rules"]
    assert client.get(URL, headers=b).json()["rules"] == []


def test_learning_is_off_without_a_population(tmp_path):
    with Store(tmp_path / "s") as store:
        host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store, [])
        _, key = store.create_user()
        with TestClient(create_app(host, store, model_id="tiny")) as client:
            r = client.post(f"{URL}/learn", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 501 and "--rules-population" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"rules": ["x"] * 21}, "rules"), ({"rules": ["a" * 301]}, "rules[0]"), ({"rules": ["two\nlines"]}, "rules[0]"),
    ({"rules": [""]}, "rules[0]"), ({"rules": [3]}, "rules[0]"), ({"rules": "one string"}, "rules"),
    ({"rules": ["ok"], "owner": "usr_x"}, "owner"), ({}, "rules"),
])
def test_bad_rules_are_a_4xx_naming_the_field(world, body, param):
    client, _, store, (alice, a), _ = world
    r = client.put(URL, json=body, headers=a)
    assert 400 <= r.status_code < 500 and r.status_code != 422, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert store.get_rules(alice) is None                                         # nothing half-stored


@pytest.mark.parametrize("extra, param", [({"rules": "yes"}, "rules"), ({"rules": 1}, "rules")])
def test_a_bad_rules_flag_is_a_400_naming_it(world, extra, param):
    client, host, store, (alice, a), _ = world
    store.put_rules(alice, ["Be brief."])
    r = client.post("/v1/completions", json={**BODY, **extra}, headers=a)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    from parsona.errors import ConfigError

    for request in (Request(prompt=[5, 6, 7], user_id=alice, rules=True), Request(prompt="hi", rules=True)):
        with pytest.raises(ConfigError) as err:                                    # token ids; no caller
            host.prepare(request)
        assert err.value.field == "rules"


def test_without_a_key_nothing_is_read_or_written(world):
    client, *_ = world
    assert client.get(URL).status_code == 401
    assert client.put(URL, json={"rules": ["x"]}).status_code == 401
    assert client.post(f"{URL}/learn").status_code == 401


def test_learning_that_finds_nothing_keeps_the_users_own_rules(world):
    client, _, store, (alice, a), _ = world
    client.put(URL, json={"rules": ["Mine."]}, headers=a)
    client.put("/v1/profile/history", json={"items": population(n=30, seed=5)}, headers=a)   # like everyone else
    r = client.post(f"{URL}/learn", headers=a)
    assert r.status_code == 400 and r.json()["error"]["param"] == "history" and "no rule" in r.json()["error"]["message"]
    assert client.get(URL, headers=a).json()["rules"] == ["Mine."]


def test_mining_reads_a_bounded_share_of_the_history():
    from parsona.serve.profile import MAX_RULE_CHARS_TOTAL, MAX_RULE_TEXT_CHARS, bounded_texts

    items = [{"text": f"{n} " + "x" * 10_000} for n in range(400)]          # oldest first, as store.history gives
    texts = bounded_texts(items)
    assert all(len(t) <= MAX_RULE_TEXT_CHARS for t in texts) and sum(map(len, texts)) <= MAX_RULE_CHARS_TOTAL
    assert texts[-1].startswith("399 ") and len(texts) == MAX_RULE_CHARS_TOTAL // MAX_RULE_TEXT_CHARS


def test_a_chat_template_that_refuses_the_rules_system_message_is_a_400(world):
    client, host, store, (alice, a), _ = world
    store.put_rules(alice, ["Be brief."])
    host.tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                                    "{{ raise_exception('no system role') }}{% endif %}{{ m['content'] }}{% endfor %}")
    try:
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                "preference": [0.5, 0.5], "rules": True}
        r = client.post("/v1/chat/completions", json=chat, headers=a)
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    finally:
        host.tokenizer.chat_template = None


def test_rules_the_preference_agent_stored_are_served_with_their_source_and_only_to_their_owner(world):
    client, host, store, (alice, a), (bob, b) = world
    store.put_rules(alice, ["Keep it short."], source="agent")        # parsona train steering-rules --put-rules
    r = client.get(URL, headers=a)
    assert r.status_code == 200 and r.json()["rules"] == ["Keep it short."] and r.json()["source"] == "agent"
    assert client.get(URL, headers=b).json()["rules"] == []
