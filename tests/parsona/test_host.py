"""Host: one batched decode where every row has its own preference, user LoRA and sampling."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import peft_lora_dir, perturb, tiny_tokenizer
from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.host import Host, Request
from parsona.store import NotFound, Store

VOCAB = 259  # the byte-level tiny tokenizer's size


def tiny_lm():
    return tiny_causal_lm(vocab_size=VOCAB, pad_token_id=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core box thread hand-offs dominate."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A host on a tiny model with a perturbed preference LoRA, and three users with one LoRA each."""
    root = tmp_path_factory.mktemp("host")
    store = Store(root / "store")
    model = tiny_lm()
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    users = []
    for i in range(3):
        user_id, _ = store.create_user()
        adapter_id = store.put_adapter(user_id, peft_lora_dir(root / f"lora{i}", seed=i, r=2 + i), "lora", f"u{i}")
        users.append((user_id, adapter_id))
    host = Host(model, tiny_tokenizer(), store, pref, max_resident_loras=3)
    host.preference = pref
    yield host, store, users
    store.close()


def mixed_requests(users, n=8):
    prompts = ["hello", "a longer prompt here", "x", "how are you?", "zz top", "the cat sat", "q", "one two three"]
    return [Request(prompt=prompts[i % len(prompts)], user_id=users[i % 3][0], max_new_tokens=10,
                    conditioning={"preference": [i / (n - 1), 1 - i / (n - 1)],
                                  "adapter": users[i % 3][1] if i % 4 != 3 else None})
            for i in range(n)]


def at(preference, **kw) -> Request:
    """A request conditioned on ``preference`` only."""
    return Request(conditioning={"preference": preference}, **kw)


def test_mixed_batch_equals_each_request_alone(world):
    host, _, users = world
    requests = mixed_requests(users)
    batch = host.generate(requests)
    alone = [host.generate([r])[0] for r in requests]
    assert [c.text for c in batch] == [c.text for c in alone]
    assert [c.completion_tokens for c in batch] == [c.completion_tokens for c in alone]
    # ...and the conditioning mattered: the same prompt without the user's LoRA, or at another λ, differs
    no_lora = host.generate([at(r.conditioning["preference"], prompt=r.prompt, max_new_tokens=10) for r in requests])
    assert sum(a.text != b.text for a, b in zip(batch, no_lora)) >= 3
    flipped = host.generate([at(p, prompt="hello", max_new_tokens=10) for p in ([1, 0], [0, 1])])
    assert flipped[0].text != flipped[1].text


def test_lru_keeps_at_most_max_resident_loras_and_splits_big_batches(world, tmp_path):
    host, store, users = world
    model = tiny_lm()
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    pref.load_state_dict(host.preference.state_dict())
    small = Host(model, tiny_tokenizer(), store, pref, max_resident_loras=2)
    requests = mixed_requests(users)
    got = small.generate(requests)
    assert len(small.resident_loras) <= 2
    assert [c.text for c in got] == [c.text for c in host.generate(requests)]


def test_seeded_sampling_is_the_same_alone_or_in_any_batch(world):
    host, _, users = world
    sampled = at([0.3, 0.7], prompt="hello", temperature=1.0, top_p=0.9, seed=7, max_new_tokens=12)
    others = [at([0.5, 0.5], prompt="noise", temperature=1.5, seed=s, max_new_tokens=5) for s in range(3)]
    alone = host.generate([sampled])[0].text
    assert host.generate([others[0], sampled, *others[1:]])[1].text == alone
    different = {host.generate([Request(**{**sampled.__dict__, "seed": s})])[0].text for s in range(4)}
    assert len(different) > 1


def test_stop_strings_end_the_text_and_are_left_out(world):
    host, _, _ = world
    request = at([0.5, 0.5], prompt="the cat sat", max_new_tokens=16)
    full = host.generate([request])[0]
    stop = full.text[4:6]
    cut = host.generate([Request(**{**request.__dict__, "stop": [stop]})])[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert full.finish_reason == "length" and full.completion_tokens == 16


def test_streamed_pieces_add_up_to_the_text(world):
    host, _, _ = world
    pieces: dict[int, list[str]] = {0: [], 1: []}
    requests = [at([0.2, 0.8], prompt="hi", temperature=1.0, seed=1, max_new_tokens=20),
                at([0.9, 0.1], prompt="hello", max_new_tokens=20, stop=["zz"])]
    done = host.generate(requests, on_delta=lambda i, text: pieces[i].append(text))
    assert ["".join(pieces[i]) for i in (0, 1)] == [c.text for c in done]


def test_chat_messages_use_a_plain_layout_without_a_chat_template(world):
    host, _, _ = world
    chat = host.generate([at([0.5, 0.5], messages=[{"role": "user", "content": "hi"}], max_new_tokens=4)])
    raw = host.generate([at([0.5, 0.5], prompt="user: hi\nassistant:", max_new_tokens=4)])
    assert chat[0].text == raw[0].text


@pytest.mark.parametrize("preference, problem", [
    (None, "missing"), ([1.0], "shape"), ([0.5, 0.5, 0.0], "shape"), ([math.nan, 1.0], "NaN"),
    ([-0.5, 1.5], "negative"), ([0.2, 0.2], "sum"),
])
def test_bad_preferences_name_the_field(world, preference, problem):
    host, _, _ = world
    with pytest.raises(ConfigError, match=problem) as err:
        host.generate([at(preference, prompt="hi")])
    assert err.value.field == "preference"


def test_default_preference_only_when_given_and_never_without_an_adapter(world):
    host, store, _ = world
    without = Host(tiny_lm(), tiny_tokenizer(), store)
    with pytest.raises(ConfigError, match="no adapter on this host takes it") as err:
        without.generate([at([0.5, 0.5], prompt="hi")])
    assert err.value.field == "preference"
    with pytest.raises(ConfigError, match="no default") as err:
        host.generate([Request(prompt="hi")])
    assert err.value.field == "preference"
    pref_model = tiny_lm()
    pref = attach(pref_model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    defaulted = Host(pref_model, tiny_tokenizer(), store, pref, defaults={"preference": [0.25, 0.75]})
    implicit = defaulted.generate([Request(prompt="hi", max_new_tokens=6)])[0].text
    assert implicit == defaulted.generate([at([0.25, 0.75], prompt="hi", max_new_tokens=6)])[0].text
    # the default really is used: another λ answers differently
    assert implicit != defaulted.generate([at([1.0, 0.0], prompt="hi", max_new_tokens=6)])[0].text


def test_someone_elses_or_malformed_adapter_is_not_found(world):
    host, _, users = world
    (alice, alice_lora), (bob, _) = users[0], users[1]
    for user_id, adapter_id in [(bob, alice_lora), (alice, "../" + alice_lora), (alice, "adp_" + "0" * 32), (None, alice_lora)]:
        with pytest.raises(NotFound) as err:
            host.generate([Request(prompt="hi", user_id=user_id, conditioning={"preference": [0.5, 0.5], "adapter": adapter_id})])
        assert err.value.field == "adapter"


@pytest.mark.parametrize("changes, field", [
    ({"prompt": "x" * 3000}, "prompt"), ({"max_new_tokens": 0}, "max_tokens"), ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"prompt": ""}, "prompt"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "prompt"),
])
def test_bad_requests_name_the_field(world, changes, field):
    host, _, _ = world
    request = at([0.5, 0.5], **{"prompt": "hi", **changes})
    with pytest.raises(ConfigError) as err:
        host.generate([request])
    assert err.value.field == field


def test_a_deleted_lora_fails_only_its_own_row(world, tmp_path):
    host, store, _ = world
    user_id, _ = store.create_user()
    adapter_id = store.put_adapter(user_id, peft_lora_dir(tmp_path / "gone", seed=9), "lora", "gone")
    rows = [host.prepare(Request(prompt="hi", user_id=user_id, conditioning={"preference": [0.5, 0.5], "adapter": adapter_id})),
            host.prepare(at([0.5, 0.5], prompt="hi"))]
    store.delete_adapter(user_id, adapter_id)
    host.evict(adapter_id)
    results = host.run(rows)
    assert isinstance(results[0], NotFound) and results[1].text
    assert adapter_id not in host.resident_loras
