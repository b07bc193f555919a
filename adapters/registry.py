"""The adapter registry: one line registers a type, and every test and tool sees it.

``register("preference_lora", PreferenceLoRAConfig, PreferenceLoRA, runtime_inputs=("preference",))``
ends each type's ``__init__.py``. The conformance suite parametrizes over :func:`names`, so a new
type is checked against the adapter contract (DESIGN.md §3) without touching any test.
"""

from __future__ import annotations

from dataclasses import dataclass

from parsona.errors import ConfigError


@dataclass(frozen=True)
class AdapterType:
    name: str
    config_cls: type
    adapter_cls: type
    runtime_inputs: tuple[str, ...]


_TYPES: dict[str, AdapterType] = {}


def register(name: str, config_cls: type, adapter_cls: type, runtime_inputs: tuple[str, ...] = ()) -> None:
    """Make ``name`` attachable, saveable and loadable. Re-registering a name is an error."""
    if name in _TYPES and _TYPES[name].adapter_cls is not adapter_cls:
        raise ValueError(f"adapter type {name!r} is already registered by {_TYPES[name].adapter_cls!r}")
    config_cls.adapter_type = name
    adapter_cls.adapter_type = name
    adapter_cls.runtime_inputs = tuple(runtime_inputs)
    _TYPES[name] = AdapterType(name, config_cls, adapter_cls, tuple(runtime_inputs))


def get(name: str) -> AdapterType:
    """The registered type called ``name``; an unknown name lists the known ones."""
    try:
        return _TYPES[name]
    except KeyError:
        raise ConfigError(
            "adapter_type",
            f"Use one of: {', '.join(names())} (or import the module that registers it).",
            problem=f"unknown adapter type {name!r}",
        ) from None


def names() -> list[str]:
    """Every registered adapter type, sorted."""
    return sorted(_TYPES)
