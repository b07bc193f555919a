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
of them is √(Σ_{k>r} σ_k²) / √(Σ_k σ_k²). A module only some experts adapt counts as ΔW_i = 0
for the others. The results are :class:`LoRAWeights`, written as PEFT LoRAs by ``write_peft_lora``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from parsona.errors import ConfigError

from .peft_format import LoRAWeights


def blend_exact(experts: Sequence[LoRAWeights], weights) -> LoRAWeights:
    """One LoRA of rank Σ r_i whose update is exactly Σ w_i ΔW_i on every module any expert adapts."""
    w = _checked(experts, weights)
    rank = sum(e.rank for e in experts)
    factors = {}
    for path in _paths(experts):
        A, B = [], []
        for e, w_i in zip(experts, w.tolist()):
            A_i, B_i = e.factors.get(path, (None, None))
            if A_i is None:                                   # this expert leaves the module alone: ΔW_i = 0
                A_i, B_i = _zeros_like_module(experts, path, e.rank)
            A.append(A_i.float())                             # (r_i, d_in)
            B.append(B_i.float() * (w_i * e.scale))           # (d_out, r_i)
        factors[path] = (torch.cat(A, 0), torch.cat(B, 1))    # (Σr, d_in), (d_out, Σr)
    return LoRAWeights(rank=rank, alpha=float(rank), factors=factors)   # scale alpha / rank = 1


def blend_compact(experts: Sequence[LoRAWeights], weights, rank: int) -> tuple[LoRAWeights, dict[str, float]]:
    """The best rank-``rank`` LoRA to Σ w_i ΔW_i per module, and each module's relative Frobenius error."""
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError("rank", "Use a whole number ≥ 1.", problem=f"got {rank!r}")
    exact = blend_exact(experts, weights)
    factors, errors = {}, {}
    for path, (A, B) in exact.factors.items():
        Q_b, R_b = torch.linalg.qr(B.double())               # B = Q_b R_b     (d_out, R), (R, R)
        Q_a, R_a = torch.linalg.qr(A.double().T)             # Aᵀ = Q_a R_a    (d_in, R), (R, R)
        U, S, Vh = torch.linalg.svd(R_b @ R_a.T)             # ΔW = Q_b U S Vh Q_aᵀ
        k = min(rank, len(S))
        total = S.square().sum()
        errors[path] = float((S[k:].square().sum() / total).sqrt()) if total > 0 else 0.0
        B_r = (Q_b @ U[:, :k]) * S[:k]                        # (d_out, k)
        A_r = Vh[:k] @ Q_a.T                                  # (k, d_in)
        if k < rank:                                          # fewer singular values than asked: pad with zeros
            B_r = torch.cat([B_r, B_r.new_zeros(B_r.shape[0], rank - k)], 1)
            A_r = torch.cat([A_r, A_r.new_zeros(rank - k, A_r.shape[1])], 0)
        factors[path] = (A_r.float(), B_r.float())
    return LoRAWeights(rank=rank, alpha=float(rank), factors=factors), errors


def _checked(experts: Sequence[LoRAWeights], weights) -> torch.Tensor:
    if not experts:
        raise ConfigError("experts", "Give at least one expert LoRA to blend.", problem="empty bank")
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (len(experts),) or not torch.isfinite(w).all() or (w < 0).any() or abs(float(w.sum()) - 1) > 1e-6:
        raise ConfigError("weights", f"Give {len(experts)} non-negative weights that sum to 1, one per expert.",
                          problem=f"got {w.tolist() if w.ndim == 1 else weights!r:.80}")
    shapes = {}
    for n, e in enumerate(experts):
        for path, (A, B) in e.factors.items():
            shape = (B.shape[0], A.shape[1])                 # (d_out, d_in): the module's weight
            if shapes.setdefault(path, shape) != shape:
                raise ConfigError(f"experts[{n}]", "Blend LoRAs of one base model (same module shapes).",
                                  problem=f"{path} is {shape}, another expert's is {shapes[path]}")
    return w


def _paths(experts: Sequence[LoRAWeights]) -> list[str]:
    return sorted({p for e in experts for p in e.factors})


def _zeros_like_module(experts: Sequence[LoRAWeights], path: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    A, B = next(e.factors[path] for e in experts if path in e.factors)
    return A.new_zeros(rank, A.shape[1]), B.new_zeros(B.shape[0], rank)
