"""The math of one preference-LoRA Linear (Panacea, arXiv 2402.02030).

    h = W0 x + (alpha / (k + m)) · U · diag([σ_1..σ_k, s·λ_1..s·λ_m]) · Vᵀ x

U (d_out, k+m), V (d_in, k+m), σ (k) learned, s a learned per-layer scale, λ (B, m) given per
row. With ``preference_rank`` p > 1 each λ_i fills p singular values instead of one (U and V get
k + m·p columns): Panacea is p = 1, and p > 1 gives each objective a rank-p subspace of its own,
as each LoRA of Rewarded Soups has (below, "m" reads "m·p"). Two initialisations, both with
ΔW = 0 so the adapted model starts equal to the base:

- "lora" (default): U = 0, V Kaiming-uniform, σ = s = 1, as LoRA starts B = 0 and A Kaiming.
  Every entry of U gets a gradient at step 0, so ΔW grows as fast as a plain LoRA's.
- "panacea": σ = s = 0, U and V ~ N(0, std²) (Panacea follows AdaLoRA). At step 0 only the k + 1
  scalars σ and s have a gradient; on SmolLM2 ΔW was ~36× smaller than a plain LoRA's after 4
  steps, too slow for short CPU runs. (U = 0 with σ = s = 0 would have no gradient at all.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from parsona.simplex import exporting

from ..base import add_product, plain_inference


class PreferenceLoRALayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, n_objectives: int, alpha: float, init: str = "lora",
                 init_std: float = 0.02, preference_rank: int = 1):
        super().__init__()
        self.rank, self.n_objectives, self.preference_rank = rank, n_objectives, preference_rank
        width = rank + n_objectives * preference_rank                          # singular values per row
        self.scaling = alpha / width
        if init == "lora":
            V = torch.empty(width, d_in)
            nn.init.kaiming_uniform_(V, a=math.sqrt(5))                      # as PEFT inits lora_A
            self.U = nn.Parameter(torch.zeros(d_out, width))
            self.V = nn.Parameter(V.T.contiguous())
            self.sigma = nn.Parameter(torch.ones(rank))
            self.pref_scale = nn.Parameter(torch.ones(()))
        else:
            self.U = nn.Parameter(torch.randn(d_out, width) * init_std)
            self.V = nn.Parameter(torch.randn(d_in, width) * init_std)
            self.sigma = nn.Parameter(torch.zeros(rank))
            self.pref_scale = nn.Parameter(torch.zeros(()))
        self._cache: tuple | None = None  # (preference, (dtype, versions), factors), see _inference_factors

    def singular_values(self, preference: torch.Tensor) -> torch.Tensor:
        """[σ, s·λ] per row: (B, m) -> (B, k + m·p), each λ_i repeated p = preference_rank times."""
        sigma = self.sigma.expand(preference.shape[0], self.rank)                 # (B, k)
        return torch.cat([sigma, self.pref_scale * self._repeated(preference)], dim=-1)  # (B, k + m·p)

    def _repeated(self, preference: torch.Tensor) -> torch.Tensor:
        """λ with each λ_i repeated p = preference_rank times: (B, m) -> (B, m·p)."""
        p = self.preference_rank
        return preference.repeat_interleave(p, dim=-1) if p > 1 else preference

    def forward(self, x: torch.Tensor, out: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """``out`` + ΔW_row x for every row; x (B, T, d_in), out (B, T, d_out), preference (B, m)."""
        if x.shape[0] != preference.shape[0]:
            raise ValueError(f"preference has {preference.shape[0]} rows but the batch has {x.shape[0]}")
        if plain_inference():
            V_t, diag, U_t = self._inference_factors(preference, x.dtype)
            z = F.linear(x, V_t).mul_(diag)                              # (B, T, k+m)
        elif exporting():                                                # torch.export (ONNX)
            return self._exported(x, out, preference)
        else:  # autograd or tracing: plain ops on the parameters, λ stays a graph input
            U_t = self.U.to(x.dtype).T
            z = (x @ self.V.to(x.dtype)) * self.singular_values(preference.to(x.dtype)).unsqueeze(1)
        # at decode (T = 1) every kernel counts: U's product and the add to W0 x are one GEMM
        return add_product(out, z, U_t, alpha=self.scaling)              # (B, T, d_out)

    def _exported(self, x: torch.Tensor, out: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """The same ΔW x in the fewest graph nodes, for torch.export / ONNX (at decode each node is a kernel launch).

        [σ, s·λ] = [σ, s·1] ⊙ [1, λ]: the first factor and the scaling are constants, folded into U
        at export; the second depends on λ alone, so one node computes it for every layer. What is
        left per Linear is MatMul (x V), Mul (by [1, λ]), MatMul (by Uᵀ) and Add (to W0 x).
        """
        m_p = self.n_objectives * self.preference_rank
        constant = torch.cat([self.sigma, self.pref_scale.expand(m_p)]) * self.scaling          # (k + m·p,)
        U_t = (self.U * constant).T.to(x.dtype)                                                  # (k + m·p, d_out)
        lam = self._repeated(preference)                                                        # (B, m·p)
        row = torch.cat([lam.new_ones(lam.shape[0], self.rank), lam], dim=-1) if self.rank else lam  # (B, k + m·p)
        z = (x @ self.V.to(x.dtype)) * row.to(x.dtype).unsqueeze(1)                               # (B, T, k + m·p)
        return out + z @ U_t                                                                     # (B, T, d_out)

    def _inference_factors(self, preference: torch.Tensor, dtype: torch.dtype):
        """(Vᵀ, [σ, s·λ] as (B, 1, k+m), Uᵀ), contiguous in ``dtype``, kept while ``preference`` (one
        ``inputs()`` block) and the parameters stay the same: every decode step of a batch reuses them.

        Transposed copies because a (B, d_in) x (d_in, k+m) product with k+m ≈ 10 columns ran ~40 %
        slower on CPU than the same product against a contiguous (k+m, d_in) matrix, and at decode
        these small GEMMs, not FLOPs, are what the adapter costs.
        """
        key = (dtype, preference._version, self.U._version, self.V._version, self.sigma._version,
               self.pref_scale._version)
        cached = self._cache
        if cached is None or cached[0] is not preference or cached[1] != key:
            diag = self.singular_values(preference.to(dtype)).unsqueeze(1)
            factors = (self.V.T.to(dtype).contiguous(), diag, self.U.T.to(dtype).contiguous())
            self._cache = cached = (preference, key, factors)
        return cached[2]

    def release_cache(self) -> None:
        self._cache = None

    def delta_weight(self, preference: torch.Tensor) -> torch.Tensor:
        """ΔW (d_out, d_in) for one preference (m,)."""
        diag = self.singular_values(preference.reshape(1, -1).to(self.U.dtype))[0]  # (k+m,)
        return (self.U * diag) @ self.V.T * self.scaling

    def peft_factors(self, preference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) with B @ A = ΔW: A = Vᵀ (k+m, d_in), B = scaling · U · diag (d_out, k+m)."""
        diag = self.singular_values(preference.reshape(1, -1).to(self.U.dtype))[0]
        return self.V.T.contiguous(), (self.U * diag * self.scaling).contiguous()
