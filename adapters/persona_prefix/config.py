"""Configuration of the persona prefix (Persona-Plug)."""

from __future__ import annotations

from dataclasses import dataclass

from parsona.errors import ConfigError

from ..base import AdapterConfig


@dataclass
class PersonaPrefixConfig(AdapterConfig):
    """A projector from a user's pooled persona vector to soft tokens before the prompt.

    persona_dim:    d, the width of the persona vector (384: all-MiniLM-L6-v2).
    n_tokens:       soft tokens per row (Persona-Plug uses 1).
    hidden:         the projector's hidden width: d -> hidden -> n_tokens × the model's embedding width.
    placeholder_id: the token the host puts where each soft token goes (``n_tokens`` of them before a
                    persona row's prompt). 3 is SmolLM2's ``<repo_name>``, a code-data token its chat
                    never uses; pick an unused special token of any other tokenizer.
    """

    persona_dim: int = 384
    n_tokens: int = 1
    hidden: int = 512
    placeholder_id: int = 3

    def __post_init__(self) -> None:
        for name, low in (("persona_dim", 1), ("n_tokens", 1), ("hidden", 1), ("placeholder_id", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(name, f"Use a whole number ≥ {low}.", problem=f"got {value!r}")
