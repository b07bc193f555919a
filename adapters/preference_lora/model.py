"""Attach, run, merge and export a preference LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.simplex import check_preference

from ..base import Adapter, base_model_name
from ..peft_format import LoRAWeights, write_peft_lora
from .config import PreferenceLoRAConfig
from .layer import PreferenceLoRALayer


class PreferenceLoRA(Adapter):
    """Panacea: one adapter whose preference vector λ (B, m) is a runtime input, one row each.

    >>> adapter = attach(model, PreferenceLoRAConfig(rank=8, n_objectives=2))
    >>> with adapter.inputs(preference=torch.tensor([[1.0, 0.0], [0.3, 0.7]])):
    ...     logits = model(input_ids).logits
    """

    config: PreferenceLoRAConfig

    def _make_layer(self, path: str, linear: nn.Linear) -> nn.Module:
        c = self.config
        return PreferenceLoRALayer(linear.in_features, linear.out_features, c.rank, c.n_objectives, c.alpha, c.init, c.init_std,
                                  c.preference_rank)

    def _prepare_inputs(self, preference: Any = None, **unknown: Any) -> dict[str, torch.Tensor]:
        if unknown:
            raise ConfigError(", ".join(unknown), "A preference LoRA takes only `preference`.", problem="unknown runtime input")
        return {"preference": self.check_preference(preference, batched=True).to(self.device)}

    def check_preference(self, preference: Any, batched: bool) -> torch.Tensor:
        """λ as a float tensor, (B, m) if ``batched`` else (m,), or a ConfigError saying what is wrong."""
        if preference is None:
            m = self.config.n_objectives
            raise ConfigError("preference", f"Pass a preference vector of {m} weights that sum to 1.", problem="missing")
        return check_preference(preference, self.config.n_objectives, batched=batched)

    def check_row(self, name: str, value: Any) -> torch.Tensor:
        return self.check_preference(value, batched=False).float()                      # (m,)

    def _merge_inputs(self, preference: Any = None) -> dict[str, torch.Tensor]:
        return {"preference": self.check_preference(preference, batched=False)}

    def _delta_weight(self, layer: nn.Module, preference: torch.Tensor) -> torch.Tensor:
        return layer.delta_weight(preference.to(layer.U.device))

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random simplex rows (Dirichlet(1) via normalised exponentials), one per sequence."""
        e = torch.empty(batch_size, self.config.n_objectives).exponential_(generator=generator)
        return {"preference": e / e.sum(-1, keepdim=True)}

    def to_peft(self, preference: Sequence[float] | torch.Tensor, out_dir: str | Path, base_model_name_or_path: str | None = None) -> Path:
        """Write the adapter at a fixed λ as a standard PEFT LoRA directory of rank k + m·p.

        PEFT computes ΔW = (lora_alpha / r) · B A; we write r = lora_alpha = k + m·p (scale 1),
        A = Vᵀ and B = (alpha / r) · U · diag(σ, s·λ), so PEFT, vLLM and LoRAX load it as-is.
        """
        lam = self.check_preference(preference, batched=False)
        r = self.config.rank + self.config.n_objectives * self.config.preference_rank
        factors = {path: layer.peft_factors(lam.to(layer.U.device)) for path, layer in self.layers.items()}
        name = base_model_name_or_path or self.base_model or base_model_name(self.model)
        return write_peft_lora(LoRAWeights(rank=r, alpha=float(r), factors=factors), out_dir, list(self.layers), name)
