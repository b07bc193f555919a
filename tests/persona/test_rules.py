"""Steering rules, the statistical miner: a planted habit is found, the rules fit their token budget,
``render`` is deterministic, and no rule carries a run of the user's words longer than allowed."""

from __future__ import annotations

import random

import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.persona.rules import SteeringRules, features, log_odds_z

WORDS = ("report meeting price market contract office schedule trade power budget team review call project "
         "plan update monday friday numbers desk").split()


def population(n=200, seed=0):
    """Plain mid-length texts: a greeting, a few sentences, no sign-off, no exclamations."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        body = " ".join(" ".join(rng.choices(WORDS, k=rng.randint(8, 14))).capitalize() + "." for _ in range(rng.randint(2, 4)))
        texts.append(f"Hello team,\n{body}")
    return texts


def habitual_user(n=40, seed=1, secret=""):
    """Short texts, no greeting, an exclamation, and always the sign-off 'Cheers, Zed'."""
    rng = random.Random(seed)
    return [f"{' '.join(rng.choices(WORDS, k=6)).capitalize()}! {secret}\nCheers,\nZed" for _ in range(n)]


def test_a_planted_habit_is_found():
    rules = SteeringRules(population=population()).fit(habitual_user())
    text = " ".join(rules.rules_)
    assert "End with a short sign-off." in rules.rules_
    assert "Do not open with a greeting: start with the point." in rules.rules_
    assert "Use exclamation marks." in rules.rules_
    assert any(r.startswith("Keep it short") for r in rules.rules_)
    assert "'cheers'" in text or "'cheers zed'" in text
    assert rules.tests_["sign_off"]["p"] < 1e-6 and rules.tests_["sign_off"]["effect"] > 0.9


@pytest.mark.parametrize("seed", range(5))
def test_a_user_drawn_like_the_population_gets_no_rules(seed):
    rules = SteeringRules(population=population(seed=0)).fit(population(n=40, seed=100 + seed))
    assert rules.rules_ == [] and rules.phrases_ == []


@pytest.mark.parametrize("budget", [60, 120, 600])                 # the tiny tokenizer: one token per byte
def test_rules_stay_within_the_token_budget(budget):
    from conftest import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    rules = SteeringRules(population=population(), max_tokens=budget, tokenizer=tokenizer).fit(habitual_user())
    added = rules.render("PROMPT")[: -len("PROMPT")]
    assert len(tokenizer(added, add_special_tokens=False).input_ids) == rules.tokens_ <= budget
    if budget == 60:
        everything = SteeringRules(population=population(), max_tokens=600, tokenizer=tokenizer).fit(habitual_user())
        assert 1 <= len(rules.rules_) < len(everything.rules_)


def test_render_is_deterministic_and_puts_the_rules_before_the_prompt():
    a = SteeringRules(population=population()).fit(habitual_user())
    b = SteeringRules(population=population()).fit(habitual_user())
    assert a.rules_ == b.rules_ and a.render("Write to the team.") == b.render("Write to the team.")
    rendered = a.render("Write to the team.")
    assert rendered.endswith("\n\nWrite to the team.") and all(f"- {r}" in rendered for r in a.rules_)
    with pytest.raises(ConfigError) as err:
        SteeringRules(population=population()).render("x")
    assert err.value.field == "rules"
    assert a.rules_for(["one", "two"]) == [a.rules_, a.rules_]         # the agent's interface: rules per prompt


def test_no_rule_quotes_more_of_the_users_words_than_allowed():
    secret = "the purple walrus dances at midnight"          # in every text: the strongest phrase there is
    rules = SteeringRules(population=population(), max_quote_words=3).fit(habitual_user(secret=secret))
    rendered = rules.render("hi").lower()
    assert secret not in rendered and rules.phrases_
    quoted = [p.split() for p in rules.phrases_]
    assert all(len(q) <= 3 for q in quoted)
    words = [w for q in quoted for w in q]
    assert len(words) == len(set(words))                     # no shared word: quotes cannot be chained
    run = secret.split()
    fours = {" ".join(run[i:i + 4]) for i in range(len(run) - 3)}
    joined = {" ".join(a + b) for a in quoted for b in quoted if a is not b}
    assert not any(f in j for f in fours for j in joined)    # not even two quotes put side by side rebuild 4 words
    once = SteeringRules(population=population()).fit(habitual_user() + ["Zebra quokka narwhal ibex!"])
    assert "quokka" not in once.render("hi")                  # in one text only: never quoted


@pytest.mark.parametrize("texts, field", [(["One short text."], "user_texts"), (["", "  "] * 5, "user_texts"),
                                          ("a string", "user_texts"), (None, "user_texts")])
def test_too_little_to_learn_from_is_an_error_naming_it(texts, field):
    with pytest.raises(ConfigError) as err:
        SteeringRules(population=population()).fit(texts)
    assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        SteeringRules().fit(habitual_user())
    assert err.value.field == "population"


def test_another_language_keeps_its_comma_greeting_and_still_fits():
    german = [f"Guten Tag,\n{w} kommt morgen.\nViele Grüße,\nAnna" for w in WORDS * 2]
    rules = SteeringRules(population=population()).fit(german)
    assert rules.rules_ and "Do not open with a greeting: start with the point." not in rules.rules_
    assert "End with a short sign-off." in rules.rules_      # the population signs off less
    assert not any("bericht" in p or "grüße anna" in p for p in rules.phrases_)   # never across a line break


def test_features_of_one_text():
    f = features("Hi Bob,\nDon't worry! Is it late?\n- one\n- two\nThanks,\nZed")
    assert f["greeting"] == 1 and f["sign_off"] == 1 and f["contractions"] > 0
    assert f["bullets"] == pytest.approx(2 / 6) and f["exclamations"] > 0 and f["questions"] > 0
    g = features("Hi Bob,\n\nSee attached\n\nKind regards\nAlice")
    assert g["sign_off"] == 1 and g["sentence_words"] == pytest.approx(7 / 4)   # four lines, none ends in a stop
    assert features('He said "go."\nOk.')["sentence_words"] == pytest.approx(4 / 2)


def test_log_odds_z_is_antisymmetric_and_zero_for_equal_counts():
    a, b = np.array([10.0, 0, 5, 30]), np.array([2.0, 8, 5, 30])
    np.testing.assert_allclose(log_odds_z(a, b), -log_odds_z(b, a))
    np.testing.assert_allclose(log_odds_z(a, a), 0, atol=1e-12)
    assert log_odds_z(a, b)[0] > 0 > log_odds_z(a, b)[1]
    # by hand, word 0: α = 0.01·13 = 0.13, α0 = 0.01·(12+8+10+60+4) = 0.94, n_a = 45, n_b = 45
    d = np.log(10.13 / (45.94 - 10.13)) - np.log(2.13 / (45.94 - 2.13))
    assert log_odds_z(a, b)[0] == pytest.approx(d / np.sqrt(1 / 10.13 + 1 / 2.13))
