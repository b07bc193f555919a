"""Configuration of a generated LoRA (SG-LoRA): a bank of expert LoRAs blended per row."""

from __future__ import annotations

from dataclasses import dataclass

from parsona.errors import ConfigError

from ..base import LLAMA_PROJECTIONS, AdapterConfig


@dataclass
class GeneratedLoRAConfig(AdapterConfig):
    """n expert LoRAs on the same modules, every row of a batch blending them with its own weights.

    expert_ranks:    r_i of each expert, in bank order; n = len(expert_ranks) ≥ 2 (one expert is a LoRA).
    alpha:           expert i's update is scaled alpha / r_i, as a LoRA's; experts imported with
                     :func:`attach_experts` keep their own scale exactly.
    target_modules:  Linear layers the experts adapt (every expert adapts all of them).
    """

    expert_ranks: tuple[int, ...] = (4, 4)
    alpha: float = 8.0
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS

    def __post_init__(self) -> None:
        self.target_modules = self.checked_targets(self.target_modules)
        ranks = tuple(self.expert_ranks) if isinstance(self.expert_ranks, (list, tuple)) else ()
        if len(ranks) < 2 or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks):
            raise ConfigError("expert_ranks", "List two or more whole-number ranks ≥ 1, one per expert.",
                              problem=f"got {self.expert_ranks!r:.80}")
        self.expert_ranks = ranks
        if not self.alpha > 0:
            raise ConfigError("alpha", "Use a positive number (e.g. 2 × rank).", problem=f"got {self.alpha!r}")

    @property
    def n_experts(self) -> int:
        return len(self.expert_ranks)
