"""Per-user LoRA: PEFT's file format, many resident at once, one per row of a batch."""

from ..registry import register
from .config import LoRAConfig
from .model import LoRA

__all__ = ["LoRA", "LoRAConfig"]

register("lora", LoRAConfig, LoRA, runtime_inputs=("adapter_names",))
