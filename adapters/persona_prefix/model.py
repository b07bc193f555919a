"""Attach and run a persona prefix: every row of a batch can carry a different user's persona."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.simplex import tracing

from ..base import Adapter, input_embedding
from .config import PersonaPrefixConfig
from .layer import PersonaPrefixLayer

MIN_NORM, MAX_NORM = 0.5, 2.0


class PersonaPrefix(Adapter):
    """Persona-Plug (arXiv 2409.11901): a user's pooled history embedding -> soft tokens before the
    prompt, one projector for all users, the base frozen.

    The soft tokens take the places of ``n_tokens`` placeholder tokens that the host puts before a
    persona row's prompt (:meth:`prompt_prefix`), as vision-language models put image embeddings
    where their image tokens are: sequence lengths, attention masks, padding and the KV cache stay
    exactly those of ordinary tokens, so nothing else in the host changes. Decode steps carry no
    placeholder and pass through untouched.

    >>> adapter = attach(model, PersonaPrefixConfig(persona_dim=384))
    >>> with adapter.inputs(persona=torch.stack([alice, bob])):     # (B, 384); zeros: no persona
    ...     logits = model(input_ids).logits                          # input_ids begin with placeholders
    """

    config: PersonaPrefixConfig
    mergeable = False   # a per-row vector, not a weight: nothing to fold into W

    def _targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return input_embedding(model)

    def _make_layer(self, path: str, module: nn.Module) -> nn.Module:
        c = self.config
        if c.placeholder_id >= module.num_embeddings:
            raise ConfigError("placeholder_id", f"Pick a token id below the vocabulary size ({module.num_embeddings}).",
                              problem=f"got {c.placeholder_id}")
        layer = PersonaPrefixLayer(c.persona_dim, module.embedding_dim, c.n_tokens, c.hidden, c.placeholder_id)
        return layer.to(module.weight.dtype)          # the embeddings' precision: fp64 tests, a bf16 base

    def check_row(self, name: str, value: Any) -> torch.Tensor:
        d = self.config.persona_dim
        try:
            vector = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(name, f"Pass the persona as {d} numbers.", problem=f"got {value!r:.40}") from None
        if vector.shape != (d,) or not torch.isfinite(vector).all():
            raise ConfigError(name, f"Pass {d} finite numbers (the pooled history embedding).",
                              problem=f"shape {tuple(vector.shape)}" + ("" if vector.shape != (d,) else ", not finite"))
        norm = float(vector.norm())
        if not MIN_NORM <= norm <= MAX_NORM:   # pooled embeddings are unit vectors; far off is not a persona
            raise ConfigError(name, "Pass a vector of about unit length (a pooled, normalised embedding).",
                              problem=f"its length is {norm:.3g}")
        return vector

    def reserved_ids(self) -> set[int]:
        """Token ids a conditioned row's own prompt may not carry: the placeholder marks the soft tokens."""
        return {self.config.placeholder_id}

    def stack_rows(self, name: str, rows: list) -> torch.Tensor:
        zero = torch.zeros(self.config.persona_dim)                 # a row without a persona: the base model
        return torch.stack([zero if r is None else r for r in rows])

    def prompt_prefix(self, name: str, value: Any) -> list[int]:
        """The token ids the host puts before the prompt of a row that gives ``persona``."""
        return [self.config.placeholder_id] * self.config.n_tokens

    @classmethod
    def example_input_ids(cls, input_ids: torch.Tensor, config: PersonaPrefixConfig) -> torch.Tensor:
        """``input_ids`` as the host sends them for persona rows: placeholders in front."""
        return torch.cat([torch.full((len(input_ids), config.n_tokens), config.placeholder_id), input_ids[:, :-config.n_tokens]], 1)

    def _prepare_inputs(self, persona: Any = None, **unknown: Any) -> dict[str, torch.Tensor]:
        if unknown or persona is None:
            raise ConfigError("persona", "Pass persona=(B, d) only.", problem=f"got {sorted(unknown) or 'nothing'}")
        persona = torch.as_tensor(persona)
        finite = tracing() or bool(torch.isfinite(persona).all())      # traced: a graph input, the runtime checks it
        if persona.ndim != 2 or persona.shape[1] != self.config.persona_dim or not finite:
            raise ConfigError("persona", f"Pass (B, {self.config.persona_dim}) finite numbers, a row per sequence.",
                              problem=f"shape {tuple(persona.shape)}")
        return {"persona": persona.to(self.device)}

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random unit personas, one per sequence (a pooled embedding has length about 1)."""
        p = torch.randn(batch_size, self.config.persona_dim, generator=generator)
        return {"persona": p / p.norm(dim=-1, keepdim=True)}
