"""A real ``parsona serve`` process on 127.0.0.1, driven by the official ``openai`` client."""

from __future__ import annotations

import subprocess

import httpx
import openai
import pytest

from conftest import perturb, start_serve
from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
from parsona.base_model import save_tiny_model, tiny_causal_lm

ADMIN_KEY = "test-admin-key"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    model_dir = save_tiny_model(root / "tiny-model")
    pref = attach(tiny_causal_lm(vocab_size=259, pad_token_id=0), PreferenceLoRAConfig(rank=2))
    perturb(pref)
    save_adapter(pref, root / "pref")
    proc, base = start_serve(["--model", str(model_dir), "--preference-adapter", str(root / "pref"),
                              "--store", str(root / "store")], ADMIN_KEY)
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_official_openai_client_works_unchanged(server):
    created = httpx.post(f"{server}/v1/users", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=created["api_key"], max_retries=0)
    model = client.models.list().data[0].id
    assert model == "tiny-model"

    def ask(preference, adapter=None, **kwargs):
        extra = {"preference": preference, **({"adapter": adapter} if adapter else {})}
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello!"}],
                                              temperature=0, max_tokens=8, extra_body=extra, **kwargs)

    reply = ask([0.3, 0.7])
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens == 8
    assert ask([0.3, 0.7]).choices[0].message.content == reply.choices[0].message.content  # greedy: the same
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in ask([0.3, 0.7], stream=True) if chunk.choices)
    assert streamed == reply.choices[0].message.content
    text = client.completions.create(model=model, prompt="Once", max_tokens=4, temperature=0,
                                     extra_body={"preference": [1.0, 0.0]})
    assert text.choices[0].finish_reason in ("stop", "length")

    with pytest.raises(openai.BadRequestError) as err:
        ask([0.5, 0.6])
    assert err.value.body["param"] == "preference"
    with pytest.raises(openai.NotFoundError):
        ask([0.5, 0.5], adapter="adp_" + "0" * 32)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="psk_wrong", max_retries=0).models.list()
