"""The HTTP API on a tiny model: OpenAI shapes, batching, isolation between users, bad input."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import zipfile

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from peft import LoraConfig, get_peft_model

from conftest import perturb, tiny_tokenizer
from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.host import Host
from parsona.serve.app import create_app
from parsona.serve.training import Trainer
from parsona.store import Store

ADMIN = {"Authorization": "Bearer admin-secret"}
MODEL = "tiny"


def tiny_lm(**overrides):
    return tiny_causal_lm(**{"vocab_size": 259, "pad_token_id": 0, **overrides})


def peft_archive(tmp_path, seed: int, fmt: str = "tar", **overrides) -> bytes:
    """A real PEFT LoRA directory (README.md included, as PEFT writes it), archived in one folder."""
    torch.manual_seed(seed)
    model = get_peft_model(tiny_lm(**overrides), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                            init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:
            p.data.mul_(8)
    path = tmp_path / f"lora{seed}"
    model.save_pretrained(path)
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            for f in sorted(path.iterdir()):
                z.write(f, f"lora/{f.name}")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            t.add(path, arcname="lora")
    return buf.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: thread hand-offs cost more than they save
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    store = Store(tmp_path_factory.mktemp("serve") / "store")
    model = tiny_lm()
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    host = Host(model, tiny_tokenizer(), store, pref, max_resident_loras=4, max_prompt_tokens=200)
    from parsona.recipes import train_user_lora
    trainer = Trainer(store, tiny_lm, tiny_tokenizer(), train=train_user_lora.run)
    app = create_app(host, store, model_id=MODEL, admin_key="admin-secret", trainer=trainer,
                     max_upload_bytes=200_000, batch_wait_s=0.05)
    with TestClient(app) as client:
        yield client, app, trainer
    store.close()


def new_user(client) -> dict:
    r = client.post("/v1/users", headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['api_key']}"}


def upload(client, key, data: bytes, name="mine"):
    return client.post(f"/v1/adapters?name={name}", content=data, headers={**key, "Content-Type": "application/x-tar"})


def chat_body(content="hello", preference=(0.5, 0.5), **extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": 8,
            "preference": list(preference), **extra}


@pytest.fixture(scope="module")
def users(served, tmp_path_factory):
    """Three users, each with one uploaded LoRA: [(headers, adapter_id)]."""
    client = served[0]
    tmp = tmp_path_factory.mktemp("loras")
    out = []
    for seed in range(3):
        key = new_user(client)
        r = upload(client, key, peft_archive(tmp, seed, fmt="zip" if seed == 2 else "tar"))
        assert r.status_code == 201, r.text
        out.append((key, r.json()["id"]))
    return out


# -- generation ---------------------------------------------------------------------------------
def test_chat_and_text_completions_have_openai_shapes(served, users):
    client, _, _ = served
    key, adapter = users[0]
    r = client.post("/v1/chat/completions", json=chat_body(adapter=adapter), headers=key)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 8
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 5, "temperature": 0,
                                             "preference": [1, 0]}, headers=key)
    assert r.status_code == 200 and r.json()["object"] == "text_completion" and r.json()["usage"]["completion_tokens"] == 5
    models = client.get("/v1/models", headers=key).json()
    assert models["data"][0]["id"] == MODEL and models["data"][0]["n_objectives"] == 2


def sse_events(response) -> list:
    lines = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def test_streaming_chat_sends_the_same_text_as_one_response(served, users):
    client, _, _ = served
    key, adapter = users[1]
    body = chat_body("stream me", (0.2, 0.8), adapter=adapter, max_tokens=12)
    whole = client.post("/v1/chat/completions", json=body, headers=key).json()
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}},
                    headers=key)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == 12


def test_concurrent_mixed_requests_equal_each_alone(served, users):
    """8 concurrent requests, 8 preferences, 3 users' LoRAs: batched together, same greedy text as alone."""
    client, app, _ = served
    bodies = [(users[i % 3][0], chat_body(f"prompt {i}" * (1 + i % 3), (i / 7, 1 - i / 7), max_tokens=10,
                                          **({"adapter": users[i % 3][1]} if i != 5 else {}))) for i in range(8)]
    alone = [client.post("/v1/chat/completions", json=b, headers=k).json()["choices"][0]["message"]["content"]
             for k, b in bodies]

    async def together():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*[c.post("/v1/chat/completions", json=b, headers=k) for k, b in bodies])

    before = app.state.metrics.max_batch_size
    app.state.metrics.max_batch_size = 0
    responses = asyncio.run(together())
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == alone
    assert app.state.metrics.max_batch_size > 1  # they really shared a batch
    app.state.metrics.max_batch_size = max(before, app.state.metrics.max_batch_size)


def test_training_job_runs_in_the_background_and_yields_a_usable_adapter(served):
    client, _, trainer = served
    key = new_user(client)
    r = client.post("/v1/adapters/train", json={"steps": 3}, headers=key)
    assert r.status_code == 400 and r.json()["error"]["param"] == "history"
    r = client.put("/v1/profile/history", json={"items": ["I love short answers.", {"text": "Tea over coffee.",
                                                                                     "kind": "note"}]}, headers=key)
    assert r.status_code == 200 and len(r.json()["item_ids"]) == 2
    r = client.post("/v1/adapters/train", json={"steps": 3, "name": "mine", "learning_rate": 0.01}, headers=key)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    trainer.wait_idle()
    job = client.get(f"/v1/jobs/{job_id}", headers=key).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0, job
    assert [a["id"] for a in client.get("/v1/adapters", headers=key).json()["data"]] == [job["adapter_id"]]
    r = client.post("/v1/chat/completions", json=chat_body(adapter=job["adapter_id"]), headers=key)
    assert r.status_code == 200, r.text


def test_health_metrics_and_a_complete_openapi_schema(served):
    client, _, _ = served
    assert client.get("/healthz").json() == {"status": "ok", "model": MODEL}
    assert client.get("/metrics").status_code == 401
    text = client.get("/metrics", headers=ADMIN).text
    assert 'parsona_requests_total{route="/v1/chat/completions",method="POST",status="200"}' in text
    assert "parsona_request_seconds_bucket" in text and "parsona_resident_loras" in text
    schema = client.get("/openapi.json").json()
    undescribed = [f"{name}.{prop}" for name, s in schema["components"]["schemas"].items()
                   for prop, p in s.get("properties", {}).items() if not p.get("description")]
    assert not undescribed, undescribed
    untyped = [f"{name}.{prop}" for name, s in schema["components"]["schemas"].items()
               for prop, p in s.get("properties", {}).items() if not ({"type", "anyOf", "$ref", "const", "enum"} & set(p))]
    assert not untyped, untyped
    for param in schema["paths"]["/v1/adapters"]["post"]["parameters"]:
        assert param.get("description"), param


# -- isolation ----------------------------------------------------------------------------------
def test_a_user_cannot_see_use_or_delete_anothers_adapters_or_jobs(served, users):
    client, _, _ = served
    (alice, alice_lora), (bob, bob_lora) = users[0], users[1]
    listed = [a["id"] for a in client.get("/v1/adapters", headers=bob).json()["data"]]
    assert alice_lora not in listed and bob_lora in listed
    missing = "adp_" + "0" * 32
    for method, path in [("get", "/v1/adapters/{}"), ("delete", "/v1/adapters/{}")]:
        theirs = getattr(client, method)(path.format(alice_lora), headers=bob)
        nobody = getattr(client, method)(path.format(missing), headers=bob)
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == nobody.json()  # nothing tells "exists, not yours" from "does not exist"
    used = client.post("/v1/chat/completions", json=chat_body(adapter=alice_lora), headers=bob)
    assert used.status_code == 404 and used.json()["error"]["param"] == "adapter"
    assert used.json() == client.post("/v1/chat/completions", json=chat_body(adapter=missing), headers=bob).json()
    for trick in [f"../{alice_lora}", f"..%2F{alice_lora}", "%2e%2e", f"{alice_lora}%00", alice_lora.upper(), "*"]:
        for method in ("get", "delete"):
            assert getattr(client, method)(f"/v1/adapters/{trick}", headers=bob).status_code == 404, trick
    # Alice's job is invisible to Bob too
    client.put("/v1/profile/history", json={"items": ["alice wrote this"]}, headers=alice)
    job_id = client.post("/v1/adapters/train", json={"steps": 1}, headers=alice).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
    served[2].wait_idle()
    # ...and Alice still has everything
    assert client.get(f"/v1/adapters/{alice_lora}", headers=alice).status_code == 200


@pytest.mark.parametrize("method, path", [
    ("get", "/v1/models"), ("post", "/v1/chat/completions"), ("post", "/v1/completions"), ("get", "/v1/adapters"),
    ("post", "/v1/adapters"), ("delete", "/v1/adapters/adp_" + "0" * 32), ("put", "/v1/profile/history"),
    ("post", "/v1/adapters/train"), ("get", "/v1/jobs/job_" + "0" * 32), ("post", "/v1/users"), ("get", "/metrics"),
])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer psk_wrong"}, {"Authorization": "Basic abc"},
                                     {"Authorization": "Bearer admin-secret"}])
def test_a_wrong_or_missing_key_is_401_everywhere(served, method, path, headers):
    client = served[0]
    if headers == ADMIN and path in ("/v1/users", "/metrics"):
        return  # the admin key is right there
    kwargs = {"content": b"{not json"} if method in ("post", "put") else {}
    r = getattr(client, method)(path, headers=headers, **kwargs)
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json()["error"]["type"] == "authentication_error"


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("change, status, param", [
    ({"preference": [1.0]}, 400, "preference"),
    ({"preference": [1.5, -0.5]}, 400, "preference"),
    ({"preference": [0.7, 0.7]}, 400, "preference"),
    ({"preference": None}, 400, "preference"),
    ({"preference": [0.5, "x"]}, 400, "preference[1]"),
    ({"adapter": "adp_" + "1" * 32}, 404, "adapter"),
    ({"adapter": "../../etc/passwd"}, 404, "adapter"),
    ({"model": "gpt-4"}, 404, "model"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 100}]}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ({"temperature": 5}, 400, "temperature"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 100_000}, 400, "max_tokens"),
    ({"n": 2}, 400, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"preferences": [0.5, 0.5]}, 400, "preferences"),
])
def test_bad_chat_requests_are_4xx_naming_the_field(served, users, change, status, param):
    client = served[0]
    r = client.post("/v1/chat/completions", json={**chat_body(), **change}, headers=users[0][0])
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param and param.split("[")[0] in r.json()["error"]["message"]


NEUTRAL_CHAT = {"presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": False, "top_logprobs": 0, "tools": [],
                "tool_choice": "none", "parallel_tool_calls": True, "metadata": {"run": "ci"}, "store": False,
                "logit_bias": {}, "response_format": {"type": "text"}, "service_tier": "auto", "user": "u-1"}


def test_openai_fields_at_their_neutral_values_are_accepted_and_change_nothing(served, users):
    client, key = served[0], users[0][0]
    plain = client.post("/v1/chat/completions", json=chat_body(), headers=key)
    neutral = client.post("/v1/chat/completions", json={**chat_body(), **NEUTRAL_CHAT}, headers=key)
    assert neutral.status_code == 200, neutral.text
    assert neutral.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    text = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "temperature": 0, "preference": [0.5, 0.5]}
    r = client.post("/v1/completions", json={**text, "logprobs": 0, "echo": False, "best_of": 1, "suffix": None}, headers=key)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, change", [
    ("/v1/chat/completions", {"presence_penalty": 0.5}), ("/v1/chat/completions", {"frequency_penalty": -1}),
    ("/v1/chat/completions", {"logprobs": True}), ("/v1/chat/completions", {"top_logprobs": 3}),
    ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
    ("/v1/chat/completions", {"tool_choice": "required"}), ("/v1/chat/completions", {"logit_bias": {"50256": -100}}),
    ("/v1/chat/completions", {"response_format": {"type": "json_object"}}),
    ("/v1/completions", {"echo": True}), ("/v1/completions", {"best_of": 3}), ("/v1/completions", {"suffix": "end"}),
    ("/v1/completions", {"logprobs": 5}),
])
def test_openai_fields_that_would_change_the_output_are_400_naming_them(served, users, path, change):
    body = chat_body() if path.endswith("chat/completions") else {"model": MODEL, "prompt": "hi", "preference": [0.5, 0.5]}
    r = served[0].post(path, json={**body, **change}, headers=users[0][0])
    field = next(iter(change))
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert "not supported" in r.json()["error"]["message"]


@pytest.mark.parametrize("raw, param", [
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "preference": [NaN, 1.0]}', "preference"),
    (b'{"model": "tiny", "messages": [', "body"),
    (b'[1, 2]', "body"),
    (b"\xff\xfe", "body"),
    (b"null", "body"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}], "preference": [0.5, 0.5]}',
     "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "preference": [0.5, 0.5], "temperature": NaN}',
     "temperature"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "preference": [0.5, 0.5], "seed": 1e30}', "seed"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "preference": [0.5, 0.5], '
     b'"seed": 100000000000000000000000, "temperature": 1}', "seed"),
])
def test_malformed_or_nan_json_is_400(served, users, raw, param):
    r = served[0].post("/v1/chat/completions", content=raw, headers={**users[0][0], "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("items, param", [
    ([], "items"), (["kept", ""], "items[1].text"), (["kept", {"text": "a", "metadata": {"x": float("nan")}}], "items[1].metadata"),
    (["kept", {"text": "a", "kind": "\ud800"}], "items[1].kind"), (["kept", {"text": "a", "colour": "red"}], "items[1].colour"),
])
def test_bad_history_is_400_and_appends_nothing(served, items, param):
    client, app, _ = served
    key = new_user(client)
    r = client.put("/v1/profile/history", content=json.dumps({"items": items}), headers={**key, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    user_id = app.state.store.authenticate(key["Authorization"].split()[1])
    assert app.state.store.history(user_id) == []  # not even the valid first item


def test_an_oversized_body_is_413(served, users):
    r = served[0].post("/v1/chat/completions", json=chat_body("x" * (2 << 20)), headers=users[0][0])
    assert r.status_code == 413 and r.json()["error"]["param"] == "body"


def tar_of(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for info, data in members:
            info.size = len(data) if data is not None else 0
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def corrupt_uploads(tmp_path) -> dict[str, tuple[bytes, str]]:
    """label -> (archive bytes, words the error message must contain)."""
    good = tarfile.open(fileobj=io.BytesIO(peft_archive(tmp_path, 7)))
    files = {m.name.split("/")[-1]: good.extractfile(m).read() for m in good if m.isreg()}
    cfg, weights = files["adapter_config.json"], files["adapter_model.safetensors"]
    zip_bin = io.BytesIO()
    with zipfile.ZipFile(zip_bin, "w") as z:
        z.writestr("adapter_config.json", cfg)
        z.writestr("adapter_model.bin", b"\x80\x04pickle")
    bomb, link = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("adapter_config.json", cfg)
        z.writestr("adapter_model.safetensors", b"\0" * (4 << 20))  # ~4 KiB packed, 4 MiB unpacked
    with zipfile.ZipFile(link, "w") as z:
        info = zipfile.ZipInfo("adapter_config.json")
        info.external_attr = 0o120777 << 16  # a symlink, as `zip --symlinks` stores it
        z.writestr(info, "/etc/passwd")
    return {
        "zip_bomb": (bomb.getvalue(), "unpacks to more than"),
        "zip_symlink": (link.getvalue(), "link"),
        "garbage": (b"this is not an archive", "not a tar"),
        "empty": (b"", "empty"),
        "truncated": (peft_archive(tmp_path, 8)[:300], "corrupt"),
        "traversal": (tar_of([(member("../adapter_config.json"), cfg), (member("adapter_model.safetensors"), weights)]), "'..'"),
        "absolute": (tar_of([(member("/etc/adapter_config.json"), cfg)]), "unsafe"),
        "symlink": (tar_of([(member("adapter_config.json", tarfile.SYMTYPE, "/etc/passwd"), None)]), "link"),
        "hardlink": (tar_of([(member("adapter_config.json", tarfile.LNKTYPE, "/etc/passwd"), None)]), "link"),
        "pickle_zip": (zip_bin.getvalue(), "adapter_model.bin"),
        "pickle_renamed": (tar_of([(member("adapter_config.json"), cfg),
                                   (member("adapter_model.safetensors"), b"\x80\x04pickle")]), "corrupt"),
        "no_weights": (tar_of([(member("adapter_config.json"), cfg)]), "missing"),
        "wrong_model": (peft_archive(tmp_path, 9, hidden_size=64, intermediate_size=128), "do not fit"),
        "bad_json": (tar_of([(member("adapter_config.json"), b"{nope"), (member("adapter_model.safetensors"), weights)]), "JSON"),
        "nested": (tar_of([(member("a/b/adapter_config.json"), cfg)]), "nested"),
        "too_big": (tar_of([(member("adapter_config.json"), cfg), (member("x.safetensors"), b"\0" * 300_000)]), "larger"),
    }


def test_corrupt_uploads_are_4xx_and_leave_nothing_behind(served, tmp_path):
    client, app, _ = served
    key = new_user(client)
    before = sorted(p.name for p in app.state.store.adapters_dir.iterdir())
    for label, (data, words) in corrupt_uploads(tmp_path).items():
        r = upload(client, key, data)
        assert r.status_code in (400, 413), (label, r.status_code, r.text)
        assert r.json()["error"]["param"] == "file" and words in r.json()["error"]["message"], (label, r.text)
    assert client.get("/v1/adapters", headers=key).json()["data"] == []
    assert sorted(p.name for p in app.state.store.adapters_dir.iterdir()) == before


def test_deleting_an_adapter_evicts_it_and_later_use_is_404(served, tmp_path):
    client, app, _ = served
    key = new_user(client)
    adapter = upload(client, key, peft_archive(tmp_path, 11)).json()["id"]
    assert client.post("/v1/chat/completions", json=chat_body(adapter=adapter), headers=key).status_code == 200
    assert adapter in app.state.host.resident_loras
    assert client.delete(f"/v1/adapters/{adapter}", headers=key).json()["deleted"] is True
    assert adapter not in app.state.host.resident_loras
    assert client.post("/v1/chat/completions", json=chat_body(adapter=adapter), headers=key).status_code == 404
    assert client.delete(f"/v1/adapters/{adapter}", headers=key).status_code == 404


def test_creating_users_needs_the_admin_key(served, users):
    client, app, _ = served
    assert client.post("/v1/users", headers=users[0][0]).status_code == 401
    assert client.post("/v1/users").status_code == 401
    no_admin = create_app(app.state.host, app.state.store, model_id=MODEL)  # PARSONA_ADMIN_KEY unset
    r = TestClient(no_admin).post("/v1/users", headers=ADMIN)
    assert r.status_code == 403 and "PARSONA_ADMIN_KEY" in r.json()["error"]["message"]
