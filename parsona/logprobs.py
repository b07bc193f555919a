"""Per-sequence log-probabilities of responses: the one place where logits become scores.

A DPO step needs log π(y | x) summed over the response tokens of 4 sequences per pair. Computing
full-vocabulary logits for every position and keeping ``log_softmax`` alive for the backward pass
costs B × T × V floats per tensor (8 × 256 × 49,152 fp32 ≈ 400 MB, several times over). Here
logits are computed only at response positions, in chunks, by :class:`TokenLogProbs`, whose
backward needs one (N, V) softmax per chunk (kept, or recomputed as checkpointing would) and no
other copy of the logits. :func:`mean_token_nll` is the plain evaluation counterpart for whole texts
(a user's held-out writing under their LoRA or persona).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable


@dataclass
class Batch:
    """Token ids of prompt + response rows, and which positions are response tokens."""

    input_ids: torch.Tensor       # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    response_mask: torch.Tensor   # (B, T) 1 where the token belongs to the response

    def to(self, device: torch.device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def tokenize_pairs(tokenizer, prompts: list[str], responses: list[str], max_length: int = 256) -> Batch:
    """Right-padded prompt + response rows, truncated to ``max_length`` keeping the response start.

    Long prompts are cut from the left (the end of a dialogue matters most), then long responses
    from the right; each row keeps at least one response token.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows, masks = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
        r = r[: max_length - 1]
        p = p[max(0, len(p) - (max_length - len(r))):]
        rows.append(p + r)
        masks.append([0] * len(p) + [1] * len(r))
    from parsona.padding import pad

    ids, attention = pad(rows, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)   # (B, T)
    response, _ = pad(masks, 0)
    return Batch(ids, attention, response)


class TokenLogProbs(torch.autograd.Function):
    """``log softmax(h Wᵀ)[target]`` per row, (N, d) -> (N,), without autograd's copies of the logits.

    ∂(z_t − logsumexp z)/∂z = onehot(t) − softmax(z), so the backward needs only softmax(z). With
    ``keep_softmax`` it is kept from the forward (one (N, V) tensor, one matmul less in the
    backward); without, only h and logsumexp z are kept and the backward recomputes z = h Wᵀ
    (activation checkpointing's cost, for when many chunks are alive before the backward).

        TokenLogProbs.apply(hidden (N, d), weight (V, d), targets (N,), keep_softmax) -> (N,)
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, keep_softmax: bool):
        logits = (hidden @ weight.to(hidden.dtype).T).to(_at_least_fp32(hidden.dtype))  # (N, V), bf16 -> fp32
        logp = torch.log_softmax(logits, dim=-1)                            # (N, V): one fused pass, no temporaries
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)         # (N,)
        if keep_softmax:
            del logits
            saved = logp.exp_()                                             # softmax (N, V), in log-softmax's buffer
        else:
            saved = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - picked  # logsumexp (N,)
        ctx.save_for_backward(hidden, weight, targets, saved)
        ctx.keep_softmax = keep_softmax
        return picked

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):                                                # grad (N,)
        hidden, weight, targets, saved = ctx.saved_tensors
        w = weight.to(hidden.dtype)
        probs = saved if ctx.keep_softmax else ((hidden @ w.T).to(saved.dtype) - saved.unsqueeze(-1)).exp()  # (N, V)
        g = probs * -grad.unsqueeze(-1)                                     # grad · (onehot − softmax)
        g.scatter_add_(-1, targets.unsqueeze(-1), grad.unsqueeze(-1))
        g = g.to(hidden.dtype)
        grad_hidden = g @ w if ctx.needs_input_grad[0] else None            # (N, d)
        grad_weight = (g.T @ hidden).to(weight.dtype) if ctx.needs_input_grad[1] else None  # (V, d)
        return grad_hidden, grad_weight, None, None


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                   keep_softmax: bool) -> torch.Tensor:
    """:class:`TokenLogProbs` over chunks of ``chunk`` rows: at most one chunk's logits exist at a time
    in the forward (and, with ``keep_softmax``, every chunk's softmax until the backward)."""
    if len(targets) == 0:
        return hidden.new_zeros(0, dtype=_at_least_fp32(hidden.dtype))
    keep_softmax = keep_softmax and torch.is_grad_enabled()  # no backward coming: nothing to keep
    return torch.cat([TokenLogProbs.apply(hidden[i : i + chunk], weight, targets[i : i + chunk], keep_softmax)
                      for i in range(0, len(targets), chunk)])


class SequenceLogProbs(nn.Module):
    """``forward(batch) -> (sum_logps (B,), n_tokens (B,))`` over each row's response tokens.

    Wraps a causal LM so that Accelerate can ``prepare`` it (the forward runs through the wrapper,
    as DDP needs). ``chunk_tokens`` bounds how many positions' logits exist at once.
    """

    def __init__(self, model: nn.Module, chunk_tokens: int = 512):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor):
        hidden = self.model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        head = self.model.get_output_embeddings()
        mask = response_mask[:, 1:].bool()                                 # position t predicts token t+1
        rows, cols = mask.nonzero(as_tuple=True)                           # (N,), (N,)
        h = hidden[:, :-1][rows, cols]                                     # (N, d)
        targets = input_ids[:, 1:][rows, cols]                             # (N,)
        token_logps = token_logprobs(h, head.weight, targets, self.chunk_tokens, keep_softmax=False)  # (N,)
        sums = torch.zeros(input_ids.shape[0], device=hidden.device, dtype=torch.float32).index_add(0, rows, token_logps)
        return sums, mask.sum(-1)


def tokenize_pair(tokenizer, prompt: str, responses: list[str], max_length: int = 256) -> tuple[list[int], list[list[int]]]:
    """One prompt's ids, shared by its replies, and each reply's ids (+ EOS), as :func:`tokenize_pairs`
    cuts them, except that the prompt is cut (from the left) so that the LONGEST reply fits: every reply
    then sees the same prompt. Rows that fit ``max_length`` are identical to ``tokenize_pairs``'."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    replies = [(tokenizer(r, add_special_tokens=False)["input_ids"] + eos)[: max_length - 1] for r in responses]
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return p[max(0, len(p) - (max_length - max(len(r) for r in replies))):], replies


class PairLogProbs(nn.Module):
    """``forward(prompt_ids, replies, preference=None) -> (R,)`` Σ log π(reply | prompt) per reply.

    The prompt runs once and the R replies (a DPO pair's chosen and rejected) run after it in one
    packed row: reply i sees the prompt's KV cache and its own earlier tokens, never another reply's
    (a block-diagonal 4D attention mask; positions restart after the prompt for each reply). So the
    prompt costs one forward instead of one per reply, and nothing is padded: padding the shorter
    reply was 16 % of all token-rows on HH. Attention implementations that take no custom mask
    (flash-attention) fall back to a padded batch of R rows over the repeated prompt cache.

    ``preference`` (1, m), if given, is the adapter's λ for both calls; other keyword arguments are
    any adapter's runtime inputs for one row (``adapter="alice"`` for a LoRA bank). The
    reference pass: call it inside ``adapter.disabled()`` with none. Logits exist only at reply positions; the
    pair's softmax is kept for its backward (one matmul less).

    :meth:`rows` scores the same pair under K rows of inputs at once, (K, R): the evaluation of a
    whole λ grid in one forward (the per-row preference is what allows it).
    """

    def __init__(self, model: nn.Module, adapter=None, chunk_tokens: int = 512):
        super().__init__()
        self.model = model
        self.adapter = adapter  # not an nn.Module: its layers are already the model's submodules
        self.chunk_tokens = chunk_tokens

    def _decode(self, inputs: dict, **kwargs):
        if not inputs:
            return self.model.get_decoder()(**kwargs)
        rows = kwargs["input_ids"].shape[0]  # K when packed, K·R when padded: one-row tensor inputs are repeated
        per_row = {k: _repeat_rows(v, rows) for k, v in inputs.items()}
        with self.adapter.inputs(**per_row):
            return self.model.get_decoder()(**kwargs)

    def forward(self, prompt_ids: list[int], replies: list[list[int]], pad_token_id: int = 0,
                preference: torch.Tensor | None = None, **adapter_inputs) -> torch.Tensor:
        inputs = adapter_inputs if preference is None else {**adapter_inputs, "preference": preference}
        return self.rows(prompt_ids, replies, pad_token_id, n_rows=1, **inputs)[0]

    def rows(self, prompt_ids: list[int], replies: list[list[int]], pad_token_id: int = 0, n_rows: int = 1,
             **adapter_inputs) -> torch.Tensor:
        """(K, R) Σ log π(reply | prompt) with row k's adapter inputs: tensors of K (or 1) rows, e.g.
        ``preference`` (K, m); lists of K values (``adapter=["a", "b"]``). ``n_rows`` = K."""
        head = self.model.get_output_embeddings()
        device = head.weight.device
        K, P = n_rows, len(prompt_ids)
        out = self._decode(adapter_inputs, input_ids=torch.tensor([prompt_ids] * K, device=device), use_cache=True)
        last = out.last_hidden_state[:, -1:]                                # (K, 1, d): predicts each reply's first token
        if self._packable():
            hidden = self._packed(adapter_inputs, out.cache, P, replies, K, device)   # (K, N, d)
        else:
            hidden = self._padded(adapter_inputs, out.cache, P, replies, pad_token_id, K, device)
        starts = torch.cumsum(torch.tensor([0] + [len(r) for r in replies[:-1]]), 0).tolist()
        h = torch.cat([piece for r, s in zip(replies, starts)
                       for piece in (last, hidden[:, s : s + len(r) - 1])], dim=1)                     # (K, N, d)
        targets = torch.tensor([t for r in replies for t in r], device=device)                        # (N,)
        reply_of = torch.tensor([i for i, r in enumerate(replies) for _ in r], device=device)         # (N,)
        # one pair's replies: its softmax (≤ K × 2 × max_length × V floats) may stay alive until its backward
        token_logps = token_logprobs(h.reshape(-1, h.shape[-1]), head.weight, targets.repeat(K),
                                     self.chunk_tokens, keep_softmax=True).view(K, -1)                 # (K, N)
        return torch.zeros(K, len(replies), device=device, dtype=torch.float32).index_add(1, reply_of, token_logps)

    def _packable(self) -> bool:
        """Whether the model's attention takes a custom 4D mask (SDPA and eager do)."""
        return getattr(self.model.config, "_attn_implementation", None) in ("sdpa", "eager")

    def _packed(self, inputs: dict, cache, P: int, replies: list[list[int]], K: int, device) -> torch.Tensor:
        """(K, N, d) hidden states of every reply token, the replies packed into one row after the prompt."""
        lengths = torch.tensor([len(r) for r in replies], device=device)
        reply = torch.repeat_interleave(torch.arange(len(replies), device=device), lengths)             # (N,) which reply
        offset = torch.arange(len(reply), device=device) - (torch.cumsum(lengths, 0) - lengths)[reply]  # (N,) index in it
        ids = torch.tensor([[t for r in replies for t in r]] * K, device=device)                       # (K, N)
        same = (reply[:, None] == reply[None, :]) & (offset[None, :] <= offset[:, None])              # (N, N) causal per reply
        allowed = torch.cat([same.new_ones(len(reply), P), same], dim=1)[None, None]                   # (1, 1, N, P+N)
        if self.model.config._attn_implementation == "eager":  # eager attention adds its mask to the scores
            allowed = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, torch.finfo(torch.float32).min)
        positions = (P + offset)[None].expand(K, -1)                                                   # (K, N)
        return self._decode(inputs, input_ids=ids, position_ids=positions, attention_mask=allowed.expand(K, -1, -1, -1),
                            cache=cache, use_cache=True).last_hidden_state

    def _padded(self, inputs: dict, cache, P: int, replies: list[list[int]], pad_token_id: int, K: int,
                device) -> torch.Tensor:
        """The same, as K·R right-padded rows (row k·R + i: inputs k, reply i) over the repeated prompt cache;
        returned as (K, N, d) in the packed layout."""
        R, L = len(replies), max(len(r) for r in replies)
        cache.batch_repeat_interleave(R)
        ids = torch.tensor([r + [pad_token_id] * (L - len(r)) for r in replies] * K, device=device)        # (K·R, L)
        mask = torch.tensor([[1] * (P + len(r)) + [0] * (L - len(r)) for r in replies] * K, device=device)  # (K·R, P+L)
        per_row = {k: _repeat_each(v, R) for k, v in inputs.items()}
        hidden = self._decode(per_row, input_ids=ids, attention_mask=mask, cache=cache,
                              use_cache=True).last_hidden_state.view(K, R, L, -1)
        return torch.cat([hidden[:, i, : len(r)] for i, r in enumerate(replies)], dim=1)                # (K, N, d)


def _repeat_rows(value, rows: int):
    """A one-row input repeated to ``rows`` (tensors expand; a one-item list repeats); others as given."""
    if isinstance(value, torch.Tensor) and value.shape[0] == 1:
        return value.expand(rows, *value.shape[1:])
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return list(value) * rows
    return value                                                 # K rows already, or one value for every row


def _repeat_each(value, times: int):
    """Each row of a K-row input repeated ``times`` times in place (row k -> rows k·times .. k·times + times - 1)."""
    if isinstance(value, torch.Tensor):
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, (list, tuple)):
        return [v for v in value for _ in range(times)]
    return value


def sequence_logprobs(model: nn.Module, batch: Batch, average: bool = False) -> torch.Tensor:
    """Summed (or per-token averaged) log π(response | prompt) per row, (B,)."""
    sums, n = SequenceLogProbs(model)(batch.input_ids, batch.attention_mask, batch.response_mask)
    return sums / n.clamp(min=1) if average else sums


@torch.no_grad()
def mean_token_nll(model, examples: Sequence[Sequence[int]], pad: int, *, batch_size: int = 8, skip: int = 1,
                   inputs: Callable[[int, int], Any] | None = None) -> float:
    """Next-token NLL per token of ``examples`` (token id lists, right-padded in batches), over every
    position past each example's first ``skip`` (1: all that can be predicted), token-weighted.
    ``inputs(start, stop)`` returns the context that conditions rows start:stop (an adapter's
    ``inputs(...)`` block, or ``disabled()``); None runs the model as it is."""
    import contextlib

    from parsona.padding import pad as pad_rows

    total, count = 0.0, 0
    device = next(model.parameters()).device
    for start in range(0, len(examples), batch_size):
        stop = min(start + batch_size, len(examples))
        ids, mask = pad_rows([list(e) for e in examples[start:stop]], pad, side="right", device=device)   # (B, T)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :skip] = -100
        with inputs(start, stop) if inputs is not None else contextlib.nullcontext():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()                # (B, T, V)
        target = labels[:, 1:]                                                              # (B, T-1)
        total += torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100,
                                                   reduction="sum").item()
        count += int((target != -100).sum())
    return total / count


def lora_nll(model, bank, lora: str | None, examples: Sequence[Sequence[int]], pad: int, batch_size: int = 8) -> float:
    """:func:`mean_token_nll` with every row under the LoRA bank's LoRA ``lora`` (None: the base model)."""
    return mean_token_nll(model, examples, pad, batch_size=batch_size,
                          inputs=lambda start, stop: bank.inputs(adapter=[lora] * (stop - start)))
