"""Personas from stored history: embedded once, bounded, one user's vectors never another's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parsona.personalize import Personas
from parsona.persona import HistoryEncoder
from parsona.store import NotFound, Quotas, Store

TEXTS = ["the dog barks .", "call me monday", "the cat sleeps", "gas price"]


@pytest.fixture
def personas(tmp_path, tiny_encoder_dir):
    store = Store(tmp_path / "store", quotas=Quotas(max_history_items=100_000))
    yield Personas(store, HistoryEncoder(model=str(tiny_encoder_dir), progress=False), max_items=3)
    store.close()


def test_each_item_is_embedded_once_and_the_persona_pools_the_newest(personas):
    user, _ = personas.store.create_user()
    personas.store.add_history(user, TEXTS)
    assert personas.refresh(user) == 3 and personas.refresh(user) == 0          # the newest 3 (max_items), once
    profile = personas.profile(user)
    X = personas.encoder.transform(TEXTS[1:])                                     # what the newest 3 embed to
    mean = X.mean(0)
    np.testing.assert_allclose(profile.persona, mean / np.linalg.norm(mean), atol=1e-5)
    assert profile.history_count == 3 and profile.updated_at is not None
    personas.store.add_history(user, ["the dog sleeps"])
    assert personas.refresh(user) == 1                                            # only the new item


def test_a_user_without_history_has_no_persona_and_blank_items_are_skipped(personas):
    user, _ = personas.store.create_user()
    assert personas.profile(user).summary()["persona"] is False
    personas.store.add_history(user, ["   "])
    assert personas.refresh(user) == 0 and personas.profile(user).persona is None


def test_one_users_vectors_are_never_written_or_read_through_another(personas):
    alice, _ = personas.store.create_user()
    bob, _ = personas.store.create_user()
    [item] = personas.store.add_history(alice, ["the dog barks ."])
    assert personas.store.put_embeddings(bob, personas.encoder_key, [item], np.ones((1, 16))) == 0   # not bob's item
    assert personas.profile(bob).persona is None
    alice_profile = personas.profile(alice)
    personas.store.add_history(bob, ["gas price"])
    assert np.array_equal(personas.profile(alice).persona, alice_profile.persona)   # bob's history changes nothing
    with pytest.raises(NotFound):
        personas.profile("usr-" + "0" * 32)


def test_another_encoder_re_embeds_instead_of_mixing_spaces(personas, tiny_encoder_dir):
    user, _ = personas.store.create_user()
    personas.store.add_history(user, TEXTS[:2])
    personas.refresh(user)
    other = Personas(personas.store, HistoryEncoder(model=str(tiny_encoder_dir), max_length=8, progress=False))
    assert other.encoder_key != personas.encoder_key and other.refresh(user) == 2


def test_a_generated_lora_blends_the_experts_nearest_the_description(tmp_path, tiny_encoder_dir):
    from conftest import peft_lora_dir
    from parsona.adapters.generated_lora import blend_exact
    from parsona.adapters.peft_format import read_peft_lora
    from parsona.errors import ConfigError
    from parsona.personalize import describe, generate_lora

    encoder = HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="fp32").fit()
    experts = [read_peft_lora(peft_lora_dir(tmp_path / f"e{n}", seed=n, r=2)) for n in range(3)]
    descriptions = encoder.transform(["the dog barks .", "call me monday", "gas price"])
    query = describe(encoder, description="the dog sleeps")
    lora, info = generate_lora(experts, descriptions, query, k=2, tau=0.1)
    assert info["experts"][0] == int(np.argmax(descriptions @ query)) and len(info["experts"]) == 2
    expected = blend_exact([experts[i] for i in info["experts"]], info["weights"])
    for path, (A, B) in expected.factors.items():
        torch.testing.assert_close(lora.factors[path][1] @ lora.factors[path][0], B @ A)
    small, info = generate_lora(experts, descriptions, query, k=3, rank=2)
    assert small.rank == 2 and 0 < info["max_relative_error"] < 1
    np.testing.assert_allclose(describe(encoder, texts=["the dog barks ."] * 7), encoder.transform(["the dog barks ."])[0],
                               atol=1e-6)                                   # at most 5 texts, pooled
    for kwargs, field in ((dict(description="  "), "description"), (dict(), "description"), (dict(texts=[]), "texts")):
        with pytest.raises(ConfigError) as err:
            describe(encoder, **kwargs)
        assert err.value.field == field
