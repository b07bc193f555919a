"""Writers: the host's model and an OpenAI-compatible endpoint (here, parsona's own server) give a learner
the same replies for the same chats; a wrong URL, key or reply is an error naming ``base_url``."""

from __future__ import annotations

import pytest

from conftest import stored_host
from parsona.errors import ConfigError
from parsona.host import Request
from parsona.writers import EndpointWriter, HostWriter

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from parsona.serve.app import create_app  # noqa: E402

CHATS = [[{"role": "user", "content": "the dog"}], [{"role": "user", "content": "a cat sat"}],
         [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]]


@pytest.fixture
def world(tmp_path):
    host, store = stored_host(tmp_path, defaults={"preference": [0.3, 0.7]})
    _, key = store.create_user()
    with TestClient(create_app(host, store, model_id="tiny", batch_wait_s=0.0)) as client:
        yield host, client, key
    store.close()


def test_host_writer_replies_are_the_hosts_greedy_replies_in_batches(world):
    host, _, _ = world
    direct = [c.text for c in host.generate([Request(messages=m, max_new_tokens=5, conditioning={"preference": [1.0, 0.0]})
                                             for m in CHATS])]
    assert HostWriter(host, max_new_tokens=5, conditioning={"preference": [1.0, 0.0]}, batch_size=2)(CHATS) == direct
    assert HostWriter(host, max_new_tokens=5)(CHATS) != direct          # the row's conditioning is used


def test_an_openai_compatible_endpoint_gives_the_same_replies(world):
    host, client, key = world
    endpoint = EndpointWriter("http://testserver/v1", model="tiny", api_key=key, max_tokens=5, client=client)
    assert endpoint(CHATS) == HostWriter(host, max_new_tokens=5)(CHATS)


def test_endpoint_errors_name_the_setting_and_never_echo_the_request(world):
    _, client, key = world
    with pytest.raises(ConfigError, match="api_key") as err:
        EndpointWriter("http://testserver/v1", api_key="wrong", client=client)(CHATS[:1])
    assert "401" in str(err.value)
    with pytest.raises(ConfigError, match="base_url") as err:
        EndpointWriter("http://testserver/nothing", api_key=key, client=client)(CHATS[:1])
    assert "404" in str(err.value)
    secret = [[{"role": "user", "content": "my bank pin is 4242"}]]
    with pytest.raises(ConfigError, match="base_url") as err:                    # a 4xx body may echo its input
        EndpointWriter("http://testserver/v1", api_key=key, max_tokens=-5, client=client)(secret)
    assert "status 4" in str(err.value) and "4242" not in str(err.value)
    with pytest.raises(ConfigError, match="base_url"):
        EndpointWriter("localhost:8000")
    with pytest.raises(ConfigError, match="base_url"):                  # nothing listens there
        EndpointWriter("http://127.0.0.1:9/v1", timeout=2)(CHATS[:1])


def test_a_writers_key_changes_with_what_decides_its_replies_and_never_holds_the_api_key(world):
    host = world[0]
    keys = {HostWriter(host).key, HostWriter(host, max_new_tokens=8).key,
            HostWriter(host, conditioning={"adapter": "x"}).key, HostWriter(host, temperature=0.5).key}
    assert len(keys) == 4 and HostWriter(host).key == HostWriter(host, batch_size=2).key   # batching decides nothing
    a = EndpointWriter("http://h/v1", model="m", api_key="sk-secret")
    assert "sk-secret" not in a.key and a.key == EndpointWriter("http://h/v1", model="m").key
    assert len({a.key, EndpointWriter("http://h/v1", model="n").key, EndpointWriter("http://g/v1", model="m").key,
                EndpointWriter("http://h:81/v1", model="m").key, EndpointWriter("http://h/v2", model="m").key}) == 5
    secret = EndpointWriter("https://me:pw-secret@h/v1?key=q-secret", model="m").key
    assert "secret" not in secret and secret == EndpointWriter("https://h/v1", model="m").key
