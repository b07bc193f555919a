"""The one place that picks a device and dtype: CUDA with bf16 where present, else CPU fp32.

Training goes through Accelerate, which makes the same choice; these helpers serve the code paths
that run outside an ``Accelerator`` (loading, generation, benchmarks).
"""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA if a GPU is visible, else CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU training stays fp32 for exactness)."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def mixed_precision(device: torch.device | str | None = None) -> str:
    """The ``accelerate.Accelerator(mixed_precision=...)`` value that matches :func:`default_dtype`."""
    return "bf16" if default_dtype(device) == torch.bfloat16 else "no"
