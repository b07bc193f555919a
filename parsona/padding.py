"""The one padding helper: token rows of different lengths -> a (B, T) batch and its mask.

Left padding for generation (every row's last token sits at position T-1, so one decode step
serves all rows; the host derives positions from the mask); right padding for scoring (a reply's
tokens keep their indices, the loss masks the tail).
"""

from __future__ import annotations

from typing import Sequence

import torch


def pad(rows: Sequence[Sequence[int]], pad_id: int, side: str = "right",
        device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``, both (B, T) long, T the longest row; mask is 1 on real tokens."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    T = max((len(r) for r in rows), default=0)
    ids, mask = [], []
    for r in rows:
        fill = T - len(r)
        ids.append([pad_id] * fill + list(r) if side == "left" else list(r) + [pad_id] * fill)
        mask.append([0] * fill + [1] * len(r) if side == "left" else [1] * len(r) + [0] * fill)
    return (torch.tensor(ids, dtype=torch.long, device=device).reshape(len(rows), T),
            torch.tensor(mask, dtype=torch.long, device=device).reshape(len(rows), T))
