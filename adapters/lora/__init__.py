"""Per-user LoRA: PEFT's file format, many resident at once, one per row of a batch."""

from ..registry import RuntimeInput, register
from .config import LoRAConfig
from .model import LoRA

__all__ = ["LoRA", "LoRAConfig"]

register("lora", LoRAConfig, LoRA, runtime_inputs=(RuntimeInput(
    "adapter", str, "The LoRA this row uses, by name in the bank (on the server: one of the caller's adapter ids, "
    "GET /v1/adapters); omit for none."),))
