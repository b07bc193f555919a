"""The math of one generated-LoRA Linear: every row blends the bank's experts with its own weights.

    h = W0 x + Σ_i w_i s_i B_i A_i x = W0 x + B · diag(s ⊙ w[expert]) · A x

A (R, d_in) and B (d_out, R) are the experts' factors stacked (R = Σ r_i, expert i owns columns
offset_i .. offset_i + r_i), s (R,) each column's expert scale, w (B, n) the rows' weights. So a row's
update is exactly the rank-concatenated blend of PEFT's ``add_weighted_adapter(combination_type="cat")``,
computed as one LoRA of rank R whose singular-value-like diagonal is set per row, as the preference
LoRA sets λ per row.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..base import add_product


class GeneratedLoRALayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, ranks: tuple[int, ...], alpha: float):
        super().__init__()
        R = sum(ranks)
        A = torch.empty(R, d_in)
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))                       # as PEFT inits lora_A
        self.A = nn.Parameter(A)                                          # (R, d_in)
        self.B = nn.Parameter(torch.zeros(d_out, R))                      # (d_out, R): ΔW = 0 at init
        expert = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))
        self.register_buffer("expert", expert, persistent=False)          # (R,) which expert owns a column
        self.register_buffer("scale", torch.tensor([alpha / r for r in ranks])[expert], persistent=False)  # (R,)

    def diagonal(self, weights: torch.Tensor) -> torch.Tensor:
        """(B, n) expert weights -> (B, R): each column scaled by its expert's weight and scale."""
        return weights[:, self.expert] * self.scale

    def forward(self, x: torch.Tensor, out: torch.Tensor, expert_weights: torch.Tensor) -> torch.Tensor:
        """``out`` + ΔW_row x for every row; x (B, T, d_in), out (B, T, d_out), expert_weights (B, n)."""
        if x.shape[0] != expert_weights.shape[0]:
            raise ValueError(f"expert_weights has {expert_weights.shape[0]} rows but the batch has {x.shape[0]}")
        z = F.linear(x, self.A.to(x.dtype)) * self.diagonal(expert_weights.to(x.dtype)).unsqueeze(1)  # (B, T, R)
        return add_product(out, z, self.B.to(x.dtype).T)                                               # (B, T, d_out)

    def factors(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of one weight vector (n,)'s blend as a LoRA of rank R and scale 1: ΔW = B A."""
        return self.A.detach().clone(), (self.B * self.diagonal(weights.reshape(1, -1).to(self.B.dtype))[0]).detach()

    def delta_weight(self, weights: torch.Tensor) -> torch.Tensor:
        A, B = self.factors(weights)
        return B @ A                                                                                    # (d_out, d_in)
