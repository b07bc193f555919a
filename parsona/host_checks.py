"""What the host checks before anything runs: the request types, and each request checked and tokenized.

:class:`RequestChecks` is the half of :class:`parsona.host.Host` that turns one :class:`Request` into a
:class:`Prepared` row, or raises ConfigError / NotFound naming the field: sampling settings, the
prompt (text, token ids or chat messages, within the length limit), and every runtime input of the
attached types (checked by its type, defaulted, resolved for the caller when stored, and for the LoRA
bank's ``adapter`` only ever one of the caller's own). Nothing in it decodes; nothing here names a type.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from parsona.errors import ConfigError
from parsona.store import NotFound


@dataclass
class Request:
    """One generation request. Give ``prompt`` (text, or token ids as OpenAI's API allows) or
    ``messages`` (chat), not both.

    ``conditioning`` maps runtime-input names to this row's value (``{"preference": [0.2, 0.8],
    "adapter": "adp_..."}``); ``host.runtime_inputs`` lists what a host takes. temperature 0 is
    greedy; ``seed`` makes sampling reproducible; ``stop`` strings end the text (and are not part of it).
    ``rules``: put the caller's stored steering rules before the prompt (in a system message for chat).
    """

    prompt: str | list[int] | None = None
    messages: list[dict] | None = None
    user_id: str | None = None
    conditioning: Mapping[str, Any] = field(default_factory=dict)
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    rules: bool = False


@dataclass
class Completion:
    text: str
    finish_reason: str          # "stop" (end-of-sequence token or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Prepared:
    """A request checked and tokenized; nothing about it can fail later except a deleted LoRA."""

    request: Request
    input_ids: list[int]
    conditioning: dict[str, Any]             # every runtime input of the host: its checked row value or None
    stop: tuple[str, ...] = field(default_factory=tuple)
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the caller left; stop decoding it


class RequestChecks:
    """Mixed into Host: uses its tokenizer, store, bank, ``_specs``, defaults, stored resolvers and limits."""

    def prepare(self, request: Request) -> Prepared:
        """Check and tokenize one request, or raise ConfigError / NotFound naming the field."""
        r = request
        if not isinstance(r.max_new_tokens, int) or not 1 <= r.max_new_tokens <= self.max_new_tokens_limit:
            raise ConfigError("max_tokens", f"Use a whole number from 1 to {self.max_new_tokens_limit}.",
                              problem=f"got {r.max_new_tokens!r}")
        if not 0 <= r.temperature <= 2:  # NaN fails too
            raise ConfigError("temperature", "Use a number from 0 (greedy) to 2.", problem=f"got {r.temperature!r}")
        if not 0 < r.top_p <= 1:
            raise ConfigError("top_p", "Use a number in (0, 1].", problem=f"got {r.top_p!r}")
        stop = tuple(r.stop or ())
        if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise ConfigError("stop", "Pass at most 4 non-empty strings.", problem=f"got {stop!r}")
        if r.seed is not None and not (isinstance(r.seed, int) and -(2**63) <= r.seed < 2**64):
            raise ConfigError("seed", "Use a whole number that fits in 64 bits.", problem=f"got {r.seed!r}")
        field_name, ids = self._tokenize(r)
        if not ids:
            raise ConfigError(field_name, "Send text that is not empty once tokenized.", problem="it is 0 tokens")
        self._check_length(field_name, len(ids), 0, r.rules is True)       # before any stored value is resolved
        conditioning = self._row_conditioning(r)
        # a soft-token type marks where its tokens go (placeholders before the prompt), per row it conditions
        conditioned = {self._specs[n][0] for n, v in conditioning.items() if v is not None}
        reserved = sorted(set(ids) & {t for adapter in conditioned for t in adapter.reserved_ids()})
        if reserved:
            raise ConfigError(field_name, f"Leave out token {self.tokenizer.convert_ids_to_tokens(reserved[0])!r} "
                              f"(id {reserved[0]}): it marks where an adapter's soft tokens go.",
                              problem="the prompt carries a reserved token")
        prefix = [t for name, value in conditioning.items() if value is not None
                  for t in self._specs[name][0].prompt_prefix(name, value)]
        self._check_length(field_name, len(ids), len(prefix), r.rules is True)
        return Prepared(r, prefix + ids, conditioning, stop)

    def _check_length(self, field_name: str, n: int, added: int, rules: bool = False) -> None:
        if n + added > self.max_prompt_tokens:
            raise ConfigError(field_name, f"Shorten it to at most {self.max_prompt_tokens - added} tokens"
                              + (f" (the adapters add {added})." if added else ".")
                              + (" Your steering rules count: shorten them too, or send rules: false." if rules else ""),
                              problem=f"it is {n} tokens" + (" with your rules" if rules else ""))

    def _caller_rules(self, r: Request) -> list[str] | None:
        """The caller's steering rules if the request asks for them (``rules`` true), else None. Only ever
        the caller's own: looked up by the request's ``user_id``."""
        if r.rules is not True:
            if r.rules not in (False, None):
                raise ConfigError("rules", "Send true (use your stored rules) or false.", problem=f"got {r.rules!r:.40}")
            return None
        if self.store is None or r.user_id is None:
            raise ConfigError("rules", "Steering rules are a user's own: send the request as a user of a server.",
                              problem="no user")
        stored = self.store.get_rules(r.user_id)
        if not stored or not stored["rules"]:
            raise ConfigError("rules", "Add rules first (PUT /v1/profile/rules, or POST /v1/profile/rules/learn).",
                              problem="this user has no rules")
        return stored["rules"]

    def _tokenize(self, r: Request) -> tuple[str, list[int]]:
        """(the field the prompt came in, its token ids), the caller's rules before it if asked for:
        lines before a text prompt, a system message ahead of a chat."""
        from parsona.persona.rules import render, rules_messages

        if (r.prompt is None) == (r.messages is None):
            raise ConfigError("prompt", "Pass either `prompt` or `messages`.", problem="got both or neither")
        rules = self._caller_rules(r)
        if isinstance(r.prompt, list):  # token ids, as given (no special tokens added)
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self._vocab for t in r.prompt):
                raise ConfigError("prompt", f"Pass token ids from 0 to {self._vocab - 1}.", problem="a token id is out of range")
            if rules is not None:
                raise ConfigError("rules", "Send the prompt as text: rules are text put before it.", problem="got token ids")
            return "prompt", list(r.prompt)
        if r.prompt is not None:
            if not isinstance(r.prompt, str) or not r.prompt:
                raise ConfigError("prompt", "Pass a non-empty string.", problem=f"got {r.prompt!r:.40}")
            return "prompt", self.tokenizer(render(rules or [], r.prompt)).input_ids
        if not r.messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in r.messages):
            raise ConfigError("messages", "Pass a non-empty list of {'role', 'content'} with string content.")
        messages = rules_messages(rules, r.messages) if rules else r.messages
        if getattr(self.tokenizer, "chat_template", None):
            try:
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:   # a template that refuses these roles (e.g. no system role): the caller's to fix
                raise ConfigError("messages", "Send messages this model's chat template accepts.",
                                  problem=f"{type(exc).__name__}: {str(exc)[:160]}") from None
            return "messages", self.tokenizer(text, add_special_tokens=False).input_ids
        # No chat template (test tokenizers): one "role: content" line per message, then the cue.
        text = "".join(f"{m.get('role', 'user')}: {m['content']}\n" for m in messages) + "assistant:"
        return "messages", self.tokenizer(text).input_ids

    def _row_conditioning(self, r: Request) -> dict[str, Any]:
        """Every runtime input of the host for one row: its checked value, the default, or None."""
        given = r.conditioning if r.conditioning is not None else {}
        if not isinstance(given, Mapping):
            raise ConfigError("conditioning", "Pass a mapping of runtime input names to values.", problem=f"got {given!r:.40}")
        unknown = sorted(map(str, set(given) - set(self._specs)))
        if unknown:
            raise self._not_taken(unknown[0])
        row = {}
        for name, (_, spec) in self._specs.items():
            value = self._stored_value(name, spec, given.get(name), r)
            row[name] = self.defaults.get(name) if value is None else self._check_value(name, value, r.user_id)
            if row[name] is None and spec.required:
                raise ConfigError(name, f"Pass it ({spec.description.rstrip('.')}); this host has no default.",
                                  problem="missing")
        return row

    def _stored_value(self, name: str, spec, value: Any, r: Request) -> Any:
        """``value``, or for ``true`` on a stored input the caller's own (``false``: none). Only ever the
        caller's: the resolver gets the request's ``user_id``, never an id from the request body."""
        if not spec.stored or not isinstance(value, bool):
            return value
        if not value:
            return None
        resolve = self.stored.get(spec.stored)
        if resolve is None:
            raise ConfigError(name, f"Send the value itself: this server keeps no {spec.stored} per user.",
                              problem="got true")
        if r.user_id is None:
            raise ConfigError(name, "Send the value itself: `true` means the caller's own, and there is no caller.",
                              problem="got true without a user")
        return resolve(r.user_id, r)

    def _not_taken(self, name: str) -> ConfigError:
        return ConfigError(name, f"Leave it out: no adapter on this host takes it (it takes: {', '.join(self._specs) or 'nothing'}).")

    def _check_value(self, name: str, value: Any, user_id: str | None) -> Any:
        adapter, _ = self._specs[name]
        if adapter is not self.bank:
            return adapter.check_row(name, value)
        try:
            value = adapter.check_row(name, value)
        except ConfigError:  # a malformed id answers like a missing one: nothing to learn from the difference
            raise NotFound(name) from None
        return self._user_lora(name, value, user_id)

    def _user_lora(self, name: str, adapter_id: str, user_id: str | None) -> str:
        """``adapter_id`` if this row may use it: a pinned LoRA, or one of ``user_id``'s in the store."""
        if adapter_id in self._pinned:
            return adapter_id
        if self.store is None or user_id is None:
            raise NotFound(name)
        try:
            record = self.store.get_adapter(user_id, adapter_id)
        except NotFound:
            raise NotFound(name) from None  # the request field's name, not the store's
        if record["adapter_type"] != "lora":
            raise ConfigError(name, "Pick one of your LoRA adapters (GET /v1/adapters).",
                              problem=f"it is a {record['adapter_type']} adapter")
        return adapter_id

    def check_lora(self, weights) -> None:
        """Raise ConfigError unless ``weights`` (LoRAWeights, already checked by read_peft_lora) fit this
        model's bank. Reads only."""
        for path, (A, B) in weights.factors.items():
            layer = self.bank.layers.get(path) if self.bank is not None else None
            if layer is None:
                raise ConfigError("file", "Upload a LoRA trained for this base model.",
                                  problem=f"it adapts {path!r}, which this model's bank does not")
            if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1] or A.shape[1] != layer.d_in or B.shape[0] != layer.d_out:
                raise ConfigError("file", "Upload a LoRA trained for this base model.",
                                  problem=f"{path}: shapes {tuple(A.shape)}, {tuple(B.shape)} do not fit")
