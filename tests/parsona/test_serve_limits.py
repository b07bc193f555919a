"""Load is bounded and requests are strict (tracker issue 15, findings 4 and 5): rate limits, body
deadlines, cancelled rows, strict types, one error shape, /metrics for the admin only."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fastapi.testclient import TestClient

from conftest import tiny_tokenizer
from parsona.base_model import tiny_causal_lm
from parsona.host import Host, Request
from parsona.serve.app import create_app
from parsona.serve.batcher import Batcher
from parsona.store import Store

MODEL = "tiny"
ADMIN = {"Authorization": "Bearer admin"}


def build(tmp_path, **kw):
    store = Store(tmp_path / "store")
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer(), store)
    return create_app(host, store, model_id=MODEL, admin_key="admin", **kw), store


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app, store = build(tmp_path_factory.mktemp("limits"))
    with TestClient(app) as client:
        yield client
    store.close()


def user(client) -> dict:
    return {"Authorization": f"Bearer {client.post('/v1/users', headers=ADMIN).json()['api_key']}"}


def chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0, **extra}


@pytest.mark.parametrize("change, param", [({"temperature": "0"}, "temperature"), ({"max_tokens": "2"}, "max_tokens"),
                                           ({"seed": True}, "seed"), ({"stream": "yes"}, "stream"),
                                           ({"top_p": [1]}, "top_p")])
def test_types_are_strict_nothing_is_coerced(client, change, param):
    r = client.post("/v1/chat/completions", json=chat(**change), headers=user(client))
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_an_int_is_still_a_number(client):
    assert client.post("/v1/chat/completions", json=chat(temperature=0, top_p=1), headers=user(client)).status_code == 200


def test_metrics_are_for_the_admin_only(client):
    assert client.get("/metrics", headers=user(client)).status_code == 401
    assert client.get("/metrics", headers=ADMIN).status_code == 200


@pytest.mark.parametrize("method, path, status, allow", [("OPTIONS", "/v1/chat/completions", 405, "POST"),
                                                         ("PUT", "/v1/models", 405, "GET"),
                                                         ("GET", "/v1/no-such-route", 404, None)])
def test_routing_errors_have_the_one_error_shape(client, method, path, status, allow):
    r = client.request(method, path, headers=user(client))
    assert r.status_code == status and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.headers.get("allow") == allow


def test_a_non_json_body_gets_the_same_error_shape(client):
    r = client.post("/v1/adapters/train", content=b"not json", headers={**user(client), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"


def test_each_user_has_a_rate_limit_of_their_own(tmp_path):
    app, store = build(tmp_path, rate_limit=0.5, rate_burst=3)
    with TestClient(app) as client:
        noisy, quiet = user(client), user(client)
        codes = [client.get("/v1/models", headers=noisy).status_code for _ in range(5)]
        assert codes[:3] == [200] * 3 and codes[3:] == [429] * 2
        r = client.get("/v1/models", headers=noisy)
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        assert client.get("/v1/models", headers=quiet).status_code == 200    # the noisy user used only their own
    store.close()


def test_a_body_that_never_finishes_arriving_is_a_408(tmp_path):
    app, store = build(tmp_path, body_timeout_s=0.3)
    sent = []

    async def trickle():
        async def receive():
            if not sent:
                sent.append(1)
                return {"type": "http.request", "body": b'{"model": ', "more_body": True}
            await asyncio.sleep(60)   # the rest never comes
        out = []

        async def send(message):
            out.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b"",
                 "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": ""}
        began = time.monotonic()
        await app(scope, receive, send)
        return out, time.monotonic() - began

    out, seconds = asyncio.run(trickle())
    assert out[0]["status"] == 408 and seconds < 5
    store.close()


def test_a_cancelled_row_stops_decoding_and_the_others_finish():
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer())
    gone, stays = (host.prepare(Request(prompt="hello", max_new_tokens=40)) for _ in range(2))
    gone.cancel.set()
    results = host.run([gone, stays])
    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens == 0
    assert results[1].completion_tokens == 40 or results[1].finish_reason == "stop"


def test_a_client_that_leaves_cancels_its_row():
    host = Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer())
    batcher = Batcher(host, max_wait_s=0.5)
    prepared = host.prepare(Request(prompt="hello", max_new_tokens=8))

    async def leave():
        task = asyncio.ensure_future(batcher.submit(prepared))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave())
    batcher.close()
    assert prepared.cancel.is_set()


def test_prompts_are_tokenized_off_the_event_loop(client):
    host = client.app.state.host
    seen = []
    original = host.prepare

    def spy(request):
        seen.append(threading.current_thread())
        return original(request)

    host.prepare = spy
    try:
        assert client.post("/v1/chat/completions", json=chat(), headers=user(client)).status_code == 200
    finally:
        host.prepare = original
    assert seen and seen[0].name.startswith("AnyIO worker")   # run_in_threadpool's, not the event loop's thread
