"""The preference agent (arXiv 2410.03731): a large model writes rules from how its own zero-shot text
differs from what the user really wrote; a small model learns to write such rules for a new intent.

    agent = RulesAgent(large=writer).fit(user_texts)        # intents summarised by ``large`` if not given
    agent.examples_                                          # (intent chat, rules text): the small model's data
    # ... fine-tune the small model on them (``recipes/learn_steering_rules.py`` does, with a PEFT LoRA) ...
    agent.small = small_writer                               # that model, as a writer
    agent.rules_for(["Ask Sara to move the meeting."])       # [[rule, rule, ...]]: one list per prompt
    agent.render("Ask Sara to move the meeting.")            # those rules, then the prompt

A *writer* is any callable ``chats -> texts`` (a chat is a list of ``{"role", "content"}``): the host's base
model (``parsona.writers.HostWriter``) or any OpenAI-compatible endpoint (``EndpointWriter``), so a user
with a bigger model brings it without code changes. Nothing here loads a model.

``fit`` for each of the user's texts: (1) an intent, what the text is for, summarised by the large model
in one sentence (the first sentence of the text when the reply is empty or too long: the extractive
fallback); (2) the large model's zero-shot text for that intent; (3) the large model's rules that would turn
(2) into the user's text (``critique_chat``). Each text's rules are parsed (list lines only), kept only
when they quote the user nowhere (``QuoteGuard``: a run of three or more of the user's words is allowed
only if short and habitual), and cut to ``max_tokens``. ``rules_`` holds the rules
that recur most over the texts, within the budget: a prompt-independent profile the server can store like
mined rules. ``rules_for`` asks ``small`` (falling back to ``rules_`` when it is unset or writes nothing
usable), with the same quote check: the small model learned from the intents, which may be the user's
own sentences, so what it writes is checked again. ``save`` keeps only quote-checked rules.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Callable, Sequence

from parsona.errors import ConfigError
from parsona.persona.rules import MAX_RULE_CHARS, SteeringRules, count_tokens, render

Chat = list[dict]
Writer = Callable[[list[Chat]], list[str]]

ASK = "Write an email. What it says: {intent}"
SUMMARISE = ("In one sentence, say what this email asks or tells its reader, as an instruction someone could "
             "write it from (\"Ask Tom to ...\"). Do not copy its wording.\n\nEmail:\n{text}")
CRITIQUE_SYSTEM = "You answer with a short numbered list: one rule per line."
CRITIQUE = ("Both emails say: {intent}\n\nEmail A (a draft):\n{draft}\n\nEmail B (the user's own):\n{text}\n\n"
            "How should Email A change to match the style of Email B (length, tone, greeting, sign-off, wording)? "
            "Give 3 to 5 short rules. Describe the style; do not copy Email B.")
RULES_ASK = "Write the style rules this user follows in an email that says: {intent}"
BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+")
GUARD_WORD = re.compile(r"\w+")                                           # any script: a quote in Cyrillic counts too
MARKUP = re.compile(r"\*\*|__|`")                                           # markdown bold and code marks
ECHO = re.compile(r"^(?:draft|real|purpose|rules)\s*:", re.IGNORECASE)      # the prompt's own fields echoed


def intent_of(text: str, words: int = 25) -> str:
    """The extractive intent of a text: its first sentence, at most ``words`` words."""
    flat = " ".join(text.split())
    first = re.split(r"(?<=[.!?])\s", flat, maxsplit=1)[0]
    return " ".join(first.split()[:words])


def write_checked(writer: Writer, chats: list[Chat], field: str = "large") -> list[str]:
    """``writer``'s replies to ``chats``: one string per chat, or a ConfigError naming ``field``."""
    replies = writer(chats) if chats else []
    if len(replies) != len(chats) or not all(isinstance(r, str) for r in replies):
        raise ConfigError(field, "A writer returns one string per chat.", problem=f"got {len(replies)} for {len(chats)}")
    return list(replies)


def summarise(writer: Writer, texts: Sequence[str], intent_words: int = 25, field: str = "writer") -> list[str]:
    """One intent per text, summarised by ``writer`` in one sentence; the extractive one (``intent_of``)
    where the reply is empty or longer than 2 × ``intent_words`` words. Errors name ``field``."""
    replies = write_checked(writer, [[{"role": "user", "content": SUMMARISE.format(text=t)}] for t in texts], field)
    intents = []
    for text, reply in zip(texts, replies):
        line = next((ln.strip() for ln in reply.splitlines() if ln.strip()), "")
        intents.append(line if line and len(line.split()) <= 2 * intent_words else intent_of(text, intent_words))
    return intents


def parse_rules(reply: str, max_words: int = 25) -> list[str]:
    """The rules in a model's reply: its bulleted or numbered lines, bullets stripped, each at most
    ``max_words`` words and MAX_RULE_CHARS characters, duplicates dropped. Anything else in the reply (prose,
    an echoed "Draft:" line, a heading ending in ":") is not a rule: a model that cannot keep the asked-for
    format gives none, rather than its prose being passed on as rules."""
    seen, kept = set(), []
    for line in reply.splitlines():
        if not BULLET.match(line):
            continue
        rule = MARKUP.sub("", BULLET.sub("", line)).strip()
        key = rule.lower()
        if (3 <= len(rule) <= MAX_RULE_CHARS and len(rule.split()) <= max_words and key not in seen
                and not rule.endswith(":") and not ECHO.match(rule)):
            seen.add(key)
            kept.append(rule)
    return kept


def rules_text(rules: Sequence[str]) -> str:
    """Rules as the small model learns to write them: one "- rule" line each."""
    return "\n".join(f"- {r}" for r in rules)


class QuoteGuard:
    """Does a text quote the user? Words are Unicode words, lower-cased. A run of 3 to ``max_words`` of the
    user's words may be repeated only when it is in at least ``min_texts`` of their texts (a habit, as the
    miner's phrases are); any longer run is a quote. Single words and pairs are not quotes: free text
    cannot avoid every pair its user once wrote ("should be", "the email").

    Built from the texts and never saved: the runs, even hashed, would let the texts be rebuilt.
    """

    def __init__(self, texts: Sequence[str], max_words: int, min_texts: int = 3):
        if not isinstance(max_words, int) or max_words < 1:
            raise ConfigError("max_quote_words", "Use a whole number ≥ 1.", problem=f"got {max_words!r}")
        self.max_words, self.min_texts = max_words, min_texts
        in_texts = Counter(run for text in dict.fromkeys(texts) for run in set(self._runs(text)))
        self.quotes = {run for run, n in in_texts.items() if n < min_texts or len(run) > max_words}

    def _runs(self, text: str) -> list[tuple[str, ...]]:
        words = GUARD_WORD.findall(text.lower())
        return [tuple(words[i:i + n]) for n in range(min(3, self.max_words + 1), self.max_words + 2)
                for i in range(len(words) - n + 1)]

    def allows(self, text: str) -> bool:
        return not any(run in self.quotes for run in self._runs(text))


class RulesAgent:
    """Per-intent steering rules learned by a large model's self-critique and served by a small one
    (scikit-learn style; learned state ends in ``_``).

    large:           writer of intents, zero-shot drafts and rules (the host's base or an endpoint).
    small:           writer of rules for a new intent once fine-tuned on ``examples_`` (None: ``rules_``).
    max_tokens:      the rules' budget in a prompt (150), counted with ``tokenizer`` (else words and marks).
    max_quote_words: the longest run of the user's words a rule may repeat ...
    min_quote_texts: ... and only if it is in at least this many of their texts (``QuoteGuard``).
    intent_words:    the extractive fallback's length, and the longest summary taken as an intent (× 2).
    min_texts:       the fewest texts ``fit`` accepts.
    """

    def __init__(self, large: Writer, small: Writer | None = None, max_tokens: int = 150, tokenizer=None,
                 max_quote_words: int = 3, min_quote_texts: int = 3, intent_words: int = 25, min_texts: int = 3):
        self.large, self.small, self.max_tokens, self.tokenizer = large, small, max_tokens, tokenizer
        self.max_quote_words, self.min_quote_texts = max_quote_words, min_quote_texts
        self.intent_words, self.min_texts = intent_words, min_texts

    def fit(self, user_texts: Sequence[str], intents: Sequence[str] | None = None) -> "RulesAgent":
        if self.large is None:
            raise ConfigError("large", "Give a writer to learn with (a loaded agent only serves its rules).")
        texts = SteeringRules._texts(user_texts, "user_texts", self.min_texts)
        if intents is not None and (isinstance(intents, str) or len(intents) != len(texts)):
            raise ConfigError("intents", "Give one intent per text (or none: the large model summarises).",
                              problem=f"got {'a string' if isinstance(intents, str) else len(intents)} for {len(texts)} texts")
        self.guard_ = QuoteGuard(texts, self.max_quote_words, self.min_quote_texts)
        self.intents_ = list(intents) if intents is not None else self.summarise(texts)
        self.drafts_ = self._write([[{"role": "user", "content": ASK.format(intent=i)}] for i in self.intents_])
        critiques = self._write([self.critique_chat(i, d, t) for i, d, t in zip(self.intents_, self.drafts_, texts)])
        self.deltas_ = [self._keep(parse_rules(c)) for c in critiques]
        self.examples_ = [(self.rules_chat(i), rules_text(r)) for i, r in zip(self.intents_, self.deltas_) if r]
        counts = Counter(r.lower() for rules in self.deltas_ for r in rules)
        first = {}
        for rules in self.deltas_:
            for r in rules:
                first.setdefault(r.lower(), r)
        ranked = sorted(counts, key=lambda k: (-counts[k], k))
        self.rules_ = self._keep([first[k] for k in ranked])
        return self

    def summarise(self, texts: Sequence[str]) -> list[str]:
        """One intent per text by the large model, the extractive one where its reply is empty or too long."""
        return summarise(self.large, texts, self.intent_words, field="large")

    @staticmethod
    def critique_chat(intent: str, draft: str, text: str) -> Chat:
        """The chat in which the large model writes rules from its draft and the user's text (a system
        message asks for a list: a model as small as SmolLM2-135M keeps that format, not a "- " one)."""
        return [{"role": "system", "content": CRITIQUE_SYSTEM},
                {"role": "user", "content": CRITIQUE.format(intent=intent, draft=draft, text=text)}]

    @staticmethod
    def rules_chat(intent: str) -> Chat:
        """The chat the small model answers with rules for ``intent`` (in training and at ``rules_for``)."""
        return [{"role": "user", "content": RULES_ASK.format(intent=intent)}]

    def rules_for(self, prompts: Sequence[str], fallback: bool = True) -> list[list[str]]:
        """Rules for each prompt: the small model's (quote-checked, in budget), else (``fallback``) ``rules_``."""
        self._check_fitted()
        if isinstance(prompts, str):
            raise ConfigError("prompts", "Pass a list of prompts.", problem="got a string")
        own = [self._keep(parse_rules(r)) for r in self.small([self.rules_chat(p) for p in prompts])] \
            if self.small is not None and prompts else [[] for _ in prompts]
        return [rules or (list(self.rules_) if fallback else []) for rules in own]

    def render(self, prompt: str) -> str:
        """``prompt`` with its rules before it."""
        return render(self.rules_for([prompt])[0], prompt)

    # -- helpers ---------------------------------------------------------------------------------------
    def _write(self, chats: list[Chat]) -> list[str]:
        return write_checked(self.large, chats)

    def _keep(self, rules: Sequence[str]) -> list[str]:
        """The rules that quote no long run of the user's words, in order while they fit the budget."""
        kept: list[str] = []
        for rule in rules:
            block = render([*kept, rule], "")                             # checked whole: no quote chained over rules
            if self.guard_.allows(block) and count_tokens(block, self.tokenizer) <= self.max_tokens:
                kept.append(rule)
        return kept

    def save(self, path) -> None:
        """The rules as JSON (atomic): the per-text rules and the recurring ones, all quote-checked. Not the
        intents or drafts (an intent may be a sentence of the user's), nor the quote guard."""
        from parsona.io import write_json

        self._check_fitted()
        write_json(path, {"deltas": self.deltas_, "rules": self.rules_, "max_quote_words": self.max_quote_words,
                          "min_quote_texts": self.min_quote_texts, "max_tokens": self.max_tokens})

    @classmethod
    def load(cls, path, user_texts: Sequence[str], small: Writer | None = None, tokenizer=None) -> "RulesAgent":
        """An agent saved by :meth:`save`, ready for ``rules_for``; ``user_texts`` rebuild the quote check
        that its small model's rules pass (they are not stored with the agent). It cannot refit."""
        import json
        from pathlib import Path

        state = json.loads(Path(path).read_text(encoding="utf-8"))
        agent = cls(None, small, max_tokens=state["max_tokens"], tokenizer=tokenizer,
                    max_quote_words=state["max_quote_words"], min_quote_texts=state["min_quote_texts"])
        texts = SteeringRules._texts(user_texts, "user_texts", 1)
        agent.guard_ = QuoteGuard(texts, agent.max_quote_words, agent.min_quote_texts)
        agent.deltas_, agent.rules_ = state["deltas"], state["rules"]
        return agent

    def _check_fitted(self) -> None:
        if not hasattr(self, "rules_"):
            raise ConfigError("rules", "Call fit(user_texts) first.", problem="not fitted")
