"""What every training recipe starts from: the Accelerator, and the base model frozen in fp32.

The base is loaded in fp32 whatever the device: Accelerate's ``mixed_precision`` (bf16 on a GPU
that has it) autocasts the forward, while the trained adapter's weights and AdamW's state stay fp32.
"""

from __future__ import annotations

import torch


def make_accelerator():
    """An ``accelerate.Accelerator`` on CUDA with bf16 where present, else CPU fp32 (``parsona.devices``)."""
    from accelerate import Accelerator

    from parsona.devices import mixed_precision

    return Accelerator(mixed_precision=mixed_precision(), cpu=not torch.cuda.is_available())


def frozen_base(model_id: str | None, accelerator, seed: int):
    """``(model, tokenizer)`` on the accelerator's device, every base weight frozen; the global torch
    RNG is seeded first, so the adapter attached next starts from the same init on every run."""
    from parsona.base_model import load_base_model

    torch.manual_seed(seed)
    model, tokenizer = load_base_model(model_id, device=accelerator.device, dtype=torch.float32)
    model.requires_grad_(False)
    return model, tokenizer


def warmup_schedule(optimizer, warmup_steps: int):
    """Linear learning-rate warm-up over ``warmup_steps`` steps, constant after."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
