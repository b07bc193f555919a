"""The persona prefix recipe on a tiny model and encoder: leave-one-out personas, it learns, it is saved
atomically and loads, a rerun with the same settings trains nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parsona.adapters import load_adapter
from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.persona import HistoryEncoder
from parsona.recipes.train_persona_prefix import Config, batch_loss, examples, leave_one_out_personas, main

USERS = {"alice": ["the dog barks .", "the dog sleeps", "the cat barks ."],
         "bob": ["call me monday", "gas price monday", "call me ."], "carol": ["only one text"]}


def write_users(path):
    path.write_text("".join(json.dumps({"user": u, "text": t}) + "\n" for u, ts in USERS.items() for t in ts))
    return str(path)


def test_a_texts_persona_is_pooled_from_its_users_other_texts_only(tiny_encoder_dir):
    encoder = HistoryEncoder(model=str(tiny_encoder_dir), progress=False).fit()
    texts, personas = leave_one_out_personas(encoder, {"u": ["the dog barks .", "call me monday"]}, tau=0.1)
    X = encoder.transform(texts)
    np.testing.assert_allclose(personas, X[::-1], atol=1e-6)               # two texts: each persona is the other one
    texts, _ = leave_one_out_personas(encoder, USERS, tau=0.1)
    assert "only one text" not in texts and len(texts) == 6                # a one-text user has no other to pool


def test_it_learns_saves_loads_and_a_rerun_trains_nothing(tiny_dir, tiny_encoder_dir, tmp_path, capsys):
    cfg = Config(model=tiny_dir, encoder=str(tiny_encoder_dir), texts=write_users(tmp_path / "users.jsonl"),
                 output_dir=str(tmp_path / "run"), hidden=16, max_steps=40, batch_size=6, max_length=32,
                 learning_rate=3e-2)
    out = main(cfg)
    assert json.loads((out / "training_summary.json").read_text())["texts"] == 6
    model, tokenizer = load_base_model(tiny_dir)
    adapter = load_adapter(model, out)
    assert adapter.config.persona_dim == 16
    texts, personas = leave_one_out_personas(HistoryEncoder(model=str(tiny_encoder_dir), progress=False).fit(), USERS, 0.1)
    ids, pad = examples(tokenizer, texts, cfg), tokenizer.pad_token_id
    with torch.no_grad():
        trained = batch_loss(model, adapter, ids, torch.from_numpy(personas), pad, cfg)
        with adapter.disabled():                                            # the untrained prefix is the base
            base = model(input_ids=torch.tensor([i + [pad] * (32 - len(i)) for i in ids]),
                         attention_mask=torch.tensor([[1] * len(i) + [0] * (32 - len(i)) for i in ids]),
                         labels=torch.tensor([[-100] + i[1:] + [-100] * (32 - len(i)) for i in ids])).loss
    assert trained < base - 0.02          # it fits the texts (one soft token moves a random tiny LM ~0.04 nats)
    stamp = (out / "adapter.safetensors").stat().st_mtime_ns
    assert main(cfg) == out and "already trained" in capsys.readouterr().out
    assert (out / "adapter.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob("run/.*"))                                # no temp folder left


@pytest.mark.parametrize("fields, field", [(dict(), "texts"), (dict(texts="a.jsonl", enron_min_emails=30), "texts"),
                                           (dict(texts="a.jsonl", max_length=1), "max_length"),
                                           (dict(texts="a.jsonl", tau=0.0), "tau")])
def test_bad_config_names_the_field(fields, field):
    with pytest.raises(ConfigError) as err:
        Config(**fields)
    assert err.value.field == field


def test_a_malformed_line_is_named(tmp_path, tiny_encoder_dir):
    (tmp_path / "users.jsonl").write_text('{"user": "a", "text": "hi"}\n["not", "an", "object"]\n')
    with pytest.raises(ConfigError) as err:
        main(Config(encoder=str(tiny_encoder_dir), texts=str(tmp_path / "users.jsonl"), output_dir=str(tmp_path / "r")))
    assert err.value.field.endswith("users.jsonl:2")


def test_the_command_line_trains_it(tiny_dir, tiny_encoder_dir, tmp_path, capsys):
    from parsona.cli import main as cli

    assert cli(["train", "persona-prefix", "--model", tiny_dir, "--encoder", str(tiny_encoder_dir), "--texts",
                write_users(tmp_path / "users.jsonl"), "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
                "--hidden", "8", "--max-length", "32"]) == 0
    assert f"persona prefix: {tmp_path / 'run' / 'adapter'}" in capsys.readouterr().out
    assert cli(["train", "persona-prefix", "--output-dir", str(tmp_path / "x")]) == 2        # no texts: a clear error
