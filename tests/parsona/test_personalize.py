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
