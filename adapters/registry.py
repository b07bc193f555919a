"""The adapter registry: one line registers a type, and every test and tool sees it.

    register("preference_lora", PreferenceLoRAConfig, PreferenceLoRA,
             runtime_inputs=(RuntimeInput("preference", list[float], "λ: n_objectives weights ≥ 0 summing to 1",
                                          required=True),))

ends each type's ``__init__.py``. What a type needs per row is declared here, once, as
:class:`RuntimeInput`: the host stacks the rows of a batch for every attached type by these names,
the HTTP API takes its extra request fields from them and the ONNX exporter makes them graph inputs.
None of them reads a type's name. The conformance suite parametrizes over :func:`names`, so a new
type is checked against the adapter contract without touching any test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from parsona.errors import ConfigError


@dataclass(frozen=True)
class RuntimeInput:
    """One per-row input of an adapter type. ``name`` is the one name everywhere: the keyword of
    ``adapter.inputs(...)``, the key of a request's ``conditioning``, the HTTP body field, the
    ONNX graph input.

    annotation:  the type of one row's value as a request sends it (JSON-shaped: ``list[float]``,
                 ``str``); the HTTP schema uses it as is.
    description: what the value means, shown in ``/docs`` and errors.
    required:    every row must give a value (or the host a default); a missing one is an error,
                 never a silent fallback. Not required: a row without it is not conditioned by
                 this type (exactly the model without the adapter, for that row).
    stored:      the host may keep this value for each user (e.g. ``"persona"``): a request then
                 sends ``true`` for the caller's own (the host resolves it; ``false`` is no value).
    domain:      what a row's values must satisfy beyond their shape, for checks outside torch (the
                 ONNX runtime): ``"simplex"`` (weights ≥ 0 summing to 1), ``"simplex_or_zero"`` (that,
                 or all 0: the row is not conditioned) or None.
    """

    name: str
    annotation: Any = Any
    description: str = ""
    required: bool = False
    stored: str | None = None
    domain: str | None = None


@dataclass(frozen=True)
class AdapterType:
    name: str
    config_cls: type
    adapter_cls: type
    runtime_inputs: tuple[RuntimeInput, ...]

    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.runtime_inputs)


_TYPES: dict[str, AdapterType] = {}
INPUT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def register(name: str, config_cls: type, adapter_cls: type,
             runtime_inputs: tuple[RuntimeInput | str, ...] = ()) -> AdapterType:
    """Make ``name`` attachable, saveable, loadable and servable. A plain string in
    ``runtime_inputs`` is an optional input of any type. Re-registering a name is an error."""
    if name in _TYPES and _TYPES[name].adapter_cls is not adapter_cls:
        raise ValueError(f"adapter type {name!r} is already registered by {_TYPES[name].adapter_cls!r}")
    inputs = tuple(RuntimeInput(i) if isinstance(i, str) else i for i in runtime_inputs)
    bad = [i.name for i in inputs if not (isinstance(i.name, str) and INPUT_NAME.fullmatch(i.name))]
    if bad:  # it becomes a keyword argument, a JSON field and a graph input name
        raise ValueError(f"runtime input name {bad[0]!r} of {name!r}: use lowercase letters, digits and '_', "
                         "starting with a letter")
    clash = [i.name for i in inputs if any(i.name in t.input_names() for t in _TYPES.values() if t.name != name)]
    if clash:
        raise ValueError(f"runtime input {clash[0]!r} of {name!r} is already declared by another type")
    config_cls.adapter_type = name
    adapter_cls.adapter_type = name
    adapter_cls.runtime_inputs = inputs
    _TYPES[name] = AdapterType(name, config_cls, adapter_cls, inputs)
    return _TYPES[name]


def unregister(name: str) -> None:
    """Forget a type (tests that register a throwaway type clean up with this)."""
    _TYPES.pop(name, None)


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

