"""Adapters change the forward pass of a base model; they know tensors, never users.

Each type lives in its own folder and registers itself in one line; importing this package
registers them all.
"""

from .base import Adapter, AdapterConfig, attach
from .files import load_adapter, save_adapter
from .registry import get, names, register

from .lora import LoRA, LoRAConfig  # noqa: E402  (registers "lora")
from .preference_lora import PreferenceLoRA, PreferenceLoRAConfig  # noqa: E402  (registers "preference_lora")
from .persona_prefix import PersonaPrefix, PersonaPrefixConfig  # noqa: E402  (registers "persona_prefix")
from .generated_lora import GeneratedLoRA, GeneratedLoRAConfig  # noqa: E402  (registers "generated_lora")

__all__ = [
    "Adapter", "AdapterConfig", "GeneratedLoRA", "GeneratedLoRAConfig", "LoRA", "LoRAConfig", "PersonaPrefix", "PersonaPrefixConfig", "PreferenceLoRA",
    "PreferenceLoRAConfig",
    "attach", "get", "load_adapter", "names", "register", "save_adapter",
]
