"""Personas and generated LoRAs: what the host builds for a user from what the user wrote.

Personas: a user's stored history, each item embedded once, kept in the store, pooled.

    personas = Personas(store)                       # HistoryEncoder(): all-MiniLM-L6-v2
    personas.refresh(user_id)                        # embeds only the items added since the last call
    profile = personas.profile(user_id)              # UserProfile: history_count, persona (d,), updated_at

Work per user is bounded: only the newest ``max_items`` (default 1,000) history items are embedded
and pooled, so a user with 100,000 items costs what one with 1,000 does; older items stay in the
history but no longer shape the persona (a persona follows the user's recent writing). Blank items
carry nothing to embed and are skipped. A user with no history has a profile with
``history_count == 0`` and no persona: callers turn that into an error naming the fix, never a
silent base-model answer.

Intents: what each history text is for, in one sentence (the steering-rules agent's input), written once by
a writer (the host's model or an endpoint: ``parsona.writers``) and kept in the store with the history.

    intents = Intents(store, HostWriter(host))
    texts, sentences = intents.pairs(user_id)        # summarises only the items added since the last call

Generated LoRAs (SG-LoRA: a new user's LoRA blended from a bank of experts) are built in
:mod:`parsona.generate`; ``generate_lora`` and ``describe`` are importable from here too.
"""

from __future__ import annotations

import hashlib

import numpy as np

from parsona.errors import ConfigError
from parsona.persona import TAU, HistoryEncoder, UserProfile, input_aware_persona
from parsona.persona.agent import SUMMARISE, summarise
from parsona.store_intents import MAX_INTENT_CHARS

MAX_PERSONA_ITEMS = 1000
MAX_INTENT_ITEMS = 1000     # the newest items summarised: each is a large-model call ...
INTENT_CHUNK = 32           # ... kept as each chunk of them is written: a failure loses one chunk's calls


class Personas:
    def __init__(self, store, encoder: HistoryEncoder | None = None, max_items: int = MAX_PERSONA_ITEMS,
                 tau: float = TAU):
        self.store = store
        self.encoder = encoder or HistoryEncoder(progress=False)
        self.max_items = max_items
        self.tau = tau

    @property
    def encoder_key(self) -> str:
        """The key the stored vectors are kept under (``HistoryEncoder.key``)."""
        return self.encoder.key

    def refresh(self, user_id: str) -> int:
        """Embed the user's newest items that have no vector yet; returns how many were embedded."""
        todo = [(i, t) for i, t in self.store.unembedded_history(user_id, self.encoder_key, self.max_items) if t.strip()]
        if not todo:
            return 0
        vectors = self.encoder.transform([t for _, t in todo])                       # (n, d) unit rows
        return self.store.put_embeddings(user_id, self.encoder_key, [i for i, _ in todo], vectors)

    def profile(self, user_id: str, refresh: bool = True) -> UserProfile:
        """The user's profile from their newest ``max_items`` embedded items (embedding new ones first)."""
        if refresh:
            self.refresh(user_id)
        X, updated_at = self.store.history_embeddings(user_id, self.encoder_key, self.max_items)
        return UserProfile.from_history(user_id, X, updated_at=updated_at)

    def resolve(self, user_id: str, request) -> np.ndarray:
        """The caller's persona for one request (a host ``stored`` resolver): their newest history pooled
        input-aware given the request's text (its last message, or its prompt). No history is an error
        naming the fix, never a silent base-model answer."""
        self.refresh(user_id)
        X, _ = self.store.history_embeddings(user_id, self.encoder_key, self.max_items)
        if len(X) == 0:
            raise ConfigError("persona", "Add history first (PUT /v1/profile/history): a persona is pooled from it.",
                              problem="this user has no history")
        text = request_text(request)
        if text is None:                                          # token ids: nothing to embed, the plain mean
            return UserProfile.from_history(user_id, X).persona.copy()
        return input_aware_persona(X, self.encoder.transform([text])[0], self.tau)


class Intents:
    """One intent per history item, summarised by ``writer`` (``persona.agent.summarise``: one sentence, the
    text's first sentence as the fallback) from the text's first ``max_chars`` characters, kept in the store
    under :attr:`key` so each item costs one call, ever. Only the newest ``max_items`` are summarised.

    key: names the writer (default: its ``key`` attribute, which ``parsona.writers`` writers have); the
    prompt and these settings are added, so changing any of them re-summarises instead of mixing intents.
    """

    def __init__(self, store, writer, key: str | None = None, max_items: int = MAX_INTENT_ITEMS,
                 max_chars: int = 1500, intent_words: int = 25):
        name = key or getattr(writer, "key", None)
        if not isinstance(name, str) or not name:
            raise ConfigError("key", "Name the writer (a writer from parsona.writers has a key).",
                              problem=f"{type(writer).__name__} has none")
        for field, value in (("max_items", max_items), ("max_chars", max_chars), ("intent_words", intent_words)):
            if type(value) is not int or value < 1:
                raise ConfigError(field, "Use a whole number ≥ 1.", problem=f"got {value!r}")
        self.store, self.writer, self.max_items = store, writer, max_items
        self.max_chars, self.intent_words = max_chars, intent_words
        prompt = hashlib.sha256(SUMMARISE.encode()).hexdigest()[:12]
        self.key = f"{name}|summarise:{prompt}|words:{intent_words}|chars:{max_chars}"

    def refresh(self, user_id: str) -> int:
        """Summarise the user's newest items that have no intent under :attr:`key`; returns how many."""
        todo = [(i, t[: self.max_chars]) for i, t in self.store.unsummarised_history(user_id, self.key, self.max_items)
                if t[: self.max_chars].strip()]                # blank where cut: nothing to summarise
        kept = 0
        for start in range(0, len(todo), INTENT_CHUNK):
            chunk = todo[start:start + INTENT_CHUNK]
            intents = summarise(self.writer, [t for _, t in chunk], self.intent_words)
            kept += self.store.put_intents(user_id, self.key, [i for i, _ in chunk], [s[:MAX_INTENT_CHARS] for s in intents])
        return kept

    def pairs(self, user_id: str, refresh: bool = True) -> tuple[list[str], list[str]]:
        """(texts, intents) of the user's newest ``max_items`` summarised items, oldest first, each text cut
        to ``max_chars`` as it was summarised (summarising new items first unless ``refresh`` is False)."""
        if refresh:
            self.refresh(user_id)
        rows = self.store.history_intents(user_id, self.key, self.max_items)[::-1]
        return [t[: self.max_chars] for t, _ in rows], [i for _, i in rows]


def request_text(request) -> str | None:
    """What a request asks, as text: its last message's content, or its prompt (None for token ids)."""
    if request.messages:
        return next((m["content"] for m in reversed(request.messages) if m.get("content", "").strip()), None)
    return request.prompt if isinstance(request.prompt, str) and request.prompt.strip() else None


from parsona.generate import GeneratedLoRAs, describe, generate_lora  # noqa: E402  (generated LoRAs, re-exported)
