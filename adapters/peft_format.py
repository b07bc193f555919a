"""Read and write one LoRA as a standard PEFT directory (PEFT is the per-user LoRA file format).

A PEFT LoRA directory holds ``adapter_config.json`` (a ``peft.LoraConfig``) and
``adapter_model.safetensors`` with keys ``base_model.model.<module path>.lora_{A,B}.weight``.
Pickled ``adapter_model.bin`` files are refused: a user's upload must never run code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from parsona.errors import ConfigError
from parsona.io import atomic_dir

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass
class LoRAWeights:
    """One LoRA: per module path, A (r, d_in) and B (d_out, r); ΔW = scale · B A."""

    rank: int
    alpha: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank


def read_peft_lora(directory: str | Path) -> LoRAWeights:
    """Load a PEFT LoRA directory, or raise a ConfigError naming the file and field at fault."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights_file = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    if not config_file.is_file():
        raise ConfigError(str(config_file), "Point to a PEFT LoRA directory.", problem="file is missing")
    try:
        cfg = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(config_file), "Save the LoRA again with PEFT.", problem=f"not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ConfigError(f"{config_file}: peft_type", "Only PEFT LoRA adapters are supported.",
                          problem=f"got {cfg.get('peft_type') if isinstance(cfg, dict) else cfg!r}")
    for field, ok in [("use_dora", not cfg.get("use_dora")), ("rank_pattern", not cfg.get("rank_pattern")),
                      ("alpha_pattern", not cfg.get("alpha_pattern")), ("bias", cfg.get("bias", "none") == "none"),
                      ("modules_to_save", not cfg.get("modules_to_save"))]:
        if not ok:
            raise ConfigError(f"{config_file}: {field}", "Save a plain LoRA (no DoRA, patterns, bias or extra modules).",
                              problem=f"{cfg.get(field)!r} is not supported")
    if not weights_file.is_file():
        pickled = " (pickled adapter_model.bin files are refused: convert to safetensors)" if (directory / "adapter_model.bin").exists() else ""
        raise ConfigError(str(weights_file), "Save the LoRA with safetensors (PEFT's default).", problem="file is missing" + pickled)
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(str(weights_file), "Save the LoRA again; the file is corrupt.", problem=str(exc)) from None
    return LoRAWeights(int(cfg["r"]), float(cfg["lora_alpha"]), _factors(tensors, weights_file), bool(cfg.get("use_rslora")))


def _factors(tensors: dict[str, torch.Tensor], source: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        for which in ("A", "B"):
            suffix = f".lora_{which}.weight"
            if key.startswith(PREFIX) and key.endswith(suffix):
                parts.setdefault(key[len(PREFIX): -len(suffix)], {})[which] = value
                break
        else:
            raise ConfigError(f"{source}: {key}", "Save a plain PEFT LoRA.", problem="unexpected tensor name")
    incomplete = [p for p, ab in parts.items() if len(ab) != 2]
    if incomplete or not parts:
        raise ConfigError(str(source), "Save the LoRA again.", problem=f"missing lora_A/lora_B for {incomplete[:3] or 'every module'}")
    return {path: (ab["A"], ab["B"]) for path, ab in parts.items()}


def write_peft_lora(weights: LoRAWeights, out_dir: str | Path, all_paths: list[str], base_model_name_or_path: str | None = None) -> Path:
    """Write ``weights`` as a PEFT LoRA directory, atomically.

    ``all_paths`` are the module paths the LoRA could cover; PEFT's target_modules are name
    suffixes when the LoRA covers every path with that suffix, else the exact paths.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    covered = set(weights.factors)
    suffixes = sorted({p.rsplit(".", 1)[-1] for p in covered})
    complete = all(p in covered for p in all_paths if p.rsplit(".", 1)[-1] in suffixes)
    config = LoraConfig(r=weights.rank, lora_alpha=weights.alpha, use_rslora=weights.use_rslora, lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM", target_modules=suffixes if complete else sorted(covered),
                        base_model_name_or_path=base_model_name_or_path)
    tensors = {}
    for path, (A, B) in weights.factors.items():
        tensors[f"{PREFIX}{path}.lora_A.weight"] = A.detach().cpu().contiguous()
        tensors[f"{PREFIX}{path}.lora_B.weight"] = B.detach().cpu().contiguous()
    with atomic_dir(out_dir) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / PEFT_WEIGHTS), metadata={"format": "pt"})
    return Path(out_dir)
