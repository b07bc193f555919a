"""Steering-wheel rules (preference agents, arXiv 2410.03731): short plain-language rules about how a user
writes, learned from their own texts, that any model follows from its prompt.

    rules = SteeringRules(population=other_peoples_texts).fit(user_texts)
    rules.rules_                     # ["Keep it short: about 40 words.", "Sign off with 'Thanks,'.", ...]
    rules.render("Write to Jerry about the weekend.")   # the rules, then the prompt

This is the statistical miner: it contrasts the user's texts with a population's and writes each
significant difference as a rule. Style features per text (length, sentence length, a greeting, a
sign-off, exclamations, questions, contractions, lines starting in lower case, bullet lines) are
compared with a two-sided Mann-Whitney U test (scipy), Bonferroni-corrected over the features at
``alpha``; characteristic phrases (word 1-3-grams) by their log-odds ratio with an informative
Dirichlet prior (Monroe, Colaresi & Quinn 2008), kept at z ≥ ``phrase_z``. Deterministic and fast.

Privacy: a rule quotes at most ``max_quote_words`` consecutive words of the user's texts, and only a
phrase found in at least ``min_phrase_texts`` different texts, so no sentence of theirs is carried
into a prompt verbatim. Rules are ordered by effect size and kept while they fit in ``max_tokens``
(counted with ``tokenizer`` if given, else words and punctuation marks).

Greetings and sign-offs are matched against English word lists: in another language those two rules
are simply not found (the other features and the phrases still are).
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

import numpy as np

from parsona.errors import ConfigError

GREETINGS = ("hi", "hello", "hey", "dear", "good morning", "good afternoon", "greetings")
SIGN_OFFS = ("thanks", "thank you", "regards", "best", "cheers", "sincerely", "thx", "talk soon", "take care")
PLACEHOLDER = re.compile(r"<[A-Z]+/>")   # the corpus's redactions (<NAME/>)
TOKEN = re.compile(r"<[A-Z]+/>|\w+(?:'\w+)?|[^\w\s]")
WORD = re.compile(r"<[A-Z]+/>|[A-Za-z0-9]+(?:'[A-Za-z]+)?")
SENTENCE = re.compile(r"[.!?]+(?:\s|$)")
HEADER = "Write as this user does:"
MAX_RULES = 20          # a user's stored rules: at most this many ...
MAX_RULE_CHARS = 300    # ... of at most this many characters each, one line each


def check_rules(rules, field: str = "rules") -> list[str]:
    """``rules`` as a list of one-line, non-empty strings within the limits, or a ConfigError naming ``field``."""
    if not isinstance(rules, (list, tuple)) or len(rules) > MAX_RULES:
        raise ConfigError(field, f"Give a list of at most {MAX_RULES} rules.",
                          problem=f"got {len(rules) if isinstance(rules, (list, tuple)) else type(rules).__name__}")
    for n, rule in enumerate(rules):
        if not isinstance(rule, str) or not rule.strip() or len(rule) > MAX_RULE_CHARS or "\n" in rule or "\r" in rule:
            raise ConfigError(f"{field}[{n}]", f"Write each rule as one line of 1 to {MAX_RULE_CHARS} characters.",
                              problem=f"got {rule!r:.60}")
    return [r.strip() for r in rules]


def render(rules: Sequence[str], prompt: str) -> str:
    """``prompt`` with ``rules`` before it, one per line under a header (unchanged without rules)."""
    if not rules:
        return prompt
    return "\n".join([HEADER, *(f"- {r}" for r in rules), "", prompt])


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _starts_with(line: str, words: Sequence[str]) -> bool:
    low = line.lower()
    return any(low == w or low.startswith(w + " ") or low.startswith(w + ",") or low.startswith(w + "!")
               for w in words)


def features(text: str) -> dict[str, float]:
    """The style features of one text (numbers; booleans as 0/1)."""
    words, lines = WORD.findall(text), _lines(text)
    sentences = max(1, len(SENTENCE.findall(text)) + (0 if SENTENCE.search(text.strip()[-1:] or ".") else 1))
    return {
        "words": float(len(words)),
        "sentence_words": len(words) / sentences,
        "greeting": float(bool(lines) and _starts_with(lines[0], GREETINGS)),
        "sign_off": float(any(_starts_with(line, SIGN_OFFS) and len(line.split()) <= 4 for line in lines[-3:])),
        "exclamations": text.count("!") / sentences,
        "questions": text.count("?") / sentences,
        "contractions": sum("'" in w for w in words) / max(1, len(words)),
        "lowercase_lines": sum(line[0].islower() for line in lines) / max(1, len(lines)),
        "bullets": sum(bool(re.match(r"([-*•]|\d+[.)])\s", line)) for line in lines) / max(1, len(lines)),
    }


def _rule(name: str, mine: np.ndarray, theirs: np.ndarray) -> str:
    """The plain-language rule for a feature on which the user differs (mine vs theirs: per-text values)."""
    more = np.median(mine) > np.median(theirs) if np.median(mine) != np.median(theirs) else mine.mean() > theirs.mean()
    if name == "words":
        return f"Keep it {'long' if more else 'short'}: about {int(round(np.median(mine), -1)) or int(np.median(mine))} words."
    if name == "sentence_words":
        return f"Write {'long' if more else 'short'} sentences, about {int(round(np.median(mine)))} words each."
    texts = {"greeting": ("Open with a greeting.", "Do not open with a greeting: start with the point."),
             "sign_off": ("End with a short sign-off.", "Do not end with a sign-off."),
             "exclamations": ("Use exclamation marks.", "Avoid exclamation marks."),
             "questions": ("Ask questions.", "Make statements rather than ask questions."),
             "contractions": ("Use contractions (don't, I'm).", "Avoid contractions: write 'do not', 'I am'."),
             "lowercase_lines": ("Start lines in lower case; keep it informal.", "Start sentences with a capital letter."),
             "bullets": ("Put lists in bullet lines.", "Write in paragraphs, not bullet lines.")}
    return texts[name][0 if more else 1]


class SteeringRules:
    """Rules about how one user writes, mined against a population (scikit-learn style: ``fit``, then
    ``render``; learned state ends in ``_``).

    population:       other people's texts, the contrast (a few hundred is plenty).
    max_tokens:       the rules' budget in the prompt (150).
    tokenizer:        counts tokens (a Hugging Face tokenizer, or a callable text -> list); None: words and
                      punctuation marks.
    alpha:            family-wise significance level of the style features (Bonferroni).
    phrase_z:         the z-score a characteristic phrase needs.
    max_phrases:      phrases quoted in the phrase rule.
    max_quote_words:  the longest run of the user's words a rule may quote.
    min_phrase_texts: a quoted phrase must occur in at least this many of the user's texts.
    min_texts:        the fewest texts ``fit`` accepts.
    """

    def __init__(self, population: Sequence[str] | None = None, max_tokens: int = 150, tokenizer=None,
                 alpha: float = 0.01, phrase_z: float = 3.0, max_phrases: int = 3, max_quote_words: int = 3,
                 min_phrase_texts: int = 3, min_texts: int = 5):
        self.population, self.max_tokens, self.tokenizer = population, max_tokens, tokenizer
        self.alpha, self.phrase_z, self.max_phrases = alpha, phrase_z, max_phrases
        self.max_quote_words, self.min_phrase_texts, self.min_texts = max_quote_words, min_phrase_texts, min_texts

    def fit(self, user_texts: Sequence[str], intents=None) -> "SteeringRules":
        """Mine the rules from ``user_texts`` (``intents`` are for the agent learner and unused here)."""
        mine, theirs = self._texts(user_texts, "user_texts", self.min_texts), self._texts(self.population, "population", 5)
        found = self._style_rules(mine, theirs) + self._phrase_rule(mine, theirs)
        found.sort(key=lambda r: -r[0])                                      # the largest effects first
        self.rules_, used = [], self._count(HEADER)
        for _, text in found:
            cost = self._count(f"- {text}")
            if used + cost <= self.max_tokens:
                self.rules_.append(text)
                used += cost
        self.tokens_ = used if self.rules_ else 0
        return self

    def render(self, prompt: str) -> str:
        """``prompt`` with the rules before it (unchanged when no rule was found)."""
        if not hasattr(self, "rules_"):
            raise ConfigError("rules", "Call fit(user_texts) first.", problem="not fitted")
        return render(self.rules_, prompt)

    # -- the two kinds of rules --------------------------------------------------------------------
    def _style_rules(self, mine: list[str], theirs: list[str]) -> list[tuple[float, str]]:
        from scipy.stats import mannwhitneyu

        F_mine, F_theirs = [features(t) for t in mine], [features(t) for t in theirs]
        names = list(F_mine[0])
        self.tests_ = {}
        rules = []
        for name in names:
            a = np.array([f[name] for f in F_mine])
            b = np.array([f[name] for f in F_theirs])
            if np.ptp(np.concatenate([a, b])) == 0:
                continue
            u, p = mannwhitneyu(a, b, alternative="two-sided")
            effect = abs(2 * u / (len(a) * len(b)) - 1)                       # rank-biserial correlation, 0..1
            self.tests_[name] = {"p": float(p), "effect": float(effect)}
            if p * len(names) < self.alpha:
                rules.append((effect, _rule(name, a, b)))
        return rules

    def _phrase_rule(self, mine: list[str], theirs: list[str]) -> list[tuple[float, str]]:
        from sklearn.feature_extraction.text import CountVectorizer

        n = min(3, self.max_quote_words)
        vec = CountVectorizer(ngram_range=(1, n), lowercase=True, token_pattern=r"[a-z0-9]+(?:'[a-z]+)?")
        plain = [PLACEHOLDER.sub(" ", t) for t in (*mine, *theirs)]          # <NAME/> marks a redaction, not a word
        X = vec.fit_transform(plain)                                         # (texts, phrases) counts
        y_mine = np.asarray(X[: len(mine)].sum(0)).ravel()
        y_theirs = np.asarray(X[len(mine):].sum(0)).ravel()
        in_texts = np.asarray((X[: len(mine)] > 0).sum(0)).ravel()
        z = log_odds_z(y_mine, y_theirs)
        vocab = vec.get_feature_names_out()
        keep: list[int] = []
        for i in np.argsort(-z, kind="stable"):
            if z[i] < self.phrase_z or len(keep) == self.max_phrases:
                break
            if in_texts[i] < self.min_phrase_texts or any(f" {vocab[i]} " in f" {vocab[j]} " for j in keep):
                continue                                                     # rare, or part of a phrase kept
            keep = [j for j in keep if f" {vocab[j]} " not in f" {vocab[i]} "] + [i]   # 'let me know' over 'let me'
        self.phrases_ = [str(vocab[i]) for i in keep]
        if not keep:
            return []
        quoted = ", ".join(f"'{p}'" for p in self.phrases_)
        return [(min(1.0, float(z[keep[0]]) / 10), f"Use phrases such as {quoted}.")]

    # -- input and counting ------------------------------------------------------------------------
    @staticmethod
    def _texts(texts, field: str, least: int) -> list[str]:
        if texts is None or isinstance(texts, str):
            raise ConfigError(field, "Pass a list of texts.", problem="got a string" if isinstance(texts, str) else "missing")
        kept = [t for t in texts if isinstance(t, str) and t.strip()]
        if len(kept) < least:
            raise ConfigError(field, f"Give at least {least} non-empty texts (style shows over several).",
                              problem=f"got {len(kept)}")
        return kept

    def _count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(TOKEN.findall(text))
        out = self.tokenizer(text)
        return len(out.input_ids if hasattr(out, "input_ids") else out)


def log_odds_z(y_a: np.ndarray, y_b: np.ndarray, prior: float = 0.01) -> np.ndarray:
    """Monroe et al.'s z-scores of each word's log-odds ratio between counts ``y_a`` and ``y_b`` (> 0: more
    typical of a), with an informative Dirichlet prior α_w = prior · (pooled count of w + 1)."""
    alpha = prior * (y_a + y_b + 1.0)
    a0, n_a, n_b = alpha.sum(), y_a.sum(), y_b.sum()
    delta = (np.log((y_a + alpha) / (n_a + a0 - y_a - alpha))                   # log-odds of w in a
             - np.log((y_b + alpha) / (n_b + a0 - y_b - alpha)))                # minus in b
    var = 1.0 / (y_a + alpha) + 1.0 / (y_b + alpha)
    return delta / np.sqrt(var)
