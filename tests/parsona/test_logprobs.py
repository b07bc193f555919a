"""Per-sequence log-probs equal the textbook computation from full logits."""

from __future__ import annotations

import pytest
import torch

from parsona.base_model import tiny_causal_lm
from conftest import perturb
from parsona.logprobs import Batch, PairLogProbs, SequenceLogProbs, TokenLogProbs, sequence_logprobs, token_logprobs


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


def pair_scorer(attention: str):
    """(model, adapter, PairLogProbs) on a tiny model with a perturbed preference LoRA; ``attention``
    "padded" forces the fallback for attention that takes no custom mask (flash-attention)."""
    from parsona.adapters import PreferenceLoRAConfig, attach

    model = tiny_causal_lm()
    if attention != "padded":
        model.set_attn_implementation(attention)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(adapter)
    scorer = PairLogProbs(model, adapter)
    if attention == "padded":
        scorer._packable = lambda: False
    return model, adapter, scorer


@pytest.mark.parametrize("attention", ["sdpa", "eager", "padded"])
def test_pair_logprobs_equal_one_row_per_reply_in_value_and_gradient(attention):
    # replies of different lengths packed after one prompt vs. the textbook full-logits way, row by row
    model, adapter, scorer = pair_scorer(attention)
    prompt, replies = [5, 9, 13, 7], [[21, 22, 23, 24, 25, 26], [40, 41], [60, 61, 62]]
    lam = torch.tensor([[0.3, 0.7]])
    got = scorer(prompt, replies, preference=lam)
    (g_got,) = torch.autograd.grad(got @ torch.tensor([1.0, -2.0, 0.5]), adapter.layers["model.layers.0.mlp.up_proj"].U)
    expected = []
    for reply in replies:
        ids = torch.tensor([prompt + reply])
        with adapter.inputs(preference=lam):
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply)[:, None]).sum())
    expected = torch.stack(expected)
    (g_expected,) = torch.autograd.grad(expected @ torch.tensor([1.0, -2.0, 0.5]), adapter.layers["model.layers.0.mlp.up_proj"].U)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-4)  # fp32 sums in another order


@pytest.mark.parametrize("attention", ["sdpa", "eager", "padded"])
def test_pair_logprobs_rows_score_each_row_under_its_own_inputs(attention):
    # a λ grid in one forward: row k equals the pair scored alone at λ_k (and the rows differ)
    _, _, scorer = pair_scorer(attention)
    prompt, replies = [5, 9, 13, 7], [[21, 22, 23, 24, 25, 26], [40, 41]]
    grid = torch.tensor([[1.0, 0.0], [0.7, 0.3], [0.2, 0.8], [0.0, 1.0]])
    with torch.no_grad():
        got = scorer.rows(prompt, replies, n_rows=4, preference=grid)                           # (4, 2)
        alone = torch.stack([scorer(prompt, replies, preference=lam[None]) for lam in grid])     # (4, 2)
    torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
    assert (got[0] - got[-1]).abs().max() > 1e-3


def test_mean_token_nll_is_transformers_own_loss_and_padding_changes_nothing():
    from parsona.base_model import tiny_causal_lm
    from parsona.logprobs import mean_token_nll

    model = tiny_causal_lm().eval()
    a, b = [5, 9, 30, 41, 7], [12, 13]
    with torch.no_grad():
        hf = [model(torch.tensor([x]), labels=torch.tensor([x])).loss.item() for x in (a, b)]
    assert mean_token_nll(model, [a], pad=0) == pytest.approx(hf[0], rel=1e-5)
    together = mean_token_nll(model, [a, b], pad=0, batch_size=2)                  # one padded batch
    assert together == pytest.approx((4 * hf[0] + 1 * hf[1]) / 5, rel=1e-5)       # token-weighted
    assert mean_token_nll(model, [a], pad=0, skip=3) == pytest.approx(
        mean_token_nll(model, [a], pad=0, skip=3, batch_size=1), rel=0)
