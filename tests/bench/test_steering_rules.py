"""bench/steering_rules.py end to end on a tiny model: every condition and the author × rules matrix are
scored by the judge, the mined condition adds exactly the rendered rules' tokens, nothing is quoted long."""

from __future__ import annotations


from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def scripted_large(cfg, host):
    """The tiny model writes only punctuation, so no rule: the large model here critiques by script."""
    return lambda chats: ["- Keep it short." if "Email B" in c[-1]["content"] else "Hi." for c in chats]


def test_it_scores_every_condition_and_the_matrix(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("parsona.recipes.learn_steering_rules.large_writer", scripted_large)
    bench = load_bench("steering_rules")
    r = run_recipe(bench.Config, bench.main, ["--model", tiny_dir, "--authors", "4", "--intents-per-author", "2",
                                              "--max-new-tokens", "3", "--population", "200", "--matrix-authors", "3",
                                              "--agent-texts", "4", "--agent-steps", "2",
                                              "--agent-max-new-tokens", "24", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "mined_minus_zero_shot" in printed and "the diagonal wins" in printed and "agent_minus_few_shot" in printed
    assert set(r["conditions"]) == {"zero_shot", "few_shot", "mined", "agent"} and len(r["matrix"]) == 3
    trained = [a for a in r["authors"] if a not in r["authors_without_agent"]]
    assert trained and all(len(r["agent_rules"][a]) == 2 for a in r["authors"])
    assert trained == r["authors"] and all(rules == [["Keep it short."]] * 2 for rules in r["agent_rules"].values())
    assert r["conditions"]["agent"]["tokens_added"]["mean"] > 0
    assert set(r["intents_ruled_by_the_small_model"]) == set(r["authors"]) and "ruled by the small model" in printed
    assert all(list((tmp_path / "agents").glob(f"*/{a}/small_lora/adapter_model.safetensors")) for a in trained)
    assert r["conditions"]["zero_shot"]["tokens_added"]["mean"] == 0
    assert r["conditions"]["few_shot"]["tokens_added"]["mean"] > 0
    assert all(0 <= v <= 1 for row in r["matrix"] for v in row)
    assert 0 < r["judge_accuracy_on_real_test_emails"] <= 1 and all(r["rules"][a] for a in r["authors"])
    assert (tmp_path / "results-rules.json").is_file()
    again = run_recipe(bench.Config, bench.main, ["--model", tiny_dir, "--authors", "4", "--intents-per-author", "2",
                                                  "--max-new-tokens", "3", "--population", "200", "--matrix-authors", "3",
                                                  "--agent-texts", "4", "--agent-steps", "2",
                                                  "--agent-max-new-tokens", "24", "--output-dir", str(tmp_path)])
    assert "agent 1/" not in capsys.readouterr().out and again["agent_rules"] == r["agent_rules"]   # reused


def test_an_intent_is_the_first_sentence_cut_to_its_words():
    bench = load_bench("steering_rules")
    assert bench.intent_of("Call me  on\nMonday. Then we talk!", 25) == "Call me on Monday."
    assert bench.intent_of("one two three four", 2) == "one two"
