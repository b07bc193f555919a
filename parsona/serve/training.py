"""Per-user LoRA training jobs: a short causal-LM fine-tune on the user's own history texts.

``Trainer.submit(user_id, params)`` records a job in the store and queues it; one background
thread runs the jobs one at a time and writes progress into the job record, so
``GET /v1/jobs/{id}`` shows it. The result is saved as a standard PEFT LoRA and stored as one of
the user's adapters (its id lands in the job's ``adapter_id``).

The queue lives in memory, the jobs in the store: ``Trainer.start()`` (the app's start-up) requeues
every job the store still holds as ``queued``, oldest first, so a restart after a crash loses none
(``Store.recover`` has already failed the ones the dead server was running). A job is claimed in the
store before it runs, so one queued twice, or by two servers sharing a store, still runs once.

Training uses its own copy of the base model (from ``model_factory``, made once, on the first
job), never the serving model: the serving model's adapters hold the current batch's per-row
inputs, and training beside a running decode would change the weights under it. The LoRA is
trained on the base model alone (no preference adapter); at serving time the deltas add.

The training itself is a recipe (``parsona.recipes.train_user_lora``), passed in as ``train`` by
whoever builds the Trainer (``parsona serve``'s CLI, the tests): the serving code never imports a
recipe. ``train(settings, model=, tokenizer=, texts=, progress=)`` gets the recipe Config's fields
as a dict, writes a PEFT LoRA directory at ``settings["output_dir"]`` (inside the store's temp
space, so a crash mid-job leaves nothing outside the store) and returns its path;
``progress(step, steps, loss)`` is called after every step.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from pathlib import Path
from typing import Callable

import torch

from parsona.errors import ConfigError
from parsona.store import Store

log = logging.getLogger("parsona.serve")

TrainFn = Callable[..., Path]   # (settings: dict, *, model, tokenizer, texts, progress) -> PEFT LoRA dir


class Trainer:
    def __init__(self, store: Store, model_factory: Callable[[], torch.nn.Module], tokenizer, *, train: TrainFn,
                 max_length: int = 128, batch_size: int = 4):
        self.store, self.model_factory, self.train = store, model_factory, train
        self.tokenizer = copy.deepcopy(tokenizer)  # never share a Rust tokenizer's state across threads
        self.max_length, self.batch_size = max_length, batch_size
        self._model: torch.nn.Module | None = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> list[str]:
        """Requeue the jobs the store holds as queued, oldest first; return their ids.

        Call once the store is recovered (``Store.recover``), when the server starts: the queue of a
        server that died is gone, its jobs are not.
        """
        jobs = self.store.queued_jobs()
        for job in jobs:
            self._enqueue(job["user_id"], job["job_id"], job["params"])
        return [job["job_id"] for job in jobs]

    def submit(self, user_id: str, params: dict) -> str:
        """Check the user has history, create the job record, queue it; return the job id.

        The store refuses a job past the user's quotas (QuotaExceeded) before anything is queued.
        """
        if not self.store.history(user_id, limit=1):
            raise ConfigError("history", "Append texts with PUT /v1/profile/history first.",
                              problem="this user has no history to train on")
        job_id = self.store.create_job(user_id, "lora", params)
        self._enqueue(user_id, job_id, params)
        return job_id

    def _enqueue(self, user_id: str, job_id: str, params: dict) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="parsona-trainer", daemon=True)
                self._thread.start()
        self._queue.put((user_id, job_id, params))

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
            try:
                self._run(*item)
            except Exception:  # the worker thread must outlive any job and any store error
                log.exception("training job %s could not be run or failed", item[1])

    def _run(self, user_id: str, job_id: str, params: dict) -> None:
        if not self.store.claim_job(job_id, message="loading the base model"):
            return  # not queued any more: already run (queued twice), or taken by another server
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
        texts = [h["text"] for h in self.store.history(user_id, limit=params["max_items"])]
        model = self._base()
        steps, last = params["steps"], {}

        def progress(step: int, total: int, loss: float) -> None:   # the last 5% is the save
            last["loss"] = loss
            self.store.update_job(job_id, progress=0.95 * step / total, message=f"step {step}/{total}, loss {loss:.4f}")

        with self.store.temp_dir("train-") as tmp:
            settings = {"output_dir": str(tmp / "lora"), "rank": params["rank"], "alpha": 2.0 * params["rank"],
                        "learning_rate": params["learning_rate"], "max_steps": steps,
                        "batch_size": self.batch_size, "max_length": self.max_length}
            lora = self.train(settings, model=model, tokenizer=self.tokenizer, texts=texts, progress=progress)
            adapter_id = self.store.put_adapter(user_id, lora, "lora", params["name"], for_job=job_id)
        self.store.update_job(job_id, status="succeeded", adapter_id=adapter_id,
                              message=f"done: {steps} steps on {len(texts)} texts, final loss {last['loss']:.4f}")
