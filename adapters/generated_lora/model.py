"""Attach and run a generated LoRA: a bank of expert LoRAs, blended per row by ``expert_weights``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.simplex import SIMPLEX_ATOL, check_preference, tracing

from ..base import Adapter, base_model_name
from ..peft_format import LoRAWeights, write_peft_lora
from .blend import check_experts
from .config import GeneratedLoRAConfig
from .layer import GeneratedLoRALayer

INPUT = "expert_weights"


class GeneratedLoRA(Adapter):
    """SG-LoRA served without materialising: row b's update is Σ_i w_bi ΔW_i over the bank's experts.

    >>> adapter = attach_experts(model, [alice, bob, carol])          # LoRAWeights (read_peft_lora)
    >>> with adapter.inputs(expert_weights=torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])):
    ...     logits = model(input_ids).logits                           # row 0 a blend, row 1 carol's LoRA
    >>> adapter.to_peft([0.7, 0.3, 0.0], "out/blend")                  # the same blend as a PEFT LoRA

    A row without weights is the base model. ``to_peft`` writes one row's blend as a standard PEFT
    LoRA of rank Σ r_i, so the per-user LoRA bank (or PEFT, vLLM) serves it unchanged.
    """

    config: GeneratedLoRAConfig

    def _make_layer(self, path: str, linear: nn.Linear) -> nn.Module:
        return GeneratedLoRALayer(linear.in_features, linear.out_features, self.config.expert_ranks, self.config.alpha)

    def check_row(self, name: str, value: Any) -> torch.Tensor:
        return check_preference(value, self.config.n_experts, field=INPUT).float()        # (n,)

    def stack_rows(self, name: str, rows: list) -> torch.Tensor:
        zero = torch.zeros(self.config.n_experts)                       # a row without weights: the base model
        return torch.stack([zero if r is None else r for r in rows])

    def _prepare_inputs(self, expert_weights: Any = None, **unknown: Any) -> dict[str, torch.Tensor]:
        if unknown or expert_weights is None:
            raise ConfigError(INPUT, f"Pass {INPUT}=(B, {self.config.n_experts}) only, a row per sequence.",
                              problem=f"got {sorted(unknown) or 'nothing'}")
        w = torch.as_tensor(expert_weights)
        if w.ndim != 2 or w.shape[1] != self.config.n_experts:
            raise ConfigError(INPUT, f"Pass (B, {self.config.n_experts}) weights, a row per sequence.",
                              problem=f"shape {tuple(w.shape)}")
        if tracing():                  # a graph input now: the runtime feeding it checks the values (its domain)
            return {INPUT: w.to(self.device)}
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ConfigError(INPUT, f"Pass (B, {self.config.n_experts}) finite weights ≥ 0, a row per sequence "
                              "(zeros: the base model).", problem=f"shape {tuple(w.shape)}")
        sums = w.double().sum(1)
        off = ((sums - 1).abs() > SIMPLEX_ATOL) & (sums != 0)
        if off.any():
            row = int(off.nonzero()[0])
            raise ConfigError(INPUT, "Make each row's weights sum to 1 (or all 0: the base model).",
                              problem=f"row {row} sums to {float(sums[row]):.8g}")
        return {INPUT: w.to(self.device)}

    def _merge_inputs(self, expert_weights: Any = None) -> dict[str, torch.Tensor]:
        return {INPUT: check_preference(expert_weights, self.config.n_experts, field=INPUT)}

    def _delta_weight(self, layer: nn.Module, expert_weights: torch.Tensor) -> torch.Tensor:
        return layer.delta_weight(expert_weights.to(layer.A.device))

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random simplex rows (Dirichlet(1)), one per sequence."""
        e = torch.empty(batch_size, self.config.n_experts).exponential_(generator=generator)
        return {INPUT: e / e.sum(-1, keepdim=True)}

    # -- the bank and its blends ------------------------------------------------------------------
    @torch.no_grad()
    def set_experts(self, experts: Sequence[LoRAWeights]) -> None:
        """Load the experts' factors, in bank order, each keeping its own scale exactly."""
        check_experts(experts)
        ranks = tuple(e.rank for e in experts)
        if ranks != self.config.expert_ranks:
            raise ConfigError("experts", f"Give {self.config.n_experts} experts of ranks {list(self.config.expert_ranks)}.",
                              problem=f"got ranks {list(ranks)}")
        for path, layer in self.layers.items():
            missing = [n for n, e in enumerate(experts) if path not in e.factors]
            if missing:
                raise ConfigError(f"experts[{missing[0]}]", "Give experts that adapt every module of the bank.",
                                  problem=f"it does not adapt {path}")
            A = torch.cat([e.factors[path][0].float() for e in experts])                      # (R, d_in)
            B = torch.cat([e.factors[path][1].float() * (e.scale / (self.config.alpha / e.rank)) for e in experts], 1)
            if A.shape != layer.A.shape or B.shape != layer.B.shape:
                raise ConfigError("experts", "Give experts trained on this base model.",
                                  problem=f"{path}: {tuple(B.shape)} x {tuple(A.shape)} does not fit")
            layer.A.copy_(A)
            layer.B.copy_(B)

    def blend(self, expert_weights: Sequence[float] | torch.Tensor) -> LoRAWeights:
        """One weight vector's blend as a LoRA of rank Σ r_i (scale 1): exactly what a row with it computes."""
        w = check_preference(expert_weights, self.config.n_experts, field=INPUT)
        rank = sum(self.config.expert_ranks)
        factors = {path: layer.factors(w.to(layer.A.device)) for path, layer in self.layers.items()}
        return LoRAWeights(rank=rank, alpha=float(rank), factors=factors, base_model=self.base_model)

    def to_peft(self, expert_weights: Sequence[float] | torch.Tensor, out_dir: str | Path) -> Path:
        """Write one weight vector's blend as a standard PEFT LoRA directory."""
        name = self.base_model or base_model_name(self.model)
        return write_peft_lora(self.blend(expert_weights), out_dir, list(self.layers), name)


def attach_experts(model: nn.Module, experts: Sequence[LoRAWeights]) -> GeneratedLoRA:
    """A generated-LoRA bank on ``model`` holding ``experts`` (PEFT LoRAs of one base, same modules)."""
    from .. import attach

    check_experts(experts)
    suffixes = tuple(sorted({p.rsplit(".", 1)[-1] for p in experts[0].factors}))
    rank = experts[0].rank
    adapter = attach(model, GeneratedLoRAConfig(expert_ranks=tuple(e.rank for e in experts), alpha=2.0 * rank,
                                                target_modules=suffixes))
    try:
        adapter.set_experts(experts)
    except BaseException:
        adapter.detach()
        raise
    adapter.base_model = next((e.base_model for e in experts if e.base_model), None)
    return adapter
