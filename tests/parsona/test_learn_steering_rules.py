"""The preference-agent recipe end to end on the tiny model: the large model's rules become (intent ->
rules) pairs, the small model's LoRA learns them with the loss on the rules alone, and the saved agent
serves them again through a host."""

from __future__ import annotations

import json

import pytest

from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.host import Host
from parsona.persona.agent import CRITIQUE, SUMMARISE
from parsona.recipes import learn_steering_rules as recipe
from parsona.recipes.train_user_lora import encode_pair
from parsona.store import Store
from parsona.writers import HostWriter

TEXTS = [f"Hi Jo,\nthe {w} numbers are in.\nAnn" for w in ("gas", "power", "oil", "coal", "wind", "sun")]


def scripted_large(cfg, host):
    def writer(chats):
        return ["- Keep it short." if c[-1]["content"].startswith(CRITIQUE.split("{")[0]) else "Send the numbers."
                for c in chats]
    return writer


def test_the_small_model_learns_to_write_the_rules_and_the_agent_reloads(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "large_writer", scripted_large)
    cfg = recipe.Config(model=tiny_dir, output_dir=str(tmp_path / "agent"), max_steps=60, learning_rate=1e-2,
                        max_new_tokens=24, batch_size=6)
    out = recipe.main(cfg, texts=TEXTS)
    assert sorted(p.name for p in out.iterdir()) == ["agent.json", "config.json", "small_lora"]
    assert (out / "small_lora" / "adapter_model.safetensors").is_file()
    state = json.loads((out / "agent.json").read_text())
    assert state["rules"] == ["Keep it short."] and "Ann" not in (out / "agent.json").read_text()
    model, tokenizer = load_base_model(tiny_dir)
    ask = [recipe.RulesAgent.rules_chat("Send the numbers.")]
    assert not HostWriter(Host(model, tokenizer), max_new_tokens=24)(ask)[0].startswith("- Keep")   # the base: noise
    agent = recipe.load(out, Host(model, tokenizer, loras={"agent": out / "small_lora"}), TEXTS)
    assert agent.small(ask)[0].startswith("- Keep it short.")            # learned
    assert agent.rules_for(["Send the numbers."]) == [["Keep it short."]]


def test_pairs_mask_the_prompt_and_refuse_a_prompt_longer_than_max_length(tiny_dir):
    _, tokenizer = load_base_model(tiny_dir)
    ids, labels = encode_pair(tokenizer, [5, 6, 7], "ab", max_length=16)
    assert ids[:3] == [5, 6, 7] and labels[:3] == [-100] * 3 and labels[3:] == ids[3:] and ids[-1] == tokenizer.eos_token_id
    with pytest.raises(ConfigError, match="max_length"):
        encode_pair(tokenizer, list(range(10)), "ab", max_length=10)


def test_no_usable_rule_is_an_error_and_writes_nothing(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "large_writer", lambda cfg, host: lambda chats: ["" for _ in chats])
    with pytest.raises(recipe.NoRules, match="texts"):
        recipe.main(recipe.Config(model=tiny_dir, output_dir=str(tmp_path / "agent"), max_steps=1), texts=TEXTS)
    assert not (tmp_path / "agent").exists()


def test_a_store_users_history_is_learned_from_and_its_intents_are_kept_for_the_next_run(tiny_dir, tmp_path, monkeypatch):
    chats = []

    def large(cfg, host):
        def writer(batch):
            chats.extend(batch)
            return scripted_large(cfg, host)(batch)
        writer.key = "scripted"                        # what the stored intents are kept under
        return writer

    monkeypatch.setattr(recipe, "large_writer", large)
    with Store(tmp_path / "store") as store:
        alice, _ = store.create_user()
        bob, _ = store.create_user()
        store.add_history(alice, TEXTS)
        store.add_history(bob, ["Bob-only text, never to be read for alice."] * 3)
    cfg = recipe.Config(model=tiny_dir, store=str(tmp_path / "store"), user_id=alice, put_rules=True,
                        output_dir=str(tmp_path / "agent"), max_steps=2, max_new_tokens=8, max_texts=len(TEXTS))
    summaries = lambda: sum(c[-1]["content"].startswith(SUMMARISE.split("{")[0]) for c in chats)
    recipe.main(cfg)
    assert summaries() == len(TEXTS) and len(chats) == 3 * len(TEXTS)           # intent, draft, rules per text
    assert not any("Bob-only" in c[-1]["content"] for c in chats)                 # only alice's history
    with Store(tmp_path / "store") as store:
        assert store.get_rules(alice)["rules"] == ["Keep it short."] and store.get_rules(alice)["source"] == "agent"
        assert store.get_rules(bob) is None
        store.add_history(alice, ["Hi Jo,\nthe hydro numbers are in.\nAnn"])
    chats.clear()
    recipe.main(cfg)
    # only the new text is summarised; the newest max_texts items are learned from (the oldest drops out)
    assert summaries() == 1 and len(chats) == 1 + 2 * len(TEXTS)
    assert "hydro" in chats[-1][-1]["content"] and not any(TEXTS[0] in c[-1]["content"] for c in chats)


def test_store_settings_are_checked_before_any_model_call(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "learn", lambda *a: pytest.fail("a model call before the checks"))
    with Store(tmp_path / "store") as store:
        user, _ = store.create_user()
        writer, _ = store.create_user()
        store.add_history(user, ["one text", "two texts"])
        store.add_history(writer, ["a", "b", "c"])
        store.put_rules(writer, ["Mine."])
    at = str(tmp_path / "store")
    for kwargs, field in (({"store": at}, "user_id"), ({"user_id": user}, "store"),
                          ({"texts": "a.txt", "store": "s", "user_id": user}, "store"), ({"put_rules": True}, "put_rules"),
                          ({"store": at, "user_id": "../../etc"}, "user_id")):
        with pytest.raises(ConfigError) as err:
            recipe.Config(**kwargs)
        assert err.value.field == field
    for cfg, field in ((recipe.Config(store=str(tmp_path / "nowhere"), user_id=user), "store"),   # not a new store
                       (recipe.Config(store=at, user_id="usr_" + "0" * 32), "user_id"),           # no such user
                       (recipe.Config(store=at, user_id=user), "user_id"),                        # 2 texts of 3
                       (recipe.Config(store=at, user_id=writer, put_rules=True), "put_rules")):   # their own rules
        with pytest.raises(ConfigError) as err:
            recipe.main(cfg)
        assert err.value.field == field
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError) as err:
        recipe.main(recipe.Config(store=at, user_id=writer), texts=["a", "b", "c"])
    assert err.value.field == "store"
    # each user's agent has its own folder by default
    assert recipe.Config(store=at, user_id=user).output_dir != recipe.Config(store=at, user_id=writer).output_dir


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="author"):
        recipe.Config(texts="a.txt", author="1")
    with pytest.raises(ConfigError, match="max_texts"):
        recipe.Config(max_texts=-1)
    with pytest.raises(ConfigError, match="endpoint"):
        recipe.Config(endpoint="ftp://x")
    with pytest.raises(ConfigError, match="learning_rate"):             # the LoRA's settings, before any model call
        recipe.Config(learning_rate=0)
