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

Generated LoRAs (SG-LoRA: a new user's LoRA blended from a bank of experts) are built in
:mod:`parsona.generate`; ``generate_lora`` and ``describe`` are importable from here too.
"""

from __future__ import annotations

import numpy as np

from parsona.errors import ConfigError
from parsona.persona import TAU, HistoryEncoder, UserProfile, input_aware_persona

MAX_PERSONA_ITEMS = 1000


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


def request_text(request) -> str | None:
    """What a request asks, as text: its last message's content, or its prompt (None for token ids)."""
    if request.messages:
        return next((m["content"] for m in reversed(request.messages) if m.get("content", "").strip()), None)
    return request.prompt if isinstance(request.prompt, str) and request.prompt.strip() else None


from parsona.generate import GeneratedLoRAs, describe, generate_lora  # noqa: E402  (generated LoRAs, re-exported)
