"""The host: one base model, many users, one batched KV-cached decode with per-row conditioning.

    host = Host(model, tokenizer, store, adapters=[pref])
    host.generate([Request(prompt="Hi", conditioning={"preference": [0.2, 0.8]}),
                   Request(messages=[{"role": "user", "content": "Hi"}], user_id=uid,
                           conditioning={"preference": [0.9, 0.1], "adapter": aid}, temperature=0.7, seed=3)])

Conditioning is data keyed by the registry: each attached adapter type declares its runtime inputs
(``RuntimeInput``: name, wire type, required or not), a request carries one value per name in
``conditioning``, the type checks its row (``check_row``), and the host stacks the rows of a batch
for every attached type in one loop (``stack_rows``, then ``adapter.inputs``). Nothing here names
a type: a new one is served by passing it in ``adapters``.

The host owns one more adapter, its LoRA bank, whose input ``adapter`` is resolved here because
only the host knows users: on a host with a store it is one of the caller's adapter ids (scoped by
``user_id``, someone else's is NotFound exactly like a missing one); on a store-less host (CLI,
evaluation) it names one of the ``loras`` given at start. At most ``max_resident_loras`` store
LoRAs stay resident (least recently used evicted); a batch needing more is decoded in parts.

The decode loop is ours rather than ``model.generate`` because sampling is per row: each row draws
from its own ``torch.Generator`` (seeded by the request's ``seed``), so a seeded request gives the
same text whether it runs alone or in any batch, and greedy rows sit beside sampled ones. Every
caller decodes here: the HTTP API, ``parsona generate`` and the evaluation's greedy replies.

Checking a request (the prompt, its limits, every runtime input) is :mod:`parsona.host_checks`, mixed
in; this module batches and decodes. No silent fallback (DESIGN §7): a required input missing from a request uses the host's
``defaults`` only if it was started with one, else it is an error; an input no attached type
takes is an error too.

Limits of this design: no continuous batching (a batch decodes until its longest row is done;
new requests wait for the next batch) and finished rows keep their KV-cache slot.
"""

from __future__ import annotations

import inspect
import secrets
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping, Sequence

import torch

from parsona.decoding import RowFailed, RowText, cache_of, eos_ids, pick
from parsona.errors import ConfigError
from parsona.padding import pad
from parsona.host_checks import Completion, Prepared, Request, RequestChecks
from parsona.store import Store

OnDelta = Callable[[int, str], None]  # (row index, newly final text)


class Host(RequestChecks):
    """Serve one base model with any attached adapters and a bank of per-user LoRAs.

    model:              a causal LM.
    tokenizer:          its tokenizer (left padding is done here, not by the tokenizer).
    store:              where users' LoRAs are read from, always scoped by user_id; None for a
                        store-less host (CLI, evaluation).
    adapters:           adapters already attached to ``model`` whose runtime inputs requests
                        give per row (an ``Adapter`` or a sequence of them).
    defaults:           runtime input -> value used for rows that give none (None: such rows are
                        an error for required inputs, unconditioned otherwise).
    loras:              name -> PEFT LoRA directory, loaded once and always resident: the names a
                        store-less host's rows may pick with ``adapter``.
    max_resident_loras: store LoRAs kept in the bank at once (LRU).
    stored:             a ``RuntimeInput.stored`` kind -> ``resolve(user_id, request)`` giving the caller's
                        own value (e.g. ``{"persona": Personas(store).resolve}``): a row sending ``true``
                        for such an input gets it; without a resolver, ``true`` is an error naming the input.
    """

    def __init__(self, model, tokenizer, store: Store | None = None, adapters: Any = (), *,
                 defaults: Mapping[str, Any] | None = None, loras: Mapping[str, Any] | None = None,
                 max_resident_loras: int = 16, max_prompt_tokens: int = 2048, max_new_tokens_limit: int = 512,
                 stored: Mapping[str, Any] | None = None):
        from parsona.adapters import Adapter, LoRAConfig, attach

        if not isinstance(max_resident_loras, int) or max_resident_loras < 1:
            raise ConfigError("max_resident_loras", "Use a whole number ≥ 1.", problem=f"got {max_resident_loras!r}")
        self.model, self.tokenizer, self.store = model.eval(), tokenizer, store
        self.adapters = (adapters,) if isinstance(adapters, Adapter) else tuple(a for a in adapters or () if a is not None)
        if store is not None and loras:  # a pinned name would be every user's, beside their own ids
            raise ConfigError("loras", "Pass loras only to a store-less host (CLI, evaluation); users upload theirs.")
        self.bank = None
        if store is not None or loras:
            self.bank = attach(model, LoRAConfig())
            self.bank.remove("default")  # rows without a user LoRA use None; a zero LoRA would only cost time
            for name, source in (loras or {}).items():
                self.bank.add(name, source)
        self._pinned = frozenset(loras or ())
        self.stored = dict(stored or {})
        self._specs: dict[str, tuple[Any, Any]] = {}  # runtime input name -> (adapter, RuntimeInput)
        for adapter in self._conditioned():
            for spec in adapter.runtime_inputs:
                if spec.name in self._specs:
                    raise ConfigError("adapters", "Attach one adapter per runtime input.",
                                      problem=f"two adapters take {spec.name!r}")
                self._specs[spec.name] = (adapter, spec)
        unknown = sorted(set(defaults or {}) - set(self._specs))
        if unknown:
            raise self._not_taken(unknown[0])
        self.defaults = {name: self._check_value(name, value, user_id=None) for name, value in (defaults or {}).items()}
        self.max_resident_loras = max_resident_loras
        self.max_prompt_tokens, self.max_new_tokens_limit = max_prompt_tokens, max_new_tokens_limit
        self._resident: OrderedDict[str, None] = OrderedDict()  # store adapter ids, least recently used first
        self._lock = threading.Lock()  # the adapters' runtime inputs and the bank are shared state
        self._device = next(model.parameters()).device
        self._vocab = model.get_input_embeddings().num_embeddings
        self._eos = eos_ids(model, tokenizer)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self._eos)
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5
        self._keep_kw = next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None)

    def _conditioned(self) -> tuple:
        return (*self.adapters, *((self.bank,) if self.bank is not None else ()))

    # -- checking -----------------------------------------------------------------------------
    @property
    def runtime_inputs(self) -> tuple:
        """The ``RuntimeInput`` declarations of every attached type: what ``conditioning`` may hold."""
        return tuple(spec for _, spec in self._specs.values())

    @property
    def resident_loras(self) -> tuple[str, ...]:
        return tuple(self._resident)

    # -- generating ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request], on_delta: OnDelta | None = None) -> list[Completion]:
        """Check every request first (nothing runs if one is bad), then decode them as one batch."""
        prepared = [self.prepare(r) for r in requests]
        results = self.run(prepared, on_delta)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results  # type: ignore[return-value]

    def run(self, rows: Sequence[Prepared], on_delta: OnDelta | None = None) -> list[Completion | Exception]:
        """Decode prepared rows. Errors are per row: a row whose LoRA vanished, will not load or makes
        its scores non-finite gets its own exception and the other rows of the batch complete."""
        results: list[Completion | Exception | None] = [None] * len(rows)
        with self._lock:
            for part in self._parts(range(len(rows)), rows):
                live = []
                for i in part:
                    try:
                        self._ensure_resident(rows[i], {self._lora_of(rows[j]) for j in part})
                        live.append(i)
                    except Exception as exc:  # this row's LoRA only: NotFound, a bad file, a corrupt copy
                        results[i] = exc
                for i, done in zip(live, self._decode_isolated([rows[i] for i in live], live, on_delta)):
                    results[i] = done
        return results  # type: ignore[return-value]

    def _decode_isolated(self, rows: list[Prepared], index: list[int], on_delta: OnDelta | None) -> list:
        """``_decode`` the rows together; if the shared forward itself fails before any text was sent,
        decode each row alone so that only the row that breaks it fails."""
        if not rows:
            return []
        sent = []

        def emit(k: int, text: str) -> None:
            sent.append(k)
            on_delta(index[k], text)

        try:
            return self._decode(rows, None if on_delta is None else emit)
        except Exception as exc:
            if len(rows) == 1 or sent:  # streamed text cannot be taken back: those rows share the failure
                return [exc] * len(rows)
            return [self._decode_isolated([row], [i], on_delta)[0] for row, i in zip(rows, index)]

    def evict(self, adapter_id: str) -> None:
        """Drop a LoRA from the bank (after its deletion from the store)."""
        with self._lock:
            if adapter_id in self._resident:
                del self._resident[adapter_id]
                self.bank.remove(adapter_id)

    def _lora_of(self, row: Prepared) -> str | None:
        """The row's store LoRA, which must be made resident (pinned ones always are)."""
        if self.bank is None:
            return None
        name = row.conditioning.get(self.bank.input_names[0])
        return None if name in self._pinned else name

    def _parts(self, indices, rows) -> list[list[int]]:
        """Split rows so that no part needs more distinct LoRAs than may be resident."""
        parts: list[list[int]] = [[]]
        needed: set[str] = set()
        for i in indices:
            a = self._lora_of(rows[i])
            if a is not None and a not in needed and len(needed) == self.max_resident_loras:
                parts.append([])
                needed = set()
            if a is not None:
                needed.add(a)
            parts[-1].append(i)
        return [p for p in parts if p]

    def _ensure_resident(self, row: Prepared, keep: set) -> None:
        a = self._lora_of(row)
        if a is None:
            return
        if a in self._resident:
            self._resident.move_to_end(a)
            return
        weights = self._stored_lora(row.request.user_id, a)
        while len(self._resident) >= self.max_resident_loras:
            victim = next(v for v in self._resident if v not in keep)
            del self._resident[victim]
            self.bank.remove(victim)
        self.bank.add(a, weights)
        self._resident[a] = None

    def _stored_lora(self, user_id: str, adapter_id: str):
        """The user's stored LoRA, through the same checks as an upload (its files may have changed on
        disk since). A failure names the request field and the file, never the store's paths."""
        from parsona.adapters.peft_format import read_peft_lora

        path = self.store.verified_adapter_path(user_id, adapter_id)  # NotFound if deleted; CorruptAdapter if changed
        try:
            return read_peft_lora(path)
        except ConfigError as exc:
            where = exc.field.replace(str(path) + "/", "")
            raise ConfigError("adapter", "Upload the adapter again, or delete it: its stored copy fails the "
                              "checks an upload passes.", problem=f"{where}: {exc.problem}") from None

    @torch.no_grad()
    def _decode(self, rows: Sequence[Prepared], on_delta: OnDelta | None) -> list[Completion]:
        B = len(rows)
        ids, mask = pad([r.input_ids for r in rows], self._pad, side="left", device=self._device)  # (B, T) each
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                    # (B, T): left padding shifts nothing
        gens = [torch.Generator().manual_seed(r.request.seed if r.request.seed is not None else secrets.randbits(63))
                for r in rows]
        streams = [RowText(self.tokenizer, r.stop) for r in rows]
        finish: list[str | None] = [None] * B
        with self._conditioning(rows):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **({self._keep_kw: 1} if self._keep_kw else {}))
            failed: list[Exception | None] = [None] * B
            for step in range(max(r.request.max_new_tokens for r in rows)):
                tokens = [self._pad] * B   # what finished rows feed: never read, never streamed
                last = out.logits[:, -1].float()                                  # (B, V)
                finite = torch.isfinite(last).all(-1).tolist()                    # one check for the batch
                for b in range(B):
                    if finish[b] is None and rows[b].cancel.is_set():
                        finish[b] = "cancelled"   # nobody reads it: free the batch of its remaining steps
                    if finish[b] is not None:
                        continue
                    try:
                        if not finite[b]:
                            raise RowFailed("the model's scores for this row are not finite (its adapter is "
                                            "broken); fix or delete the adapter")
                        tokens[b] = token = pick(last[b], rows[b].request.temperature, rows[b].request.top_p, gens[b])
                    except Exception as exc:  # this row's scores or sampling only; the batch goes on without it
                        failed[b], finish[b] = exc, "error"
                        continue
                    finish[b] = streams[b].push(token, token in self._eos)
                    if finish[b] is None and step + 1 >= rows[b].request.max_new_tokens:
                        finish[b] = "length"
                    if on_delta is not None:
                        delta = streams[b].delta(final=finish[b] is not None)
                        if delta:
                            on_delta(b, delta)
                if all(f is not None for f in finish):
                    break
                nxt = torch.tensor(tokens, device=self._device)[:, None]  # (B, 1)
                mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(input_ids=nxt, attention_mask=mask, position_ids=positions, use_cache=True,
                                 **{self._cache_kw: cache_of(out)})
        return [failed[b] or Completion(s.final_text(), f or "length", len(r.input_ids), s.n_tokens)
                for b, (r, s, f) in enumerate(zip(rows, streams, finish))]

    def _conditioning(self, rows: Sequence[Prepared]):
        """Every conditioned adapter's per-row inputs for this batch, as one context manager. A type
        no row of the batch uses is disabled: its hooks skip their work."""
        from contextlib import ExitStack

        stack = ExitStack()
        for adapter in self._conditioned():
            values = {n: [r.conditioning[n] for r in rows] for n in adapter.input_names}
            if all(v is None for column in values.values() for v in column):
                stack.enter_context(adapter.disabled())
            else:
                stack.enter_context(adapter.inputs(**{n: adapter.stack_rows(n, col) for n, col in values.items()}))
        return stack
