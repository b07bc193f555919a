"""Preference LoRA (Panacea, arXiv 2402.02030): one adapter for the whole Pareto front."""

from ..registry import RuntimeInput, register
from .config import PreferenceLoRAConfig
from .model import PreferenceLoRA

__all__ = ["PreferenceLoRA", "PreferenceLoRAConfig"]

register("preference_lora", PreferenceLoRAConfig, PreferenceLoRA, runtime_inputs=(RuntimeInput(
    "preference", list[float], "Preference vector λ over the objectives: n_objectives weights ≥ 0 that sum to 1.",
    required=True, domain="simplex"),))
