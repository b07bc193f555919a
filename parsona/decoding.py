"""One decode step's pieces, per row: pick the next token, keep the row's text, know when it ends.

The host's batched loop (``parsona/host.py``) calls these for every row of a batch; nothing here
knows batches, users or adapters, so each piece can be read and tested on its own.
"""

from __future__ import annotations

from typing import Any

import torch


GREEDY_BELOW = 1e-6  # temperature: exp(-Δ/T) < e^-100 for any logit gap Δ above float32's noise (1e-4)


class RowFailed(RuntimeError):
    """One row of a batch could not go on (its scores are not finite: a broken adapter); the others do."""


def pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """The next token of one row from its finite logits (V,): argmax at temperature 0, else nucleus
    sampling with the row's own RNG.

    Overflow-free for every temperature in [0, 2] and top_p in (0, 1]: below GREEDY_BELOW the
    distribution is one-hot to float32 precision, so it is decoded as argmax (dividing by 5e-324,
    which is 0 in float32, would give 0/0); above, the logits are shifted so their max is 0 before
    dividing; and the most likely token is always kept (a top_p below float32's resolution keeps
    that one alone).
    """
    if temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = torch.softmax((logits - logits.max()) / temperature, dim=-1)   # (V,)
    if top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p           # mass before the token already ≥ top_p
        drop[0] = False
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))


def cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured} if configured is not None else set()
    return ids


class RowText:
    """One row's generated tokens and text: stop strings, and which text is final for streaming."""

    def __init__(self, tokenizer, stop: tuple[str, ...]):
        self.tokenizer, self.stop = tokenizer, stop
        self.tokens: list[int] = []
        self.n_tokens = 0
        self.sent = 0            # characters already handed to on_delta
        self.cut: int | None = None  # text length at a stop string

    def push(self, token: int, is_eos: bool) -> str | None:
        """Add a token; return "stop" if the row is done, else None."""
        self.n_tokens += 1
        if is_eos:
            return "stop"
        self.tokens.append(token)
        if self.stop:
            text = self.text()
            hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
            if hits:
                self.cut = min(hits)
                return "stop"
        return None

    def text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def final_text(self) -> str:
        text = self.text()
        return text if self.cut is None else text[: self.cut]

    def delta(self, final: bool) -> str:
        """Text that can no longer change: held back are a partial UTF-8 character and a possible
        stop-string prefix, until the row is done."""
        text = self.final_text()
        if not final:
            text = text.rstrip("\ufffd")
            hold = max((len(s) - 1 for s in self.stop), default=0)
            text = text[: max(len(text) - hold, 0)]
        if len(text) <= self.sent:
            return ""
        delta, self.sent = text[self.sent:], len(text)
        return delta
