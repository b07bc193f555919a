"""Generated LoRA (SG-LoRA, arXiv 2509.10535): a new user's LoRA blended from a bank of experts, no training."""

from ..registry import RuntimeInput, register
from .blend import blend_compact, blend_exact
from .config import GeneratedLoRAConfig
from .cvae import LoRAGenerator
from .model import GeneratedLoRA, attach_experts

__all__ = ["GeneratedLoRA", "GeneratedLoRAConfig", "LoRAGenerator", "attach_experts", "blend_compact", "blend_exact"]

register("generated_lora", GeneratedLoRAConfig, GeneratedLoRA, runtime_inputs=(RuntimeInput(
    "expert_weights", list[float], "Weights over the generated LoRA's experts, one per expert, ≥ 0 and summing to 1: "
    "the row's LoRA is their blend Σ w_i ΔW_i; omit for none.", domain="simplex_or_zero"),))
