"""Configuration of the preference LoRA (Panacea)."""

from __future__ import annotations

from dataclasses import dataclass

from parsona.errors import ConfigError

from ..base import LLAMA_PROJECTIONS, AdapterConfig


@dataclass
class PreferenceLoRAConfig(AdapterConfig):
    """An SVD-LoRA whose last ``n_objectives`` singular values are the preference vector.

    rank:            k, the learned (preference-independent) singular values per Linear. 0 leaves only
                     the preference blocks: ΔW = s · Σ_i λ_i U_i V_iᵀ, Rewarded Soups' form trained as one.
    n_objectives:    m, the length of the preference vector λ (2 for helpful vs harmless).
    preference_rank: p, singular values (columns of U and V) per objective, each weighted by that
                     objective's λ_i; 1 is Panacea. The adapter's rank is rank + n_objectives · p.
    alpha:           the update is scaled by ``alpha / (rank + n_objectives · p)``, as LoRA scales by alpha / r.
    target_modules:  Linear layers to adapt, by name or name suffix (PEFT's rule).
    init:            "lora" (U = 0, V Kaiming, σ = s = 1: learns as fast as a LoRA) or "panacea"
                     (σ = s = 0, U, V ~ N(0, init_std²), as in the paper); both start at ΔW = 0.
    init_std:        std of the normal init of U and V for init="panacea".
    """

    rank: int = 8
    n_objectives: int = 2
    preference_rank: int = 1
    alpha: float = 16.0
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS
    init: str = "lora"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.target_modules = self.checked_targets(self.target_modules)
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError("rank", "Use a whole number ≥ 0 (8 is a good default).", problem=f"got {self.rank!r}")
        if not isinstance(self.n_objectives, int) or self.n_objectives < 2:
            raise ConfigError("n_objectives", "Use 2 or more objectives (one objective needs no preference vector).",
                              problem=f"got {self.n_objectives!r}")
        if not isinstance(self.preference_rank, int) or self.preference_rank < 1:
            raise ConfigError("preference_rank", "Use a whole number ≥ 1 (1 is Panacea: one singular value per objective).",
                              problem=f"got {self.preference_rank!r}")
        if not self.alpha > 0:
            raise ConfigError("alpha", "Use a positive number (e.g. 2 × rank).", problem=f"got {self.alpha!r}")
        if self.init not in ("lora", "panacea"):
            raise ConfigError("init", 'Use "lora" (default) or "panacea".', problem=f"got {self.init!r}")
        if not self.init_std > 0:
            raise ConfigError("init_std", "Use a small positive number such as 0.02.", problem=f"got {self.init_std!r}")
