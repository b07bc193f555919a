"""Batched generation with per-row preference vectors (the host builds on this)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch


def chat_inputs(tokenizer, prompts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize user prompts with the model's chat template (plain text if it has none), left-padded."""
    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                 for p in prompts]
    else:
        texts = list(prompts)
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not tokenizer.chat_template)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, adapter=None, preference=None, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
    """One batched, KV-cached decode; row i uses ``preference[i]`` when a preference adapter is given."""
    batch = chat_inputs(tokenizer, prompts, next(model.parameters()).device)
    if seed is not None:
        torch.manual_seed(seed)
    context = adapter.inputs(preference=preference) if adapter is not None else nullcontext()
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    with context:
        out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
