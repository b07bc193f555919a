"""Per-sequence log-probabilities of responses: the one place where logits become scores.

A DPO step needs log π(y | x) summed over the response tokens of 4 sequences per pair. Computing
full-vocabulary logits for every position and keeping ``log_softmax`` alive for the backward pass
costs B × T × V floats per tensor (8 × 256 × 49,152 fp32 ≈ 400 MB, several times over). Here
logits are computed only at response positions, in chunks, each under activation checkpointing,
so at most one chunk of logits exists at a time, in the forward and in the backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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
    T = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
    response = torch.tensor([m + [0] * (T - len(m)) for m in masks])
    return Batch(ids, attention, response)


def _token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = (hidden @ weight.T).float()                                   # (N, V)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)          # (N,)
    return picked - torch.logsumexp(logits, dim=-1)                        # (N,)


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
        pieces = [
            checkpoint(_token_logprobs, h[i : i + self.chunk_tokens], head.weight, targets[i : i + self.chunk_tokens],
                       use_reentrant=False) if torch.is_grad_enabled() else
            _token_logprobs(h[i : i + self.chunk_tokens], head.weight, targets[i : i + self.chunk_tokens])
            for i in range(0, len(targets), self.chunk_tokens)
        ]
        token_logps = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
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

    The prompt runs once; its KV cache is repeated for the R replies (a DPO pair's chosen and rejected
    share it), so prompt tokens cost one forward instead of one per reply, and nothing is padded but
    the shorter reply. ``preference`` (1, m), if given, is the adapter's λ for every row of both calls
    (the reference pass: call it inside ``adapter.disabled()`` without ``preference``). Logits exist
    only at reply positions, in checkpointed chunks, as in :class:`SequenceLogProbs`.
    """

    def __init__(self, model: nn.Module, adapter=None, chunk_tokens: int = 512):
        super().__init__()
        self.model = model
        self.adapter = adapter  # not an nn.Module: its layers are already the model's submodules
        self.chunk_tokens = chunk_tokens

    def _decode(self, preference, **kwargs):
        if preference is None:
            return self.model.get_decoder()(**kwargs)
        with self.adapter.inputs(preference=preference.expand(kwargs["input_ids"].shape[0], -1)):
            return self.model.get_decoder()(**kwargs)

    def forward(self, prompt_ids: list[int], replies: list[list[int]], pad_token_id: int = 0,
                preference: torch.Tensor | None = None) -> torch.Tensor:
        head = self.model.get_output_embeddings()
        device = head.weight.device
        R, L, P = len(replies), max(len(r) for r in replies), len(prompt_ids)
        out = self._decode(preference, input_ids=torch.tensor([prompt_ids], device=device), use_cache=True)
        last = out.last_hidden_state[0, -1:]                                # (1, d): predicts each reply's first token
        cache = out.cache
        cache.batch_repeat_interleave(R)
        ids = torch.tensor([r + [pad_token_id] * (L - len(r)) for r in replies], device=device)        # (R, L)
        mask = torch.tensor([[1] * (P + len(r)) + [0] * (L - len(r)) for r in replies], device=device)  # (R, P+L)
        hidden = self._decode(preference, input_ids=ids, attention_mask=mask, cache=cache, use_cache=True).last_hidden_state
        h = torch.cat([piece for i, r in enumerate(replies) for piece in (last, hidden[i, : len(r) - 1])])  # (N, d)
        targets = torch.tensor([t for r in replies for t in r], device=device)                            # (N,)
        rows = torch.tensor([i for i, r in enumerate(replies) for _ in r], device=device)                 # (N,)
        c = self.chunk_tokens
        pieces = [checkpoint(_token_logprobs, h[i : i + c], head.weight, targets[i : i + c], use_reentrant=False)
                  if torch.is_grad_enabled() else _token_logprobs(h[i : i + c], head.weight, targets[i : i + c])
                  for i in range(0, len(targets), c)]
        return torch.zeros(R, device=device, dtype=torch.float32).index_add(0, rows, torch.cat(pieces))


def sequence_logprobs(model: nn.Module, batch: Batch, average: bool = False) -> torch.Tensor:
    """Summed (or per-token averaged) log π(response | prompt) per row, (B,)."""
    sums, n = SequenceLogProbs(model)(batch.input_ids, batch.attention_mask, batch.response_mask)
    return sums / n.clamp(min=1) if average else sums
