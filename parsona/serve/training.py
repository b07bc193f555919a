"""Per-user LoRA training jobs: a short causal-LM fine-tune on the user's own history texts.

``Trainer.submit(user_id, params)`` records a job in the store and queues it; one background
thread runs the jobs one at a time and writes progress into the job record, so
``GET /v1/jobs/{id}`` shows it. The result is saved as a standard PEFT LoRA and stored as one of
the user's adapters (its id lands in the job's ``adapter_id``).

Training uses its own copy of the base model (from ``model_factory``, made once, on the first
job), never the serving model: the serving model's adapters hold the current batch's per-row
inputs, and training beside a running decode would change the weights under it. The LoRA is
trained on the base model alone (no preference adapter); at serving time the deltas add.
"""

from __future__ import annotations

import copy
import queue
import tempfile
import threading
from pathlib import Path
from typing import Callable

import torch

from parsona.errors import ConfigError
from parsona.store import Store


class Trainer:
    def __init__(self, store: Store, model_factory: Callable[[], torch.nn.Module], tokenizer,
                 max_length: int = 128, batch_size: int = 4):
        self.store, self.model_factory = store, model_factory
        self.tokenizer = copy.deepcopy(tokenizer)  # never share a Rust tokenizer's state across threads
        self.max_length, self.batch_size = max_length, batch_size
        self._model: torch.nn.Module | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, user_id: str, params: dict) -> str:
        """Check the user has history, create the job record, queue it; return the job id."""
        if not self.store.history(user_id, limit=1):
            raise ConfigError("history", "Append texts with PUT /v1/profile/history first.",
                              problem="this user has no history to train on")
        job_id = self.store.create_job(user_id, "lora", params)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="parsona-trainer", daemon=True)
                self._thread.start()
        self._queue.put((user_id, job_id, params))
        return job_id

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Block until every queued job has finished (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        if self._thread is not None:
            done.wait(timeout)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            user_id, job_id, params = item
            try:
                self._train(user_id, job_id, params)
            except Exception as exc:  # the job fails, the server does not
                self.store.update_job(job_id, status="failed", message=f"{type(exc).__name__}: {exc}"[:500])

    def _base(self) -> torch.nn.Module:
        if self._model is None:
            model = self.model_factory()
            for p in model.parameters():
                p.requires_grad_(False)
            self._model = model
        return self._model

    def _train(self, user_id: str, job_id: str, params: dict) -> None:
        from parsona.adapters import LoRAConfig, attach

        self.store.update_job(job_id, status="running", progress=0.0, message="loading the base model")
        texts = [h["text"] for h in self.store.history(user_id, limit=params["max_items"])]
        examples = [self._encode(t) for t in texts]
        model = self._base()
        bank = attach(model, LoRAConfig(rank=params["rank"], alpha=2.0 * params["rank"]))
        try:
            optimizer = torch.optim.AdamW(list(bank.parameters()), lr=params["learning_rate"])
            g = torch.Generator().manual_seed(0)
            steps = params["steps"]
            for step in range(steps):
                pick = torch.randint(len(examples), (min(self.batch_size, len(examples)),), generator=g).tolist()
                input_ids, mask, labels = self._batch([examples[i] for i in pick])
                with bank.inputs(adapter_names=["default"] * len(pick)):
                    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.store.update_job(job_id, progress=0.95 * (step + 1) / steps,
                                      message=f"step {step + 1}/{steps}, loss {loss.item():.4f}")
            with tempfile.TemporaryDirectory() as tmp:
                bank.save_peft("default", Path(tmp) / "lora")
                adapter_id = self.store.put_adapter(user_id, Path(tmp) / "lora", "lora", params["name"])
            self.store.update_job(job_id, status="succeeded", adapter_id=adapter_id,
                                  message=f"done: {steps} steps on {len(texts)} texts, final loss {loss.item():.4f}")
        finally:
            bank.detach()

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text).input_ids
        eos = self.tokenizer.eos_token_id
        return (ids + ([eos] if eos is not None else []))[: self.max_length]

    def _batch(self, examples: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T), attention mask, and labels with -100 on padding."""
        device = next(self._base().parameters()).device
        T = max(len(e) for e in examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([e + [pad] * (T - len(e)) for e in examples], device=device)
        mask = torch.tensor([[1] * len(e) + [0] * (T - len(e)) for e in examples], device=device)
        return ids, mask, ids.masked_fill(mask == 0, -100)
