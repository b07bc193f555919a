"""Configuration of the per-user LoRA bank."""

from __future__ import annotations

from dataclasses import dataclass

from parsona.errors import ConfigError

from ..base import LLAMA_PROJECTIONS, AdapterConfig


@dataclass
class LoRAConfig(AdapterConfig):
    """Per-user LoRAs (Hu et al. 2021, arXiv 2106.09685), many resident at once.

    rank, alpha, dropout:  of the LoRAs this bank creates (ΔW = alpha / rank · B A, PEFT's scale).
                           LoRAs loaded from PEFT directories keep their own rank and alpha.
    target_modules:        Linear layers the bank adapts; a user's LoRA may cover any subset.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS

    def __post_init__(self) -> None:
        self.target_modules = self.checked_targets(self.target_modules)
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError("rank", "Use a whole number ≥ 1 (8 is a good default).", problem=f"got {self.rank!r}")
        if not self.alpha > 0:
            raise ConfigError("alpha", "Use a positive number (e.g. 2 × rank).", problem=f"got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", "Use a probability in [0, 1).", problem=f"got {self.dropout!r}")
