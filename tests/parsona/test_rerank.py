"""best_of_n: n samples in one batch, the reward's best kept; with a group predictor, a group's choice."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from conftest import tiny_tokenizer
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.host import Host, Request
from parsona.objectives import GroupPreferenceReward, LengthReward
from parsona.persona import GroupPreferencePredictor, HistoryEncoder, Question
from parsona.rerank import best_of_n


@pytest.fixture(scope="module")
def host():
    torch.manual_seed(0)
    return Host(tiny_causal_lm(vocab_size=259, pad_token_id=0), tiny_tokenizer())


def test_it_keeps_the_reply_the_reward_scores_highest(host):
    request = Request(prompt="hello", temperature=1.0, max_new_tokens=8, seed=7)
    best, scores, replies = best_of_n(host, request, LengthReward(), n=4)
    assert len(replies) == 4 and scores.tolist() == [len(r.text) for r in replies]
    assert best is replies[int(np.argmax(scores))]
    alone = host.generate([Request(prompt="hello", temperature=1.0, max_new_tokens=8, seed=9)])[0]
    assert replies[2].text == alone.text                         # row i samples with seed + i
    assert [r.text for r in best_of_n(host, request, LengthReward(), n=4)[2]] == [r.text for r in replies]


def test_a_group_predictor_picks_among_the_replies(host, tiny_encoder_dir):
    encoder = HistoryEncoder(str(tiny_encoder_dir), progress=False).fit()
    rng = np.random.default_rng(0)
    groups = [[Question(rng.normal(size=(3, encoder.dim_)).astype(np.float32), rng.dirichlet(np.ones(3)))
               for _ in range(6)] for _ in range(3)]
    predictor = GroupPreferencePredictor(d_model=8, n_layers=1, steps=5, progress=False).fit(groups)
    torch.nn.init.normal_(predictor.net_.out.weight)                # an opinionated predictor
    reward = GroupPreferenceReward(functools.partial(predictor.shares_for, encoder, groups[0][:4]))
    request = Request(prompt="hello", temperature=1.0, max_new_tokens=6, seed=3)  # seeds 0, 1: replies the tiny encoder can't tell apart
    best, scores, replies = best_of_n(host, request, reward, n=3)
    shares = predictor.shares_for(encoder, groups[0][:4], "hello", [r.text for r in replies])
    np.testing.assert_allclose(scores, 3 * shares)
    top, second = np.sort(shares)[::-1][:2]
    assert top - second > 1e-5                                      # a real choice, not a tie broken by rounding
    assert best is replies[int(np.argmax(shares))]


def test_bad_n_and_greedy_requests_are_refused(host):
    for n in (0, 17, True):
        with pytest.raises(ConfigError, match="^n"):
            best_of_n(host, Request(prompt="hi", temperature=1.0), LengthReward(), n=n)
    with pytest.raises(ConfigError, match="^temperature"):
        best_of_n(host, Request(prompt="hi"), LengthReward(), n=2)
    with pytest.raises(ConfigError, match="^prompt"):
        best_of_n(host, Request(messages=[{"role": "system", "content": "x"}], temperature=1.0), LengthReward(), n=2)
