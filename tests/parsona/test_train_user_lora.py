"""The per-user LoRA recipe on a tiny model: it learns the texts, writes a loadable PEFT LoRA, is
seeded, and leaves a model it is given (and the global RNG) as it found them."""

from __future__ import annotations

import pytest
import torch

from parsona.adapters import LoRAConfig, attach
from parsona.adapters.peft_format import read_peft_lora
from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.recipes.train_user_lora import Config, main, run

TEXT = "I love short answers. Tea over coffee, always."


def test_trains_a_peft_lora_from_a_text_file(tiny_dir, tmp_path):
    (tmp_path / "texts.txt").write_text(f"{TEXT}\n\n")          # one text: every step sees the same batch
    losses = []
    out = main(Config(model=tiny_dir, texts=str(tmp_path / "texts.txt"), output_dir=str(tmp_path / "lora"),
                      rank=2, alpha=4.0, max_steps=5, learning_rate=1e-2),
               progress=lambda step, steps, loss: losses.append((step, steps, loss)))
    assert [(s, n) for s, n, _ in losses] == [(i, 5) for i in range(1, 6)]
    assert losses[-1][2] < losses[0][2] - 1e-3                   # it fits the text
    lora = read_peft_lora(out)
    assert (lora.rank, lora.alpha) == (2, 4.0) and any(B.abs().sum() > 0 for _, B in lora.factors.values())

    model, tokenizer = load_base_model(tiny_dir)                 # a bank serves it like any user's LoRA
    bank = attach(model, LoRAConfig(rank=2))
    bank.add("user", out)
    ids = tokenizer([TEXT], return_tensors="pt").input_ids
    with torch.no_grad():
        with bank.inputs(adapter=[None]):
            base = model(ids).logits
        with bank.inputs(adapter=["user"]):
            tuned = model(ids).logits
    assert (tuned - base).abs().max() > 1e-4


def test_a_given_model_is_left_as_found_and_a_rerun_is_identical(tiny_dir, tmp_path):
    model, tokenizer = load_base_model(tiny_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    outs = [run({"output_dir": str(tmp_path / name), "rank": 2, "max_steps": 2, "batch_size": 2},
                model=model, tokenizer=tokenizer, texts=["one text", "another, longer text"])
            for name in ("a", "b")]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(torch.get_rng_state(), rng)              # the seeded init did not reseed the caller
    a, b = (read_peft_lora(o) for o in outs)
    for path in a.factors:
        for x, y in zip(a.factors[path], b.factors[path]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("bad, field", [(dict(rank=0), "rank"), (dict(max_steps=0), "max_steps"),
                                        (dict(learning_rate=0.0), "learning_rate")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        Config(**bad)
    assert err.value.field == field


def test_missing_or_empty_texts_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        main(Config(texts=str(tmp_path / "missing.txt")))
    assert err.value.field == "texts"
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ConfigError) as err:
        main(Config(texts=str(tmp_path / "empty.txt")))
    assert err.value.field == "texts"


def test_an_enron_author_trains_from_their_own_train_emails(tiny_dir, tmp_path, capsys):
    import json

    from parsona.cli import main as cli
    from parsona.data.paths import data_file
    from parsona.recipes.train_user_lora import author_texts

    rows = [json.loads(line) for line in data_file("pan11-enron-authorship", "pan11_small.jsonl").open()]
    mine = [r["text"] for r in rows if r["split"] == "train" and r["author_id"] == rows[0]["author_id"]]
    assert author_texts(rows[0]["author_id"]) == mine                # that author's train emails, in file order
    out = tmp_path / "lora"
    assert cli(["train", "user-lora", "--model", tiny_dir, "--author", rows[0]["author_id"], "--output-dir", str(out),
                "--max-steps", "1", "--rank", "2"]) == 0
    assert (out / "adapter_model.safetensors").is_file() and f"LoRA: {out}" in capsys.readouterr().out


def test_an_unknown_author_or_two_sources_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as err:
        main(Config(author="nobody"))
    assert err.value.field == "author" and "e.g." in str(err.value)
    with pytest.raises(ConfigError) as err:
        Config(author="965226", texts="notes.txt")
    assert err.value.field == "author"


def test_loras_for_many_users_are_reused_only_with_the_same_settings_and_texts(tiny_dir, tmp_path):
    from parsona.recipes.train_user_lora import train_for_users

    settings = dict(model=tiny_dir, rank=2, alpha=4.0, max_steps=1, max_length=16)
    users = {"ann": ["tea please", "short answers"], "ben": ["coffee"]}
    dirs = train_for_users(settings, users, tmp_path)
    stamps = {u: (d / "adapter_model.safetensors").stat().st_mtime_ns for u, d in dirs.items()}
    assert train_for_users(settings, users, tmp_path) == dirs                      # reused, not retrained
    assert {u: (d / "adapter_model.safetensors").stat().st_mtime_ns for u, d in dirs.items()} == stamps
    changed = train_for_users(settings, {**users, "ben": ["coffee", "black"]}, tmp_path)
    assert changed["ann"] == dirs["ann"] and changed["ben"] != dirs["ben"]          # new texts: a new LoRA
    assert train_for_users({**settings, "rank": 4}, users, tmp_path)["ann"] != dirs["ann"]


def test_two_processes_share_the_users_and_one_trains_what_the_other_claimed_but_never_wrote(tiny_dir, tmp_path,
                                                                                              capsys):
    """A claim is an flock: another open file description (here the test's) conflicts as a second process
    would. The trainer skips the claimed user, trains the others, then waits for the claim."""
    import threading
    import time

    from parsona.recipes.train_user_lora import claim_lora, lora_key, train_for_users

    settings = dict(model=tiny_dir, rank=2, alpha=4.0, max_steps=1, max_length=16)
    users = {"ann": ["tea please", "short answers"], "ben": ["coffee"], "cai": ["milk"]}
    ben = tmp_path / lora_key(settings, users["ben"], None) / "ben"
    done = {}
    with claim_lora(ben, wait=False) as mine:                                        # "another process" holds ben
        assert mine
        worker = threading.Thread(target=lambda: done.update(train_for_users(settings, users, tmp_path)))
        worker.start()
        for _ in range(600):                                                      # ann and cai first, then a wait
            if all((tmp_path / lora_key(settings, users[u], None) / u / "adapter_model.safetensors").is_file()
                   for u in ("ann", "cai")):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert worker.is_alive() and not ben.exists()                              # waiting, ben not trained twice
    worker.join(60)                                                               # released without writing ben:
    printed = capsys.readouterr().out
    assert "LoRA 2/3: ben" not in printed and "ben: its other trainer stopped" in printed
    assert (done["ben"] / "adapter_model.safetensors").is_file() and done["ben"] == ben
    assert train_for_users(settings, users, tmp_path) == done                      # all three reused


def test_early_stopping_keeps_the_step_with_the_lowest_held_out_nll(tiny_dir, tmp_path, capsys):
    """Texts unlike the held-out ones: training wanders on the held-out texts. The LoRA written is the
    reported best step's (its NLL, recomputed, is the one printed), a step inside the run, better than both
    the base and the last step's (the same seeded run without checks); where no step beats the base, the
    LoRA written is step 0's: B = 0, the base itself."""
    import re

    from parsona.logprobs import lora_nll
    from parsona.recipes.train_user_lora import encode

    model, tokenizer = load_base_model(tiny_dir)
    train, held = ["zzzz qqqq zzzz qqqq"] * 3, ["The cat sat on the mat.", "A dog ran in the park."]
    examples = [encode(tokenizer, t, 128) for t in held]

    def nll(lora_dir=None) -> float:
        bank = attach(model, LoRAConfig(rank=2))
        try:
            if lora_dir is not None:
                bank.add("u", lora_dir)
            return lora_nll(model, bank, "u" if lora_dir is not None else None, examples, tokenizer.pad_token_id, 2)
        finally:
            bank.detach()

    def run_with(lr, **checks):
        cfg = Config(rank=2, max_steps=6, batch_size=3, learning_rate=lr, output_dir=str(tmp_path / f"{lr}{checks}"), **checks)
        return main(cfg, model=model, tokenizer=tokenizer, texts=train, eval_texts=held)

    kept, last = run_with(0.1, eval_every=2), run_with(0.1)
    reported = re.search(r"(\d+\.\d+) at step (\d+) \(kept\)", capsys.readouterr().out)
    assert reported and 0 < int(reported[2]) < 6
    assert nll(kept) == pytest.approx(float(reported[1]), abs=1e-4)
    assert nll(kept) < nll(last) and nll(kept) < nll()
    assert all(B.abs().sum() == 0 for _, B in read_peft_lora(run_with(1e-2, eval_every=2)).factors.values())


def test_too_few_texts_to_hold_out_name_the_field(tiny_dir, tmp_path):
    with pytest.raises(ConfigError) as err:
        main(Config(model=tiny_dir, eval_every=2, output_dir=str(tmp_path / "x")), texts=["only one text"])
    assert err.value.field == "eval_fraction"


def test_a_lora_started_from_another_begins_at_its_weights(tiny_dir, tmp_path):
    """Held-out texts that the starting LoRA learned, training texts unlike them: no step beats step 0, so
    the LoRA kept is the starting one, weight for weight."""
    model, tokenizer = load_base_model(tiny_dir)
    shared = ["The cat sat on the mat.", "A dog ran in the park."]
    common = dict(rank=2, alpha=4.0, batch_size=2)
    start = main(Config(**common, max_steps=8, learning_rate=1e-2, output_dir=str(tmp_path / "start")),
                 model=model, tokenizer=tokenizer, texts=shared)
    user = main(Config(**common, max_steps=4, learning_rate=0.1, eval_every=1, init_from=str(start),
                       output_dir=str(tmp_path / "user")), model=model, tokenizer=tokenizer,
                texts=["zzzz qqqq zzzz qqqq"] * 2, eval_texts=shared)
    a, b = read_peft_lora(start), read_peft_lora(user)
    assert any(B.abs().sum() > 0 for _, B in a.factors.values())
    for path in a.factors:
        for x, y in zip(a.factors[path], b.factors[path]):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_a_start_of_another_shape_or_no_lora_names_init_from(tiny_dir, tmp_path):
    model, tokenizer = load_base_model(tiny_dir)
    start = main(Config(rank=2, alpha=4.0, max_steps=1, output_dir=str(tmp_path / "start")), model=model,
                 tokenizer=tokenizer, texts=["a text"])
    for bad in (dict(rank=4, alpha=4.0, init_from=str(start)), dict(init_from=str(tmp_path / "nothing"))):
        with pytest.raises(ConfigError) as err:
            main(Config(**bad, output_dir=str(tmp_path / "x")), model=model, tokenizer=tokenizer, texts=["a text"])
        assert err.value.field == "init_from"
    with pytest.raises(ConfigError) as err:
        main(Config(eval_every=1, output_dir=str(tmp_path / "x")), model=model, tokenizer=tokenizer, texts=["a"], eval_texts=[])
    assert err.value.field == "eval_texts"
    with pytest.raises(ConfigError) as err:
        main(Config(eval_every=1, output_dir=str(tmp_path / "x")), model=model, tokenizer=tokenizer, pairs=[([1, 5], "hi")])
    assert err.value.field == "eval_every"
