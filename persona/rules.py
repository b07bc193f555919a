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

Privacy: a quoted phrase is at most ``max_quote_words`` words the user wrote together (within one line
and sentence), found in at least ``min_phrase_texts`` distinct texts of theirs, and no two quoted
phrases share a word (so quotes cannot be chained into a longer run); phrases are tested against the
population with a Bonferroni threshold over the user's whole vocabulary. Rules are ordered by effect size and kept while they fit in ``max_tokens``
(counted with ``tokenizer`` if given, else words and punctuation marks).

Greetings and sign-offs are matched against English word lists, and in any language a short first or
last line ending in a comma counts as one ("Guten Tag,"); a greeting without a comma in another
language ("Guten Tag Anna") is not recognised, so the miner may then write "Do not open with a greeting".
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from parsona.errors import ConfigError

GREETINGS = ("hi", "hello", "hey", "dear", "good morning", "good afternoon", "greetings")
SIGN_OFFS = ("thanks", "thank you", "many thanks", "regards", "kind regards", "best regards", "warm regards", "best",
             "all the best", "cheers", "sincerely", "thx", "talk soon", "take care")
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


def rules_messages(rules: Sequence[str], messages: list[dict]) -> list[dict]:
    """A chat with ``rules`` as its system message (put before the chat's own system message, if any)."""
    preface = render(rules, "").rstrip()
    first = messages[0] if messages else None
    if isinstance(first, dict) and first.get("role") == "system" and isinstance(first.get("content"), str):
        return [{**first, "content": f"{preface}\n\n{first['content']}"}, *messages[1:]]
    return [{"role": "system", "content": preface}, *messages]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().splitlines() if line.strip()]


def _starts_with(line: str, words: Sequence[str]) -> bool:
    low = line.lower()
    return any(low == w or low.startswith(w + " ") or low.startswith(w + ",") or low.startswith(w + "!")
               for w in words)


def _short_comma_line(line: str) -> bool:
    """A line of at most 4 words ending in a comma ("Guten Tag,", "Hi Bob,"): a greeting or sign-off in any language."""
    return line.endswith(",") and len(line.split()) <= 4


def _sentences(text: str) -> int:
    """Sentences: ends of . ! ? (closing quotes allowed), plus lines that end without one (an email's lines)."""
    marks = len(re.findall(r"[.!?]+[\"')\]]*(?=\s|$)", text))
    unmarked = sum(not re.search(r"[.!?][\"')\]]*$", line) for line in _lines(text))
    return max(1, marks + unmarked)


def features(text: str) -> dict[str, float]:
    """The style features of one text (numbers; booleans as 0/1)."""
    words, lines, sentences = WORD.findall(text), _lines(text), _sentences(text)
    return {
        "words": float(len(words)),
        "sentence_words": len(words) / sentences,
        "greeting": float(bool(lines) and (_starts_with(lines[0], GREETINGS) or _short_comma_line(lines[0]))),
        "sign_off": float(any((_starts_with(line, SIGN_OFFS) and len(line.split()) <= 4) or _short_comma_line(line)
                              for line in lines[1:][-3:])),
        "exclamations": text.count("!") / sentences,
        "questions": text.count("?") / sentences,
        "contractions": sum("'" in w for w in words) / max(1, len(words)),
        "lowercase_lines": sum(line[0].islower() for line in lines) / max(1, len(lines)),
        "bullets": sum(bool(re.match(r"([-*•]|\d+[.)])\s", line)) for line in lines) / max(1, len(lines)),
    }


def _rule(name: str, mine: np.ndarray, more: bool) -> str:
    """The plain-language rule for a feature on which the user differs (``mine``: their per-text values;
    ``more``: they rank higher than the population, the sign of the Mann-Whitney effect)."""
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
    ``render``; learned state ends in ``_``). The same interface as the agent learner
    (``persona.RulesAgent``): ``fit(user_texts, intents=None)``, ``rules_``, ``rules_for(prompts)``, ``render``.

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
        self.rules_ = []
        for _, text in found:
            if self._count(render([*self.rules_, text], "")) <= self.max_tokens:   # exactly what goes in the prompt
                self.rules_.append(text)
        self.tokens_ = self._count(render(self.rules_, "")) if self.rules_ else 0
        return self

    def render(self, prompt: str) -> str:
        """``prompt`` with the rules before it (unchanged when no rule was found)."""
        return render(self.rules_for([prompt])[0], prompt)

    def rules_for(self, prompts: Sequence[str]) -> list[list[str]]:
        """The rules for each prompt: the mined ones, whatever the prompt (the agent's depend on it)."""
        if not hasattr(self, "rules_"):
            raise ConfigError("rules", "Call fit(user_texts) first.", problem="not fitted")
        if isinstance(prompts, str):
            raise ConfigError("prompts", "Pass a list of prompts.", problem="got a string")
        return [list(self.rules_) for _ in prompts]

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
            effect = 2 * u / (len(a) * len(b)) - 1                           # rank-biserial correlation, -1..1
            self.tests_[name] = {"p": float(p), "effect": float(effect)}
            if p * len(names) < self.alpha:
                rules.append((abs(effect), _rule(name, a, effect > 0)))
        return rules

    def _phrase_rule(self, mine: list[str], theirs: list[str]) -> list[tuple[float, str]]:
        from scipy.stats import norm
        from sklearn.feature_extraction.text import CountVectorizer

        if not isinstance(self.max_quote_words, int) or self.max_quote_words < 1:
            raise ConfigError("max_quote_words", "Use a whole number ≥ 1.", problem=f"got {self.max_quote_words!r}")
        grams = lambda text: segment_ngrams(text, min(3, self.max_quote_words))      # noqa: E731
        distinct = list(dict.fromkeys(mine))                               # a text sent twice counts once
        if len(distinct) < self.min_phrase_texts:
            return []
        # the vocabulary: only phrases in enough of the user's own texts (nothing rarer can be quoted)
        users = CountVectorizer(analyzer=grams, min_df=self.min_phrase_texts)
        try:
            X = users.fit_transform(distinct)                              # (texts, phrases) counts
        except ValueError:                                                 # no phrase is in enough texts
            return []
        vocab = users.get_feature_names_out()
        Y = CountVectorizer(analyzer=grams, vocabulary=vocab).transform(theirs)
        z = log_odds_z(np.asarray(X.sum(0)).ravel().astype(float), np.asarray(Y.sum(0)).ravel().astype(float))
        threshold = max(self.phrase_z, float(norm.isf(self.alpha / len(vocab))))   # Bonferroni over the phrases
        keep: list[int] = []
        for i in np.argsort(-z, kind="stable"):
            if z[i] < threshold or len(keep) == self.max_phrases:
                break
            if any(set(vocab[i].split()) & set(vocab[j].split()) for j in keep):
                continue                                                   # sharing a word could chain quotes
            keep.append(i)
        self.phrases_ = [str(vocab[i]) for i in keep]
        if not keep:
            return []
        rule = f"Use phrases such as {', '.join(repr(p) for p in self.phrases_)}."
        if len(rule) > MAX_RULE_CHARS:                                     # a very long token: not a usable rule
            return []
        return [(min(1.0, float(z[keep[0]]) / 10), rule)]

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
        return count_tokens(text, self.tokenizer)


def count_tokens(text: str, tokenizer=None) -> int:
    """Tokens of ``text`` under ``tokenizer`` (a Hugging Face tokenizer, or a callable text -> list; None:
    words and punctuation marks)."""
    if tokenizer is None:
        return len(TOKEN.findall(text))
    if hasattr(tokenizer, "convert_tokens_to_ids"):                        # a Hugging Face tokenizer
        return len(tokenizer(text, add_special_tokens=False).input_ids)
    return len(tokenizer(text))


def segment_ngrams(text: str, n: int) -> list[str]:
    """Lower-cased word 1..n-grams of ``text`` within each line and sentence (never across a break, so a
    phrase is a run of words the user wrote together); the corpus's <NAME/> redactions break runs too."""
    grams = []
    for segment in re.split(r"[\n.!?;:]+|<[A-Z]+/>", text):
        words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", segment.lower())
        grams += [" ".join(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1)]
    return grams


def log_odds_z(y_a: np.ndarray, y_b: np.ndarray, prior: float = 0.01) -> np.ndarray:
    """Monroe et al.'s z-scores of each word's log-odds ratio between counts ``y_a`` and ``y_b`` (> 0: more
    typical of a), with an informative Dirichlet prior α_w = prior · (pooled count of w + 1)."""
    alpha = prior * (y_a + y_b + 1.0)
    a0, n_a, n_b = alpha.sum(), y_a.sum(), y_b.sum()
    delta = (np.log((y_a + alpha) / (n_a + a0 - y_a - alpha))                   # log-odds of w in a
             - np.log((y_b + alpha) / (n_b + a0 - y_b - alpha)))                # minus in b
    var = 1.0 / (y_a + alpha) + 1.0 / (y_b + alpha)
    return delta / np.sqrt(var)
