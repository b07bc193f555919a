"""What every training recipe starts from: the Accelerator, and the base model frozen in fp32.

The base is loaded in fp32 whatever the device: Accelerate's ``mixed_precision`` (bf16 on a GPU
that has it) autocasts the forward, while the trained adapter's weights and AdamW's state stay fp32.

Under ``accelerate launch`` or ``torchrun`` every process trains its share of each step's global
batch (``sampling.local_rows``); :func:`step_totals` makes a step's loss and tokens the global
batch's, the same on every process, so what the recipes log does not depend on the process count.
"""

from __future__ import annotations

import os
import warnings

import torch

LAUNCH_PRECISION = "ACCELERATE_MIXED_PRECISION"   # how accelerate launch / accelerate config pass theirs


def make_accelerator():
    """An ``accelerate.Accelerator`` in :func:`training_precision`, on CUDA where present, else CPU.

    ``cpu=True`` without CUDA is what makes ``torchrun`` / ``accelerate launch --multi_gpu`` processes on
    a CPU machine join one gloo process group (``accelerate launch --cpu --num_processes N`` starts one).
    ``split_batches``: a step's batch is the global one, split across processes, so a prepared schedule
    steps once per optimizer step (Accelerate's default steps it once per process: a warm-up N× too short).
    """
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(mixed_precision=training_precision(), cpu=not torch.cuda.is_available(),
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def training_precision() -> str:
    """The launch config's mixed precision (``$ACCELERATE_MIXED_PRECISION``) if this device can run it,
    else ``parsona.devices.mixed_precision()`` (bf16 on CUDA that has it, else "no"); a request the
    device can't run warns, naming both, rather than failing or running in fp32 unannounced."""
    from parsona.devices import mixed_precision

    asked, default = os.environ.get(LAUNCH_PRECISION, "").strip().lower(), mixed_precision()
    if not asked or asked in runnable_precisions():
        return asked or default
    warnings.warn(f"{LAUNCH_PRECISION}={asked} (the launch config) can't run on this "
                  f"{'GPU' if torch.cuda.is_available() else 'CPU'}; training with mixed_precision={default!r}. "
                  f"Pick one of {sorted(runnable_precisions())} in accelerate config / --mixed_precision.", stacklevel=3)
    return default


def runnable_precisions() -> set[str]:
    """The mixed precisions this machine can train in: CPU autocasts bf16 only (Accelerate ignores fp16
    there); CUDA runs fp16, bf16 where the GPU has it, and fp8 (Accelerate checks the GPU and library)."""
    if not torch.cuda.is_available():
        return {"no", "bf16"}
    return {"no", "fp16", "fp8"} | ({"bf16"} if torch.cuda.is_bf16_supported() else set())


def step_totals(accelerator, loss: float, n_tokens: int) -> tuple[float, int]:
    """A step's loss and tokens over the global batch, on every process: each process's loss is the
    mean over its equal share of pairs, so their mean is the global batch's mean; the tokens add up."""
    local = torch.tensor([loss, float(n_tokens)], dtype=torch.float64, device=accelerator.device)   # (2,)
    total = accelerator.reduce(local, "sum")                                                         # (2,)
    return total[0].item() / accelerator.num_processes, round(total[1].item())


def average_gradients(accelerator, params) -> None:
    """What DDP does for the modules it wraps, for parameters no DDP wraps (the baselines' bank LoRAs,
    a new one per entry): each ``.grad`` becomes the mean over processes, in one all-reduce."""
    if accelerator.num_processes == 1:
        return
    params = list(params)
    for p in params:                    # every process must send the same tensors: no grad counts as zero
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = accelerator.reduce(torch.cat([p.grad.flatten() for p in params]), "mean")   # (Σ numel,)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p.grad))


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
