"""Blend several LoRAs into one: the weighted sum of their updates, exactly or compacted to a rank.

    blended = blend_exact([alice, bob], [0.7, 0.3])                 # rank r_1 + r_2, exactly Σ w_i ΔW_i
    small, errors = blend_compact([alice, bob], [0.7, 0.3], rank=8)  # rank 8, per-module relative error

For expert LoRAs i with ΔW_i = s_i B_i A_i (s_i = alpha_i / r_i, or / √r_i with rsLoRA) and
weights w on the simplex, every adapted module gets

    ΔW = Σ_i w_i s_i B_i A_i = [w_1 s_1 B_1 | … | w_n s_n B_n] · [A_1; …; A_n]     (d_out, d_in)

so the exact blend is one LoRA of rank Σ r_i with B and A concatenated and scale 1 (PEFT's
``add_weighted_adapter(..., combination_type="cat")``). The compact blend is its best rank-r
approximation (Eckart–Young), computed without forming ΔW: QR of B and of Aᵀ leave a small
(Σr, Σr) core whose SVD gives ΔW's singular values σ; the relative Frobenius error of keeping r
of them is √(Σ_{k>r} σ_k²) / √(Σ_k σ_k²). Experts must share a base model and adapt the same
modules (a blend of LoRAs of different bases means nothing). The results are :class:`LoRAWeights`,
written as PEFT LoRAs by ``write_peft_lora``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from parsona.errors import ConfigError
from parsona.simplex import check_preference

from ..peft_format import LoRAWeights


def blend_exact(experts: Sequence[LoRAWeights], weights) -> LoRAWeights:
    """One LoRA of rank Σ r_i whose update is exactly Σ w_i ΔW_i (w on the simplex)."""
    check_experts(experts)
    return combine(experts, check_weights(len(experts), weights))


def blend_compact(experts: Sequence[LoRAWeights], weights, rank: int) -> tuple[LoRAWeights, dict[str, float]]:
    """The best rank-``rank`` LoRA to Σ w_i ΔW_i per module, and each module's relative Frobenius error."""
    return compact(blend_exact(experts, weights), rank)


def combine(experts: Sequence[LoRAWeights], coefficients: torch.Tensor) -> LoRAWeights:
    """Σ c_i ΔW_i for any real coefficients (c_i may be negative: the generator's points in the bank's
    affine span), as one LoRA of rank Σ r_i and scale 1. Callers have checked the experts."""
    factors = {}
    for path in experts[0].factors:
        A = torch.cat([e.factors[path][0].float() for e in experts], 0)                           # (Σr, d_in)
        B = torch.cat([e.factors[path][1].float() * (float(c) * e.scale)
                       for e, c in zip(experts, coefficients)], 1)                                # (d_out, Σr)
        factors[path] = (A, B)
    rank = sum(e.rank for e in experts)
    return LoRAWeights(rank=rank, alpha=float(rank), factors=factors, base_model=_base(experts))  # scale 1


def compact(lora: LoRAWeights, rank: int) -> tuple[LoRAWeights, dict[str, float]]:
    """The best rank-``rank`` approximation of every module's ΔW (never above the LoRA's own rank: padding
    with zeros would only cost memory), and each module's relative error."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ConfigError("rank", "Use a whole number ≥ 1.", problem=f"got {rank!r}")
    rank = min(rank, lora.rank)
    factors, errors = {}, {}
    for path, (A, B) in lora.factors.items():
        B = B.double() * lora.scale
        Q_b, R_b = torch.linalg.qr(B)                        # B = Q_b R_b     (d_out, R), (R, R)
        Q_a, R_a = torch.linalg.qr(A.double().T)             # Aᵀ = Q_a R_a    (d_in, R), (R, R)
        U, S, Vh = torch.linalg.svd(R_b @ R_a.T)             # ΔW = Q_b U S Vh Q_aᵀ
        total = S.square().sum()
        errors[path] = float((S[rank:].square().sum() / total).sqrt()) if total > 0 else 0.0
        B_r = (Q_b @ U[:, :rank]) * S[:rank]                  # (d_out, rank)
        A_r = Vh[:rank] @ Q_a.T                               # (rank, d_in)
        factors[path] = (A_r.float(), B_r.float())
    return LoRAWeights(rank=rank, alpha=float(rank), factors=factors, base_model=lora.base_model), errors


def check_experts(experts: Sequence[LoRAWeights]) -> None:
    """A ConfigError naming ``experts`` or ``experts[i]`` unless they share a base model and module shapes."""
    if not experts:
        raise ConfigError("experts", "Give at least one expert LoRA to blend.", problem="empty bank")
    first = experts[0]
    named = next(((n, e.base_model) for n, e in enumerate(experts) if e.base_model), None)
    for n, e in enumerate(experts):
        if set(e.factors) != set(first.factors):
            odd = sorted(set(e.factors) ^ set(first.factors))[0]
            raise ConfigError(f"experts[{n}]", "Blend LoRAs that adapt the same modules (train them with one "
                              "target_modules).", problem=f"{odd} is adapted by only one of experts[0] and experts[{n}]")
        if e.base_model and e.base_model != named[1]:
            raise ConfigError(f"experts[{n}]", "Blend LoRAs of one base model.",
                              problem=f"{e.base_model!r} vs experts[{named[0]}]'s {named[1]!r}")
        for path, (A, B) in e.factors.items():
            A0, B0 = first.factors[path]
            if (B.shape[0], A.shape[1]) != (B0.shape[0], A0.shape[1]):
                raise ConfigError(f"experts[{n}]", "Blend LoRAs of one base model (same module shapes).",
                                  problem=f"{path} is {(B.shape[0], A.shape[1])}, experts[0]'s is {(B0.shape[0], A0.shape[1])}")


def check_weights(n: int, weights) -> torch.Tensor:
    """The weights in float64, one per each of ``n`` experts, ≥ 0 and summing to 1, or a ConfigError
    naming ``weights``."""
    if n == 1:                                    # the simplex check wants ≥ 2 entries
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.shape != (1,) or float(w[0]) != 1.0:
            raise ConfigError("weights", "Give the one expert the weight 1.", problem=f"got {weights!r:.80}")
        return w
    if hasattr(weights, "__len__") and len(weights) != n:
        raise ConfigError("weights", f"Give {n} non-negative weights that sum to 1, one per expert.",
                          problem=f"got {len(weights)}")
    return check_preference(weights, n, field="weights").double()


def _base(experts: Sequence[LoRAWeights]) -> str | None:
    return next((e.base_model for e in experts if e.base_model), None)
