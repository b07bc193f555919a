"""PEFT snapshots for the multi-LoRA servers users scale out with (vLLM, LoRAX, TGI).

    parsona export peft --adapter runs/pref/adapter --preference 0.3,0.7 --out snapshots/helpful30

A preference LoRA at one fixed λ is a plain LoRA of rank k + m·p (``PreferenceLoRA.to_peft``); a per-user
LoRA is one already. What such servers need beyond PEFT's own loader:

* ``base_model_name_or_path`` is the model's public hub id (the packaged default's is
  ``HuggingFaceTB/SmolLM2-135M-Instruct``), never a local cache path; a model known only by a local
  directory needs ``base_model_id``.
* ``adapter_config.json`` holds only the keys PEFT releases since 0.6 accept (a newer PEFT writes fields an
  older loader refuses as unexpected arguments), with ``use_rslora`` only when it is on.
* The files are readable by the server's user (the process umask, not ``mkstemp``'s 0600).

What is lost there: λ is fixed per snapshot. A continuous per-request preference needs Parsona's host.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from parsona.errors import ConfigError
from parsona.export import refuse_non_empty

HUB_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
CLASSIC_KEYS = ("base_model_name_or_path", "bias", "fan_in_fan_out", "inference_mode", "init_lora_weights",
                "layers_pattern", "layers_to_transform", "lora_alpha", "lora_dropout", "modules_to_save",
                "peft_type", "r", "revision", "target_modules", "task_type")


def hub_id(name: str | None, base_model_id: str | None = None) -> str:
    """The public id a server resolves: ``base_model_id`` if given, the default model's hub id, or ``name``
    when it is a hub id (not a path on this machine)."""
    if base_model_id:
        return base_model_id
    if name in HUB_IDS:
        return HUB_IDS[name]
    if not name or name.startswith(("/", ".", "~")) or Path(name).exists():
        raise ConfigError("base_model_id", "Pass the base model's public hub id (e.g. HuggingFaceTB/SmolLM2-135M-Instruct): "
                          "a server elsewhere cannot open a path on this machine.", problem=f"the base is {name!r}")
    return name


def classic_config(config: dict, base: str) -> dict:
    """``config`` cut to the keys older PEFT loaders accept (and ``use_rslora`` when it is on)."""
    out = {k: config.get(k) for k in CLASSIC_KEYS}
    out.update(base_model_name_or_path=base, inference_mode=True, bias=out["bias"] or "none")
    if isinstance(out["target_modules"], (set, tuple)):
        out["target_modules"] = sorted(out["target_modules"])
    if config.get("use_rslora"):
        out["use_rslora"] = True
    return out


def export_peft(adapter_dir: str | Path, out_dir: str | Path, preference: Sequence[float] | None = None, *,
                model=None, base_model_id: str | None = None, overwrite: bool = False) -> Path:
    """Write ``out_dir``: a PEFT LoRA any multi-LoRA server loads. ``adapter_dir`` is a preference LoRA
    (then ``preference`` fixes λ and ``model`` is its base, loaded if None) or a PEFT LoRA directory."""
    from parsona.io import atomic_dir

    src, out = Path(adapter_dir), Path(out_dir)
    refuse_non_empty(out, overwrite)
    peft_config = src / "adapter_config.json"
    is_peft = peft_config.is_file() and "peft_type" in json.loads(peft_config.read_text())
    with atomic_dir(out) as tmp:
        if is_peft:                                                # already a PEFT LoRA: copy, then clean its config
            if preference is not None:
                raise ConfigError("preference", "Leave it out: a PEFT LoRA has no preference vector.",
                                  problem=f"{src} is a PEFT LoRA")
            _check_classic(json.loads(peft_config.read_text()), src)
            for name in ("adapter_model.safetensors", "adapter_config.json"):
                shutil.copyfile(src / name, tmp / name)
        else:
            _preference_snapshot(src, tmp, preference, model)
        config = json.loads((tmp / "adapter_config.json").read_text())
        (tmp / "adapter_config.json").write_text(json.dumps(
            classic_config(config, hub_id(config.get("base_model_name_or_path"), base_model_id)), indent=2))
    return out


def _check_classic(config: dict, src: Path) -> None:
    """A PEFT LoRA the classic keys describe exactly: safetensors weights, one rank and alpha, no DoRA."""
    if not (src / "adapter_model.safetensors").is_file():
        raise ConfigError("adapter", "Re-save the LoRA with safetensors (PEFT's save_pretrained does by default).",
                          problem=f"{src} has no adapter_model.safetensors")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora"):
        raise ConfigError("adapter", "Export a LoRA with one rank and alpha and no DoRA: older servers would apply "
                          "other deltas.", problem="it has rank_pattern, alpha_pattern or use_dora")


def _preference_snapshot(src: Path, tmp: Path, preference, model) -> None:
    from parsona.adapters import PreferenceLoRA, load_adapter
    from parsona.base_model import load_base_model, model_for

    if preference is None:
        raise ConfigError("preference", "Give the λ this snapshot serves, e.g. 0.3,0.7.", problem="missing")
    if model is None:
        model, _ = load_base_model(model_for(None, src))
    adapter = load_adapter(model, src)
    try:
        if not isinstance(adapter, PreferenceLoRA):
            raise ConfigError("adapter", "Pass a preference LoRA or a PEFT LoRA directory.",
                              problem=f"{src} is a {adapter.adapter_type} adapter")
        adapter.to_peft(preference, tmp / "snapshot")
        for f in (tmp / "snapshot").iterdir():
            f.rename(tmp / f.name)
        (tmp / "snapshot").rmdir()
    finally:
        adapter.detach()
