"""A user's persona from their stored history: each item embedded once, kept in the store, pooled.

    personas = Personas(store)                       # HistoryEncoder(): all-MiniLM-L6-v2
    personas.refresh(user_id)                        # embeds only the items added since the last call
    profile = personas.profile(user_id)              # UserProfile: history_count, persona (d,), updated_at

Work per user is bounded: only the newest ``max_items`` (default 1,000) history items are embedded
and pooled, so a user with 100,000 items costs what one with 1,000 does; older items stay in the
history but no longer shape the persona (a persona follows the user's recent writing). Blank items
carry nothing to embed and are skipped. A user with no history has a profile with
``history_count == 0`` and no persona: callers turn that into an error naming the fix, never a
silent base-model answer.
"""

from __future__ import annotations

from pathlib import Path

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
        """What the stored vectors depend on: the model and how texts are cut (another key re-embeds)."""
        if not hasattr(self.encoder, "encoder_"):
            self.encoder.fit()
        model = self.encoder.model or "all-MiniLM-L6-v2"
        if Path(model).expanduser().exists():                     # a local folder: the same one from any directory
            model = str(Path(model).expanduser().resolve())
        return (f"{model}|d={self.encoder.dim_}|max_length={self.encoder.max_length}"
                f"|{'bf16' if self.encoder.bf16_ else 'fp32'}")

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


# -- generated LoRAs (SG-LoRA): a new user's adapter from a description, no gradient step ---------------

def describe(encoder: HistoryEncoder, description: str | None = None, texts=None, max_texts: int = 5) -> np.ndarray:
    """(d,) a new user's description vector: the embedding of what they wrote about themselves, or the
    mean persona of at most ``max_texts`` of their texts."""
    if (description is None) == (texts is None):
        raise ConfigError("description", "Give a description or a few texts (one of them).",
                          problem="both given" if description is not None else "neither given")
    if description is not None:
        if not isinstance(description, str) or not description.strip():
            raise ConfigError("description", "Write a sentence or two about the user.", problem="empty")
        return encoder.transform([description])[0]
    if isinstance(texts, str):
        raise ConfigError("texts", "Pass a list of texts, not one string.", problem="got a string")
    texts = list(texts)[:max_texts]
    if not texts:
        raise ConfigError("texts", f"Give 1 to {max_texts} texts the user wrote.", problem="empty")
    return UserProfile.from_history("new", encoder.transform(texts)).persona


def generate_lora(experts, descriptions, query, *, k: int = 4, tau: float = 0.1, rank: int | None = None):
    """SG-LoRA's blend: the ``k`` experts whose descriptions (n, d) are nearest to ``query`` (d,), mixed by
    softmax(cos / τ). Returns (LoRAWeights, info): exact (rank Σ r_i of the chosen) or, with ``rank``, the
    best rank-``rank`` LoRA to it; info holds the chosen rows, their weights and the compact error."""
    from parsona.adapters.generated_lora import blend_compact, blend_exact
    from parsona.persona import expert_weights

    if len(experts) != len(descriptions):
        raise ConfigError("descriptions", "Give one description per expert.",
                          problem=f"{len(descriptions)} descriptions for {len(experts)} experts")
    rows, weights = expert_weights(descriptions, query, k=k, tau=tau)
    chosen = [experts[i] for i in rows]
    info = {"experts": rows.tolist(), "weights": weights.tolist()}
    if rank is None:
        return blend_exact(chosen, weights), info
    lora, errors = blend_compact(chosen, weights, rank)
    return lora, {**info, "max_relative_error": max(errors.values())}
