"""Turn concurrent HTTP requests into batches for the host, on one worker thread.

Handlers ``await batcher.submit(prepared)``; the worker takes the first waiting request, waits up
to ``max_wait_s`` for more (up to ``max_batch_size``), decodes them together with
``Host.run`` and hands each result back to the handler's event loop. One worker thread, because
the model's adapters hold the batch's per-row inputs as shared state (the host also locks).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from parsona.host import Completion, Host, Prepared

from .metrics import Metrics


@dataclass
class _Item:
    prepared: Prepared
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    on_delta: Callable[[str], Any] | None


class Batcher:
    def __init__(self, host: Host, metrics: Metrics | None = None, max_batch_size: int = 16, max_wait_s: float = 0.01):
        self.host, self.metrics = host, metrics or Metrics()
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_s
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def submit(self, prepared: Prepared, on_delta: Callable[[str], Any] | None = None) -> Completion:
        """Queue one prepared request; ``on_delta(text)`` runs on this event loop as text becomes final."""
        self._start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Item(prepared, future, loop, on_delta))
        try:
            return await future
        except asyncio.CancelledError:  # the client went away: its row stops at the next decode step
            prepared.cancel.set()
            raise

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="parsona-batcher", daemon=True)
                self._thread.start()

    def _next_batch(self) -> list[_Item]:
        try:
            items = [self._queue.get(timeout=0.1)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.max_wait_s
        while len(items) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                items.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
            except queue.Empty:
                break
        return items

    def _work(self) -> None:
        while not self._stop.is_set():
            items = self._next_batch()
            if not items:
                continue

            def on_delta(i: int, text: str) -> None:
                item = items[i]
                if item.on_delta is not None:
                    _post(item.loop, item.on_delta, text)

            try:
                results: list = self.host.run([it.prepared for it in items], on_delta)
            except Exception as exc:  # a bug, not bad input: every waiting handler reports it
                results = [exc] * len(items)
            tokens = sum(r.completion_tokens for r in results if isinstance(r, Completion))
            self.metrics.observe_batch(len(items), tokens)
            for item, result in zip(items, results):
                _post(item.loop, _resolve, item.future, result)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that event loop has closed (server shutting down): nobody is waiting
        pass


def _resolve(future: asyncio.Future, result: Any) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
