"""Persona prefix (Persona-Plug): a user's persona vector as soft tokens before the prompt."""

from ..registry import RuntimeInput, register
from .config import PersonaPrefixConfig
from .model import PersonaPrefix

__all__ = ["PersonaPrefix", "PersonaPrefixConfig"]

register("persona_prefix", PersonaPrefixConfig, PersonaPrefix, runtime_inputs=(RuntimeInput(
    "persona", list[float], "The row's persona: a pooled history embedding (d numbers, about unit length), or "
    "true for the caller's own, pooled from their stored history given this request; omit for none.",
    stored="persona"),))
