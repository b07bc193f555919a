"""The preference agent's learner (persona.RulesAgent) with scripted writers: what it asks the large model,
what it keeps from the replies, and that it never passes on a long run of the user's words."""

from __future__ import annotations

import json

import pytest

from parsona.errors import ConfigError
from parsona.persona.agent import CRITIQUE, RULES_ASK, SUMMARISE, QuoteGuard, RulesAgent, intent_of, parse_rules
from parsona.persona.rules import HEADER

SECRET = "the falcon lands at noon behind the old mill"
TEXTS = [f"Hi Tom,\nPlease send the {w} report by Friday.\nThanks,\nAnn" for w in ("sales", "budget", "trading", "gas")]


def scripted(replies_for):
    """A writer whose reply to a chat is ``replies_for(content)``; it records every chat it got."""
    def writer(chats):
        writer.seen += chats
        return [replies_for(chat[-1]["content"]) for chat in chats]
    writer.seen = []
    return writer


def large_reply(content: str) -> str:
    if content.startswith(SUMMARISE.split("{")[0]):
        return "Ask Tom for a report by Friday."
    if content.startswith(CRITIQUE.split("{")[0]):
        rules = ["- Open with 'Hi' and the first name.", "- Keep it under 30 words."]
        if "budget" in content:
            rules.append("- Mention " + SECRET + ".")             # a long quote of the user: must be dropped
        if "gas" in content:
            rules = ["- Keep it under 30 words.", "- Sign off with 'Thanks,'."]
        return "Here are the rules:\n" + "\n".join(rules)
    return "Dear Tom, I hope this finds you well. Kindly send the report."   # the zero-shot draft


def test_parse_rules_takes_bulleted_lines_only_without_headers_echoes_or_duplicates():
    assert parse_rules("Rules:\n- Be brief.\n* Be brief.\n2) Use 'Thx'.\nsome prose") == ["Be brief.", "Use 'Thx'."]
    assert parse_rules("Be brief.\n\nNo greeting.") == []                      # prose is not a rule
    assert parse_rules("1. **Greet** with `Hi`.") == ["Greet with Hi."]
    assert parse_rules("- Draft: Dear Tom,\n- Steps:\n- " + "x" * 400 + "\n- " + "w " * 30 + "\n- ok.") == ["ok."]
    assert intent_of("Please call me.  Then the rest.", 2) == "Please call"


def test_quote_guard_refuses_rare_or_long_runs_of_the_users_words():
    habit = "as per our talk"
    texts = [f"Hello. {SECRET.capitalize()}!"] + [f"{habit.capitalize()}, item {n}." for n in range(3)]
    guard = QuoteGuard(texts, max_words=3)
    assert not guard.allows("Say 'the falcon lands'.")                 # 3 words from one text: a quote
    assert guard.allows("Say 'as per our'.") and guard.allows("Write 'per our talk'.")   # 3, in 3 texts: a habit
    assert not guard.allows("Say As Per Our Talk.")                    # 4: too long, whatever the case
    assert guard.allows("the falcon, then noon")                      # pairs and single words are not quotes
    assert not QuoteGuard(["Встреча в пятницу утром"], 3).allows("Пишите: встреча в пятницу.")   # any script
    with pytest.raises(ConfigError, match="max_quote_words"):
        QuoteGuard([], 0)


def test_fit_asks_the_large_model_three_things_per_text_and_keeps_only_quote_free_rules():
    large = scripted(large_reply)
    agent = RulesAgent(large).fit(TEXTS + [f"Hi Tom,\n{SECRET}.\nAnn"])
    assert len(large.seen) == 3 * 5
    assert agent.intents_ == ["Ask Tom for a report by Friday."] * 5
    assert agent.drafts_[0].startswith("Dear Tom")
    assert all(SECRET not in r for rules in agent.deltas_ for r in rules)
    assert agent.deltas_[1] == ["Open with 'Hi' and the first name.", "Keep it under 30 words."]
    # the rules that recur over the texts first: 30 words (5 texts), greeting (4), sign-off (1)
    assert agent.rules_ == ["Keep it under 30 words.", "Open with 'Hi' and the first name.", "Sign off with 'Thanks,'."]
    chat, target = agent.examples_[0]
    assert chat == [{"role": "user", "content": RULES_ASK.format(intent=agent.intents_[0])}]
    assert target == "- Open with 'Hi' and the first name.\n- Keep it under 30 words."


def test_intents_fall_back_to_the_texts_first_sentence_when_the_summary_is_empty_or_long():
    agent = RulesAgent(scripted(lambda c: "" if "sales" in c else ("word " * 80 if "budget" in c else "Ask for it.")))
    assert agent.summarise(TEXTS[:3]) == [intent_of(TEXTS[0]), intent_of(TEXTS[1]), "Ask for it."]
    given = RulesAgent(large := scripted(large_reply)).fit(TEXTS, intents=["a", "b", "c", "d"])
    assert given.intents_ == ["a", "b", "c", "d"] and not any(SUMMARISE.split("{")[0] in c[-1]["content"] for c in large.seen)


def test_rules_for_uses_the_small_model_checks_its_quotes_and_falls_back_to_the_profile():
    agent = RulesAgent(scripted(large_reply), tokenizer=None).fit(TEXTS + [f"Hi Tom,\n{SECRET}.\nAnn"])
    assert agent.rules_for(["Ask Sue for the file."]) == [agent.rules_]             # no small model yet
    agent.small = scripted(lambda c: "- Use 'Cheers'." if "Sue" in c else f"- Say {SECRET}.")
    assert agent.rules_for(["Ask Sue for the file.", "Ask Bo."]) == [["Use 'Cheers'."], agent.rules_]
    assert agent.small.seen[0] == RulesAgent.rules_chat("Ask Sue for the file.")
    assert agent.render("Ask Sue for the file.") == f"{HEADER}\n- Use 'Cheers'.\n\nAsk Sue for the file."
    assert agent.render("Ask Sue for the file.") == agent.render("Ask Sue for the file.")
    with pytest.raises(ConfigError, match="prompts"):
        agent.rules_for("Ask Sue.")


def test_rules_stay_within_the_token_budget():
    many = scripted(lambda c: "\n".join(f"- Rule number {n} says something long about style." for n in range(30))
                    if c.startswith(CRITIQUE.split("{")[0]) else "x")
    agent = RulesAgent(many, max_tokens=40).fit(TEXTS)
    from parsona.persona.rules import count_tokens, render

    assert agent.rules_ and count_tokens(render(agent.rules_, "")) <= 40
    assert all(count_tokens(render(r, "")) <= 40 for r in agent.deltas_)


def test_bad_input_names_the_field():
    agent = RulesAgent(scripted(large_reply))
    with pytest.raises(ConfigError, match="user_texts"):
        agent.fit("one string")
    with pytest.raises(ConfigError, match="user_texts"):
        agent.fit(["only one", "  "])
    with pytest.raises(ConfigError, match="intents"):
        agent.fit(TEXTS, intents=["one"])
    with pytest.raises(ConfigError, match="large"):
        RulesAgent(lambda chats: ["x"]).fit(TEXTS)
    with pytest.raises(ConfigError, match="rules"):
        RulesAgent(scripted(large_reply)).rules_for(["x"])


def test_save_and_load_keep_the_rules_but_no_text_of_the_user(tmp_path):
    texts = TEXTS + [f"Hi Tom,\n{SECRET}.\nAnn"]
    empty_summaries = lambda c: "" if c.startswith(SUMMARISE.split("{")[0]) else large_reply(c)   # noqa: E731
    agent = RulesAgent(scripted(empty_summaries)).fit(texts)
    assert agent.intents_[-1] == intent_of(texts[-1]) and "falcon" in agent.intents_[-1]   # the extractive fallback
    agent.save(tmp_path / "agent.json")
    saved = (tmp_path / "agent.json").read_text()
    assert "falcon" not in saved and "Ann" not in saved and "Friday" not in saved
    assert json.loads(saved)["rules"] == agent.rules_
    back = RulesAgent.load(tmp_path / "agent.json", texts, small=scripted(lambda c: f"- Write {SECRET}.\n- Be kind."))
    assert back.rules_ == agent.rules_ and back.deltas_ == agent.deltas_
    assert back.rules_for(["x"]) == [["Be kind."]]                      # the quote check is rebuilt from the texts
    assert back.rules_for(["x"]) == back.rules_for(["x"], fallback=False)
    with pytest.raises(ConfigError, match="large"):
        back.fit(texts)


def test_a_quote_cannot_be_chained_over_rules_or_hidden_in_a_rule():
    texts = TEXTS + [f"Hi Tom,\n{SECRET}.\nAnn"]
    agent = RulesAgent(scripted(large_reply)).fit(texts)
    agent.small = scripted(lambda c: "- Use 'the falcon lands'.\n- Then 'lands at noon'.\n- Say 'noon behind the old'.")
    assert agent.rules_for(["x"], fallback=False) == [[]]              # each is a rare 3-word run of one text
    agent.small = scripted(lambda c: "- Open with 'Hi Tom,' always.")
    assert agent.rules_for(["x"], fallback=False) == [["Open with 'Hi Tom,' always."]]
