"""The math of one Linear adapted by a bank of LoRAs, a different LoRA per row.

For row b using LoRA u(b):   Δh_b = scale_u · B_u A_u x_b       A_u (r, d_in), B_u (d_out, r)

Three paths, the same numbers:
- training (gradients wanted): loop over the LoRAs present in the batch, as PEFT does;
- one LoRA for the whole batch: two plain matmuls;
- mixed batch at inference: gather each row's A and B from stacked copies and run two batched
  matmuls (the S-LoRA / Punica idea in plain torch). Slot 0 of the stack is all zeros, for rows
  without a LoRA; ranks are zero-padded to the largest, which leaves B A unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..base import add_product, plain_inference


class LoRABankLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, dropout: float = 0.0):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.A = nn.ParameterDict()   # name -> (r, d_in)
        self.B = nn.ParameterDict()   # name -> (d_out, r)
        self.scale: dict[str, float] = {}
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._stack: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self.names: tuple[str, ...] = ()  # the bank's slot order, shared by every layer
        self._rows: tuple | None = None   # (lora_index, names, (dtype, version), A rows, Bᵀ rows): rows()

    def add(self, name: str, rank: int, scale: float) -> None:
        """A fresh LoRA with PEFT's init: A Kaiming-uniform, B zero, so ΔW = 0."""
        A = torch.empty(rank, self.d_in, device=self._device())
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        self.A[name] = nn.Parameter(A)
        self.B[name] = nn.Parameter(torch.zeros(self.d_out, rank, device=self._device()))
        self.scale[name] = scale

    def set(self, name: str, A: torch.Tensor, B: torch.Tensor, scale: float) -> None:
        self.A[name] = nn.Parameter(A.to(self._device()))
        self.B[name] = nn.Parameter(B.to(self._device()))
        self.scale[name] = scale

    def remove(self, name: str) -> None:
        if name in self.A:
            del self.A[name], self.B[name], self.scale[name]

    def _device(self) -> torch.device:
        return next(iter(self.A.values())).device if len(self.A) else torch.device("cpu")

    def forward(self, x: torch.Tensor, out: torch.Tensor, lora_index: torch.Tensor, lora_rows: tuple,
                lora_present: tuple[str, ...], lora_uniform: str | None) -> torch.Tensor:
        """``out`` + each row's LoRA delta. x (B, T, d_in), out (B, T, d_out).

        lora_rows[b] is row b's LoRA name or None, lora_index (B,) its slot in ``names``,
        lora_present the distinct names, lora_uniform the name when every row has the same one.
        """
        A_ = self.A._parameters
        if lora_uniform is not None:
            return self._one(x, out, lora_uniform) if lora_uniform in A_ else out
        if len(lora_rows) != x.shape[0]:
            raise ValueError(f"adapter has {len(lora_rows)} rows but the batch has {x.shape[0]}")
        present = [n for n in lora_present if n in A_]                 # the LoRAs that adapt this Linear
        if not present:
            return out
        if torch.is_grad_enabled() and any(A_[n].requires_grad or self.B._parameters[n].requires_grad for n in present):
            return self._grouped(x, out, lora_rows, present)
        return self._gathered(x, out, lora_index, present)

    def _one(self, x: torch.Tensor, out: torch.Tensor, name: str) -> torch.Tensor:
        z = self.dropout(x) @ self.A[name].to(x.dtype).T               # (B, T, r)
        return add_product(out, z, self.B[name].to(x.dtype).T, alpha=self.scale[name])  # (B, T, d_out)

    def _grouped(self, x: torch.Tensor, out: torch.Tensor, lora_rows: tuple, present: list[str]) -> torch.Tensor:
        for name in present:
            rows = torch.tensor([i for i, n in enumerate(lora_rows) if n == name], device=x.device)
            out = out.index_copy(0, rows, self._one(x.index_select(0, rows), out.index_select(0, rows), name))
        return out

    def _gathered(self, x: torch.Tensor, out: torch.Tensor, lora_index: torch.Tensor, present: list[str]) -> torch.Tensor:
        A, Bt = self.rows(lora_index, x.dtype, present)               # (B, r, d_in), (B, r, d_out)
        z = torch.bmm(x, A.transpose(1, 2))                            # (B, T, r)
        if plain_inference() and out.is_contiguous():
            return out.baddbmm_(z, Bt)                                 # (B, T, d_out), the add in the GEMM
        return torch.baddbmm(out, z, Bt)

    def rows(self, lora_index: torch.Tensor, dtype: torch.dtype, present: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's A and (s·B)ᵀ, gathered once per ``inputs()`` block and reused while it lasts.

        A decode step is B × 1 tokens, so copying 16 users' weights at every step costs as much
        as the LoRA matmuls themselves; the batch's composition does not change during
        ``generate``. Weights changed in place show at once: the key sums the version counters
        of the batch's LoRAs (they only ever grow), which costs far less than a walk of the bank.
        """
        A_, B_ = self.A._parameters, self.B._parameters
        version = sum(A_[n]._version + B_[n]._version for n in present)
        cached = self._rows
        if (cached is None or cached[0] is not lora_index or cached[1] is not self.names or cached[2] != (dtype, version)
                or not plain_inference()):
            A, Bt = self.stacked(dtype)
            idx = lora_index.to(A.device)                              # (B,)
            self._rows = cached = (lora_index, self.names, (dtype, version), A[idx], Bt[idx])
        return cached[3], cached[4]

    def release_cache(self) -> None:
        """Drop the batch's gathered rows (B × (d_in + d_out) × r per Linear: ~160 MB for 16 rows
        of rank 8 on SmolLM2); the stack of all resident LoRAs stays, it serves every batch."""
        self._rows = None

    def stacked(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[0, A_1..A_N] (N+1, r, d_in) and [0, (s·B_1)ᵀ..(s·B_N)ᵀ] (N+1, r, d_out), rebuilt on change.

        Slot i+1 is ``self.names[i]``; a LoRA that does not cover this Linear keeps a zero slot.
        The cache key reads the plain parameter dicts: at decode time this check runs for every
        adapted Linear at every step, and ParameterDict lookups alone cost more than the matmuls.
        """
        A_, B_ = self.A._parameters, self.B._parameters
        key = (dtype, self.names, tuple((A_[n]._version, B_[n]._version, id(A_[n])) for n in self.names if n in A_))
        if self._stack is None or self._stack[0] != key:
            r = max((a.shape[0] for a in A_.values()), default=1)
            A = torch.zeros(len(self.names) + 1, r, self.d_in, dtype=dtype, device=self._device())
            Bt = torch.zeros(len(self.names) + 1, r, self.d_out, dtype=dtype, device=self._device())
            with torch.no_grad():
                for slot, n in enumerate(self.names, start=1):
                    if n in A_:
                        A[slot, : A_[n].shape[0]] = A_[n]
                        Bt[slot, : B_[n].shape[1]] = (B_[n] * self.scale[n]).T
            self._stack = (key, A, Bt)
        return self._stack[1], self._stack[2]
