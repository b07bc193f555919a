"""Reference log-probs, computed once per (pair, model, settings) and kept on disk.

DPO's reference term log π_ref(y | x) is the frozen base model's: the same numbers every epoch,
every seed and every method trained on the same pairs (the preference LoRA, Rewarded Soups' and
a DPS grid's LoRAs all use the base with the adapter off). So a run computes them once, before
its loop, and its steps skip the reference pass (a quarter of a step's FLOPs):

    store = ReferenceStore.for_model(model, accelerator)           # one file per model + settings
    reference = ReferenceLogProbs(scorer, adapter, tokenizer, max_length, store)
    reference.precompute(pairs)                                    # misses only, no grad, progress bar
    pair_step(..., reference=reference)                            # reads them; never recomputes a hit

A value is keyed by a hash of everything it depends on: the pair's token ids as the step cuts them
(so the tokenizer and ``max_length`` are in the key) and the model's fingerprint (its weights'
digest, shape, dtype, attention kernel, device type, mixed precision, torch and transformers
versions). A changed setting is a miss, never a stale hit. The values are exactly what the step
would compute (the same module, call and inputs), so training with them is the same computation.

The file is safetensors (``keys`` uint8 (N, 32), ``logps`` float32 (N, R)), the fingerprint in its
metadata, written to a temp file and renamed; a flush merges what another process wrote meanwhile
(a lost race loses entries, which are then misses, never wrong values).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FLUSH_EVERY = 256   # pairs between writes while precomputing


def model_fingerprint(model: torch.nn.Module, mixed_precision: str = "no") -> dict[str, str]:
    """What a reference log-prob depends on besides its tokens: the base weights (sha256 of every
    tensor in state-dict order, attached adapters' own tensors left out: the reference runs with them
    off, so every seed and method on one base shares a store) and how the forward runs."""
    import transformers

    from parsona.adapters import names

    types = set(names())
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if types & set(name.split(".")):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    config = model.config
    return {"weights_sha256": digest.hexdigest(), "model_type": str(config.model_type),
            "dtype": str(next(model.parameters()).dtype), "attention": str(getattr(config, "_attn_implementation", "")),
            "device_type": next(model.parameters()).device.type, "mixed_precision": str(mixed_precision),
            "torch": torch.__version__, "transformers": transformers.__version__}


def pair_key(prompt: list[int], replies: list[list[int]]) -> bytes:
    """sha256 of a pair's token ids (the prompt, then each reply), 32 bytes."""
    return hashlib.sha256(json.dumps([prompt, replies]).encode()).digest()


def default_dir() -> Path:
    """``<parsona cache>/reference-logps`` (``$PARSONA_CACHE`` or ``~/.cache/parsona``)."""
    from parsona.base_model import cache_dir

    return cache_dir() / "reference-logps"


class ReferenceStore:
    """{pair key: log π_ref per reply (R,)} for one model fingerprint, in one safetensors file."""

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, str]):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.values: dict[bytes, torch.Tensor] = {}
        self.unsaved = 0
        self.values.update(self._read())

    @classmethod
    def for_model(cls, model, accelerator=None, directory: str | os.PathLike | None = None) -> "ReferenceStore":
        """The store of ``model`` (with ``accelerator``'s mixed precision) under ``directory``."""
        fingerprint = model_fingerprint(model, getattr(accelerator, "mixed_precision", "no"))
        name = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:24]
        return cls(Path(directory or default_dir()) / f"{name}.safetensors", fingerprint)

    def _read(self) -> dict[bytes, torch.Tensor]:
        from safetensors import safe_open

        if not self.path.is_file():
            return {}
        with safe_open(str(self.path), "pt") as f:
            if json.loads((f.metadata() or {}).get("fingerprint", "{}")) != self.fingerprint:
                return {}          # another model's file under a colliding name: ignore it, never use it
            keys, logps = f.get_tensor("keys"), f.get_tensor("logps")      # (N, 32) uint8, (N, R) float32
        return {bytes(k.tolist()): v for k, v in zip(keys, logps)}

    def get(self, key: bytes) -> torch.Tensor | None:
        return self.values.get(key)

    def put(self, key: bytes, logps: torch.Tensor) -> None:
        self.values[key] = logps.detach().float().cpu()
        self.unsaved += 1

    def flush(self) -> None:
        """Write every value (merged with what the file holds now) to a temp file, then rename."""
        from safetensors.torch import save

        from parsona.io import atomic_file

        if not self.unsaved:
            return
        merged = {**self._read(), **self.values}
        by_width: dict[int, list] = {}
        for k, v in merged.items():        # one tensor per reply count; DPO pairs all have R = 2
            by_width.setdefault(len(v), []).append((k, v))
        tensors = {}
        for width, items in by_width.items():
            suffix = "" if width == 2 else f"_{width}"
            tensors[f"keys{suffix}"] = torch.tensor([list(k) for k, _ in items], dtype=torch.uint8)   # (N, 32)
            tensors[f"logps{suffix}"] = torch.stack([v for _, v in items])                          # (N, R)
        with atomic_file(self.path, "wb") as f:
            f.write(save(tensors, metadata={"fingerprint": json.dumps(self.fingerprint)}))
        self.values, self.unsaved = merged, 0


class ReferenceLogProbs:
    """``reference(prompt_ids, replies) -> (R,)`` log π_ref of each reply: the store's value, or the
    scorer's with the adapter disabled (kept in the store). ``hits`` and ``misses`` count lookups."""

    def __init__(self, scorer, adapter, tokenizer, max_length: int, store: ReferenceStore | None = None):
        self.scorer, self.adapter, self.tokenizer, self.max_length = scorer, adapter, tokenizer, max_length
        self.store = store
        self.hits = self.misses = 0

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def __call__(self, prompt: list[int], replies: list[list[int]]) -> torch.Tensor:
        key = pair_key(prompt, replies) if self.store is not None else b""
        cached = self.store.get(key) if self.store is not None else None
        if cached is not None:
            self.hits += 1
            return cached.to(self.scorer_device)
        self.misses += 1
        with torch.no_grad(), self.adapter.disabled():
            value = self.scorer(prompt, replies, self.pad_id)                                  # (R,)
        if self.store is not None:
            self.store.put(key, value)
        return value

    def summary(self) -> dict:
        """Where the reference log-probs came from, for a training summary."""
        return {"store": str(self.store.path) if self.store else None, "reused": self.hits, "computed": self.misses}

    @property
    def scorer_device(self) -> torch.device:
        return next(self.scorer.parameters()).device

    def precompute(self, pairs, progress: bool = True) -> None:
        """Fill the store for ``pairs`` (MultiObjectivePair) before training, then flush it."""
        from tqdm.auto import tqdm

        from parsona.logprobs import tokenize_pair

        for i, pair in enumerate(tqdm(pairs, desc="reference log-probs", disable=not progress, leave=False)):
            self(*tokenize_pair(self.tokenizer, pair.prompt, [pair.response_a, pair.response_b], self.max_length))
            if self.store is not None and (i + 1) % FLUSH_EVERY == 0:
                self.store.flush()                   # a killed precompute keeps what it computed
        if self.store is not None:
            self.store.flush()
