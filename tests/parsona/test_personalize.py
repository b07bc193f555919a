"""Personas and intents from stored history: derived once, bounded, one user's never another's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parsona.errors import ConfigError
from parsona.personalize import Intents, Personas
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


# ---- intents: one sentence per history item, written once by a writer ------------------------------

class Summariser:
    """A writer that answers a summary request with "Intent <n>: <first word of the email>" and counts calls."""

    key = "fake-writer"

    def __init__(self, reply=None):
        self.chats, self.reply = [], reply

    def __call__(self, chats):
        self.chats += chats
        emails = [c[0]["content"].split("Email:\n", 1)[1] for c in chats]
        return [self.reply if self.reply is not None else f"Intent: {e.split()[0]}" for e in emails]


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store") as s:
        yield s


def test_each_item_is_summarised_once_and_kept_beside_it(store):
    user, _ = store.create_user()
    store.add_history(user, ["dog barks", "  ", "cat sleeps", "gas price"])
    writer = Summariser()
    intents = Intents(store, writer, max_items=3)
    texts, sentences = intents.pairs(user)
    # the newest 3 items, oldest first; the blank one has nothing to summarise
    assert texts == ["cat sleeps", "gas price"] and sentences == ["Intent: cat", "Intent: gas"]
    assert len(writer.chats) == 2 and intents.refresh(user) == 0            # kept: no second call
    store.add_history(user, ["rain today"])
    assert intents.pairs(user) == (["cat sleeps", "gas price", "rain today"], ["Intent: cat", "Intent: gas", "Intent: rain"])
    assert len(writer.chats) == 3                                             # only the new item
    assert Intents(store, writer, max_items=2).pairs(user, refresh=False)[0] == ["gas price", "rain today"]
    with Store(store.root) as again:                                            # kept across restarts
        assert Intents(again, Summariser(), max_items=3).pairs(user, refresh=False)[1] == \
            ["Intent: cat", "Intent: gas", "Intent: rain"]


def test_an_empty_or_long_summary_falls_back_to_the_first_sentence(store):
    user, _ = store.create_user()
    store.add_history(user, ["Please send the file. Thanks, Jo"])
    assert Intents(store, Summariser(reply="")).pairs(user)[1] == ["Please send the file."]
    assert Intents(store, Summariser(reply="word " * 60), intent_words=20).pairs(user)[1] == ["Please send the file."]


def test_another_writer_or_setting_summarises_again_instead_of_mixing(store):
    user, _ = store.create_user()
    store.add_history(user, ["dog barks"])
    first = Intents(store, Summariser())
    first.refresh(user)
    for other in (Intents(store, Summariser(), key="another-model"), Intents(store, Summariser(), max_chars=100),
                  Intents(store, Summariser(), intent_words=10)):
        assert other.key != first.key and other.refresh(user) == 1


def test_one_users_intents_are_never_written_or_read_through_another(store):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    [item] = store.add_history(alice, ["dog barks"])
    intents = Intents(store, Summariser())
    assert store.put_intents(bob, intents.key, [item], ["Bob's intent"]) == 0     # not bob's item
    assert intents.pairs(bob) == ([], [])
    assert intents.pairs(alice) == (["dog barks"], ["Intent: dog"])
    store.add_history(bob, ["gas price"])
    intents.refresh(bob)
    assert intents.pairs(alice) == (["dog barks"], ["Intent: dog"])                # bob's items change nothing
    with pytest.raises(NotFound):
        intents.pairs("usr_" + "0" * 32)


def test_bad_intents_and_settings_name_their_field(store):
    user, _ = store.create_user()
    [item] = store.add_history(user, ["dog barks"])
    for bad in ([""], ["x" * 401], [3], ["a", "b"]):
        with pytest.raises(ConfigError) as err:
            store.put_intents(user, "w", [item], bad)
        assert err.value.field == "intents"
    with pytest.raises(ConfigError) as err:
        Intents(store, lambda chats: [])                                            # a bare callable has no key
    assert err.value.field == "key"
    with pytest.raises(ConfigError) as err:
        Intents(store, Summariser(), max_items=0)
    assert err.value.field == "max_items"
    with pytest.raises(ConfigError) as err:
        Intents(store, lambda chats: [], key="k").refresh(user)                      # no reply per chat
    assert err.value.field == "writer"


def test_summaries_are_kept_chunk_by_chunk_so_a_failing_writer_loses_one_chunk(store, monkeypatch):
    import parsona.personalize as personalize

    monkeypatch.setattr(personalize, "INTENT_CHUNK", 2)
    user, _ = store.create_user()
    store.add_history(user, [f"text {i}" for i in range(5)])
    calls = []

    def failing(chats):
        calls.append(len(chats))
        if len(calls) == 2:
            raise ConnectionError("endpoint down")
        return ["Intent." for _ in chats]

    with pytest.raises(ConnectionError):
        Intents(store, failing, key="w").refresh(user)
    assert calls == [2, 2] and len(store.history_intents(user, Intents(store, failing, key="w").key, 10)) == 2
    assert Intents(store, failing, key="w").refresh(user) == 3 and calls[2:] == [2, 1]   # only the rest is asked


def test_an_item_keeps_one_writers_intent_and_loses_it_with_the_item(store):
    user, _ = store.create_user()
    [item] = store.add_history(user, ["dog barks"])
    a, b = Intents(store, Summariser(), key="a"), Intents(store, Summariser(reply="B's."), key="b")
    a.refresh(user)
    b.refresh(user)
    assert a.pairs(user, refresh=False) == ([], []) and b.pairs(user, refresh=False)[1] == ["B's."]   # bounded
    with store._write() as conn:                          # no API deletes one item yet; the schema must still
        conn.execute("DELETE FROM history WHERE item_id = ?", (item,))
    assert store._conn().execute("SELECT COUNT(*) FROM history_intents").fetchone()[0] == 0
