"""Saving and loading adapters: the directory format and the base-model check.

``save_adapter`` writes ``adapter_config.json`` (adapter_type, format_version, parsona_version,
base_model_name_or_path and base_model_shape, every config field) and ``adapter.safetensors``
atomically; ``load_adapter`` reads it back, or a plain PEFT LoRA directory, onto a model and
refuses a base of another shape (a different name alone only warns).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from parsona.errors import ConfigError
from parsona.io import atomic_dir

from .base import CONFIG_FILE, FORMAT_VERSION, Adapter, base_model_name, model_shape
from .registry import get


def saved_base_model(path: str | Path) -> str | None:
    """The base model recorded in a saved adapter directory (Parsona's or PEFT's), or None."""
    try:
        fields = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    base = fields.get("base_model_name_or_path") if isinstance(fields, dict) else None
    return base if isinstance(base, str) and base else None


def save_adapter(adapter: Adapter, path: str | Path, extra_json: dict[str, Any] | None = None) -> Path:
    """Save ``adapter`` to directory ``path`` atomically (a failed save leaves nothing behind).

    ``extra_json`` maps file names to objects written beside it in the same atomic step (e.g. a
    ``training_summary.json``).
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        adapter._write(tmp)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | Path) -> Adapter:
    """Attach the adapter saved at ``path`` to ``model`` and return it."""
    directory = Path(path)
    config_file = directory / CONFIG_FILE
    if not config_file.is_file():
        raise ConfigError(str(config_file), "Point to a directory written by save_adapter() or PEFT.",
                          problem="file is missing")
    try:
        fields = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(config_file), "Save the adapter again; the file is not valid JSON.",
                          problem=str(exc)) from None
    if not isinstance(fields, dict):
        raise ConfigError(str(config_file), "Save the adapter again.", problem="expected a JSON object")
    if "adapter_type" not in fields and fields.get("peft_type") == "LORA":
        fields = {"adapter_type": "lora", **fields}  # a plain PEFT LoRA directory
    if "adapter_type" not in fields:
        raise ConfigError(f"{config_file}: adapter_type", "Point to a directory written by save_adapter() or PEFT.",
                          problem="not a Parsona or PEFT LoRA adapter config")
    version = fields.pop("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConfigError(f"{config_file}: format_version", "Upgrade parsona to read this adapter.",
                          problem=f"format {version!r} is newer than this parsona reads ({FORMAT_VERSION})")
    kind = get(fields.pop("adapter_type"))
    fields.pop("parsona_version", None)
    base = fields.pop("base_model_name_or_path", None)
    check_base(base, fields.pop("base_model_shape", None), model, str(config_file))
    adapter = kind.adapter_cls._read(model, directory, fields)
    adapter.base_model = base if isinstance(base, str) and base else None
    return adapter


def check_base(recorded: Any, shape: Any, model: nn.Module, source: str) -> None:
    """A ConfigError if the adapter was trained on a base of another shape (architecture, width, depth,
    vocabulary); a warning if only the recorded name differs (a moved folder, a copy, a hub id and
    its local snapshot are the same model under other names)."""
    current, here = base_model_name(model), model_shape(model)
    trained = recorded if isinstance(recorded, str) and recorded else "another model"
    if isinstance(shape, dict) and shape and here and shape != here:
        differ = ", ".join(f"{k} {shape.get(k)} vs {here.get(k)}" for k in sorted(set(shape) | set(here))
                           if shape.get(k) != here.get(k))
        raise ConfigError(f"{source}: base_model_name_or_path", f"Load the base model it was trained on (--model {trained}).",
                          problem=f"the adapter was trained on {trained!r}, whose shape differs from this model's ({differ})")
    if isinstance(recorded, str) and recorded and current and not _same_name(recorded, current):
        warnings.warn(f"{source}: trained on {recorded!r}, loaded onto {current!r} (same shape)", stacklevel=3)


def _same_name(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())
