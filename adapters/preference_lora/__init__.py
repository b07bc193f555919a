"""Preference LoRA (Panacea, arXiv 2402.02030): one adapter for the whole Pareto front."""

from ..registry import register
from .config import PreferenceLoRAConfig
from .model import PreferenceLoRA

__all__ = ["PreferenceLoRA", "PreferenceLoRAConfig"]

register("preference_lora", PreferenceLoRAConfig, PreferenceLoRA, runtime_inputs=("preference",))
