"""Per-sequence log-probs equal the textbook computation from full logits."""

from __future__ import annotations

import pytest
import torch

from parsona.base_model import tiny_causal_lm
from parsona.logprobs import Batch, SequenceLogProbs, TokenLogProbs, sequence_logprobs, token_logprobs


def reference_logprobs(model, batch: Batch) -> torch.Tensor:
    """log_softmax over full logits, gathered at the response tokens: the obvious, memory-hungry way."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    token = torch.log_softmax(logits, -1).gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (token * batch.response_mask[:, 1:]).sum(-1)


def make_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 256, (3, 10), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0                     # a right-padded row
    response = torch.zeros_like(ids)
    response[0, 4:] = 1
    response[1, 1:] = 1
    response[2, 6:8] = 1
    return Batch(ids, attention, response)


def test_matches_full_log_softmax_in_value_and_gradient():
    model, batch = tiny_causal_lm(), make_batch()
    expected = reference_logprobs(model, batch)
    (g_expected,) = torch.autograd.grad(expected.sum(), model.lm_head.weight)
    got, n = SequenceLogProbs(model, chunk_tokens=4)(batch.input_ids, batch.attention_mask, batch.response_mask)
    (g_got,) = torch.autograd.grad(got.sum(), model.lm_head.weight)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)
    assert n.tolist() == [6, 9, 2]


def test_average_divides_by_the_number_of_response_tokens():
    model, batch = tiny_causal_lm(), make_batch()
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(model, batch, average=True) * torch.tensor([6.0, 9.0, 2.0]),
                                   sequence_logprobs(model, batch))


@pytest.mark.parametrize("keep_softmax", [True, False])
def test_token_logprobs_gradients_pass_gradcheck(keep_softmax):
    # float64 finite differences (torch.autograd.gradcheck), for hidden states and the head's weight
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda h, w: TokenLogProbs.apply(h, w, targets, keep_softmax), (hidden, weight))


@pytest.mark.parametrize("keep_softmax", [True, False])
def test_token_logprobs_match_log_softmax_in_chunks(keep_softmax):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(9, 8, generator=g, requires_grad=True)
    weight = torch.randn(11, 8, generator=g)
    targets = torch.randint(0, 11, (9,), generator=g)
    expected = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    got = token_logprobs(hidden, weight, targets, chunk=4, keep_softmax=keep_softmax)
    upstream = torch.randn(9, generator=g)
    (g_expected,) = torch.autograd.grad(expected, hidden, upstream)
    (g_got,) = torch.autograd.grad(got, hidden, upstream)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)
