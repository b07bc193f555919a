"""Read and write one LoRA as a standard PEFT directory (PEFT is the per-user LoRA file format).

A PEFT LoRA directory holds ``adapter_config.json`` (a ``peft.LoraConfig``) and
``adapter_model.safetensors`` with keys ``base_model.model.<module path>.lora_{A,B}.weight``.
Pickled ``adapter_model.bin`` files are refused: a user's upload must never run code.

:func:`read_peft_lora` is the one validator of a LoRA directory, used when a user uploads one and
again each time the host loads one: the config is bounded in size and depth and checked field by
field (``r`` a whole number in 1..MAX_RANK that every tensor's rank matches, ``lora_alpha`` finite
in (0, MAX_ALPHA], no option that changes the math this reader implements), and every tensor is
finite floating point. Whatever passes can be served without making a row's scores non-finite.
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
MAX_CONFIG_BYTES = 64 << 10   # a LoraConfig is ~1 KiB; a config this large is not one
MAX_JSON_DEPTH = 16           # a LoraConfig nests 2 deep; a deep one would exhaust the parser's stack
MAX_RANK = 1024
MAX_ALPHA = 1e5
# Options that change the math this reader implements (ΔW = alpha / r · B A on the named Linears):
# allowed only at the value that leaves it unchanged.
NEUTRAL_OPTIONS = {"use_dora": (False, None), "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
                   "bias": ("none", None), "modules_to_save": (None, []), "fan_in_fan_out": (False, None),
                   "lora_bias": (False, None), "trainable_token_indices": (None, {}, []),
                   "target_parameters": (None, []), "use_qalora": (False, None)}


@dataclass
class LoRAWeights:
    """One LoRA: per module path, A (r, d_in) and B (d_out, r); ΔW = scale · B A. ``base_model``: the
    base it was trained on, as its config records it (PEFT's ``base_model_name_or_path``), if known."""

    rank: int
    alpha: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    use_rslora: bool = False
    base_model: str | None = None

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank


def read_peft_lora(directory: str | Path) -> LoRAWeights:
    """Load a PEFT LoRA directory, or raise a ConfigError naming the file and field at fault."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_file, weights_file = directory / PEFT_CONFIG, directory / PEFT_WEIGHTS
    cfg = _read_config(config_file)
    rank, alpha, rslora = _checked_fields(cfg, config_file)
    if not weights_file.is_file():
        pickled = " (pickled adapter_model.bin files are refused: convert to safetensors)" if (directory / "adapter_model.bin").exists() else ""
        raise ConfigError(str(weights_file), "Save the LoRA with safetensors (PEFT's default).", problem="file is missing" + pickled)
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(str(weights_file), "Save the LoRA again; the file is corrupt.", problem=str(exc)[:200]) from None
    factors = _factors(tensors, weights_file)
    _check_tensors(factors, rank, weights_file)
    base = cfg.get("base_model_name_or_path")
    return LoRAWeights(rank, alpha, factors, rslora, base if isinstance(base, str) and base else None)


def peft_lora_rank(directory: str | Path) -> int:
    """A PEFT LoRA directory's rank ``r``, from its config alone (checked as :func:`read_peft_lora` checks it)."""
    config_file = Path(directory) / PEFT_CONFIG
    return _checked_fields(_read_config(config_file), config_file)[0]


def _read_config(config_file: Path) -> dict:
    if not config_file.is_file():
        raise ConfigError(str(config_file), "Point to a PEFT LoRA directory.", problem="file is missing")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(str(config_file), "Save the LoRA again with PEFT.",
                          problem=f"{config_file.stat().st_size} bytes is too large for a LoRA config")
    text = config_file.read_bytes()
    if _depth(text) > MAX_JSON_DEPTH:
        raise ConfigError(str(config_file), "Save the LoRA again with PEFT.", problem=f"nested over {MAX_JSON_DEPTH} deep")
    try:
        cfg = json.loads(text)
    except ValueError as exc:  # bad JSON, bad UTF-8, numbers too large for a float
        raise ConfigError(str(config_file), "Save the LoRA again with PEFT.", problem=f"not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ConfigError(f"{config_file}: peft_type", "Only PEFT LoRA adapters are supported.",
                          problem=f"got {cfg.get('peft_type') if isinstance(cfg, dict) else type(cfg).__name__!r:.40}")
    return cfg


def _depth(text: bytes) -> int:
    """How deep brackets nest, outside strings: checked before parsing, so a deep document never recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in text:
        if in_string:
            escaped, in_string = (not escaped and byte == 0x5C), in_string and (escaped or byte != 0x22)
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _checked_fields(cfg: dict, source: Path) -> tuple[int, float, bool]:
    """(r, lora_alpha, use_rslora), each of the right type and in bounds, or a ConfigError naming it."""
    r, alpha, rslora = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("use_rslora", False)
    if not (type(r) is int and 1 <= r <= MAX_RANK):   # type(): True is an int, 1.5 and "8" are not
        raise ConfigError(f"{source}: r", f"Use a whole number from 1 to {MAX_RANK}.", problem=f"got {r!r:.40}")
    if not (type(alpha) in (int, float) and 0 < alpha <= MAX_ALPHA and math.isfinite(alpha)):  # huge ints compare, never convert
        raise ConfigError(f"{source}: lora_alpha", f"Use a finite number in (0, {MAX_ALPHA:g}].", problem=f"got {alpha!r:.40}")
    if rslora is None:
        rslora = False
    if type(rslora) is not bool:
        raise ConfigError(f"{source}: use_rslora", "Use true or false.", problem=f"got {rslora!r:.40}")
    for option, neutral in NEUTRAL_OPTIONS.items():
        if option in cfg and cfg[option] not in neutral:
            raise ConfigError(f"{source}: {option}", "Save a plain LoRA (no DoRA, patterns, bias, extra modules "
                              "or transposed weights).", problem=f"{cfg[option]!r:.60} is not supported")
    return r, float(alpha), rslora


def _check_tensors(factors: dict, rank: int, source: Path) -> None:
    for path, (A, B) in factors.items():
        if not (A.is_floating_point() and B.is_floating_point()) or A.ndim != 2 or B.ndim != 2:
            raise ConfigError(f"{source}: {path}", "Save floating-point 2-D lora_A/lora_B matrices.",
                              problem=f"got {A.dtype} {tuple(A.shape)}, {B.dtype} {tuple(B.shape)}")
        if A.shape[0] != rank or B.shape[1] != rank:
            raise ConfigError(f"{source}: {path}", f"Save matrices of the config's rank r = {rank}.",
                              problem=f"lora_A {tuple(A.shape)}, lora_B {tuple(B.shape)}")
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise ConfigError(f"{source}: {path}", "Save finite weights.", problem="it holds NaN or inf")


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
