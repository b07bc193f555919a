"""Attach, run, merge and export a preference LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from parsona.errors import ConfigError
from ..base import Adapter
from ..peft_format import LoRAWeights, write_peft_lora
from .config import PreferenceLoRAConfig
from .layer import PreferenceLoRALayer

SIMPLEX_TOLERANCE = 1e-5


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
        m = self.config.n_objectives
        if preference is None:
            raise ConfigError("preference", f"Pass a preference vector of {m} weights that sum to 1.", problem="missing")
        lam = torch.as_tensor(preference, dtype=torch.float32)
        want = 2 if batched else 1
        if lam.ndim != want or lam.shape[-1] != m:
            shape = f"(B, {m})" if batched else f"({m},)"
            raise ConfigError("preference", f"Pass shape {shape}: {m} weights per row, one row per sequence.",
                              problem=f"got shape {tuple(lam.shape)}")
        if not torch.isfinite(lam).all():
            raise ConfigError("preference", "Every weight must be a finite number.", problem="contains NaN or inf")
        if (lam < 0).any():
            raise ConfigError("preference", "Weights must be ≥ 0.", problem="has a negative entry")
        bad = ((lam.sum(-1) - 1).abs() > SIMPLEX_TOLERANCE).nonzero().flatten().tolist() if batched else []
        if bad or (not batched and abs(float(lam.sum()) - 1) > SIMPLEX_TOLERANCE):
            where = f"row {bad[0]} sums to {float(lam[bad[0]].sum()):.6g}" if bad else f"sums to {float(lam.sum()):.6g}"
            raise ConfigError("preference", "Weights must sum to 1 (divide by their sum).", problem=where)
        return lam

    def _delta_weight(self, layer: nn.Module, preference: Any = None) -> torch.Tensor:
        return layer.delta_weight(self.check_preference(preference, batched=False).to(layer.U.device))

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
        name = base_model_name_or_path or getattr(self.model, "name_or_path", None)
        return write_peft_lora(LoRAWeights(rank=r, alpha=float(r), factors=factors), out_dir, list(self.layers), name)
