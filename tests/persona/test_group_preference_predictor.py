"""GroupPreferencePredictor (GPO): what a user of it relies on, on tiny synthetic groups.

The synthetic task: each group leans to one end of every question's scale (shares ∝ exp(2 s · place),
s = ±1, its own); the option vectors are noise. Only the context tells a new group's lean, so a predictor
beats uniform on unseen groups only if it adapts in context.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from parsona.errors import ConfigError
from parsona.persona import GroupPreferencePredictor, Question, alignment, preference_from_answers
from parsona.persona.group_predictor import cross_entropy_w1, ordinal_w1

D = 4


def leaning_group(rng, lean: float, n: int = 24) -> list[Question]:
    out = []
    for _ in range(n):
        k = int(rng.integers(2, 6))
        p = np.exp(2 * lean * np.arange(k) / (k - 1))
        out.append(Question(rng.normal(size=(k, D)).astype(np.float32), p / p.sum(), np.full(k, 1 / k)))
    return out


@pytest.fixture(scope="module")
def groups():
    rng = np.random.default_rng(0)
    return [leaning_group(rng, lean) for lean in rng.choice([-1.0, 1.0], size=24)]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "mean_shift"])
def fitted(groups, request):
    return GroupPreferencePredictor(d_model=16, n_layers=1, steps=150, learning_rate=3e-3, dropout=0.0,
                                    max_context=12, max_targets=12, mean_shift=request.param,
                                    progress=False).fit(groups)


def queries_of(group):
    return [Question(q.vectors, None, q.prior) for q in group]


def test_it_adapts_in_context_to_groups_it_never_saw(fitted):
    rng = np.random.default_rng(1)
    gains = []
    for lean in (-1.0, 1.0):
        g = leaning_group(rng, lean)
        pred = fitted.predict(g[:10], queries_of(g[10:]))
        gains.append(np.mean([alignment(p, q.dist) - alignment(np.full(len(p), 1 / len(p)), q.dist)
                              for p, q in zip(pred, g[10:])]))
    assert min(gains) > 0.05, gains          # both leans read from the context, not learned as one answer
    assert fitted.losses_[-1] < fitted.losses_[0]


def test_predictions_are_distributions_over_each_querys_options(fitted, groups):
    pred = fitted.predict(groups[0][:5], queries_of(groups[0][5:]))
    assert [len(p) for p in pred] == [len(q.vectors) for q in groups[0][5:]]
    assert all(np.all(p >= 0) and np.isclose(p.sum(), 1.0) for p in pred)


def test_the_order_of_the_context_does_not_matter(fitted, groups):
    context, queries = groups[1][:8], queries_of(groups[1][8:])
    a = np.concatenate(fitted.predict(context, queries))
    b = np.concatenate(fitted.predict(context[::-1], queries))
    other = np.concatenate(fitted.predict(groups[2][:8], queries))
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(a - other).max() > 1e-3          # the context does change the answer


def test_a_query_does_not_see_the_other_queries(fitted, groups):
    context, queries = groups[3][:8], queries_of(groups[3][8:])
    together = fitted.predict(context, queries)
    for i in (0, 5):
        np.testing.assert_allclose(fitted.predict(context, [queries[i]])[0], together[i], atol=1e-5)


def test_it_saves_and_reloads_exactly(fitted, groups, tmp_path):
    path = fitted.save(tmp_path / "gp", extra_json={"training_summary.json": {"steps": 150}})
    assert sorted(p.name for p in path.iterdir()) == ["group_predictor.json", "group_predictor.safetensors",
                                                      "training_summary.json"]
    again = GroupPreferencePredictor.load(path)
    context, queries = groups[4][:6], queries_of(groups[4][6:])
    for p, q in zip(fitted.predict(context, queries), again.predict(context, queries)):
        np.testing.assert_array_equal(p, q)


def test_a_context_token_carries_its_questions_mean_shift_and_a_query_none():
    """shift = Σ_i i/(K−1) (y_i − r_i): a top answer against a uniform reference over 3 options is
    1·(1 − 1/3) + ½·(0 − 1/3) + 0·(0 − 1/3) = 0.5; against a prior (0.2, 0.3, 0.5) a middle answer is
    1·(0 − 0.5) + ½·(1 − 0.3) + 0 = −0.15."""
    from parsona.persona.group_predictor import _pack

    v = np.zeros((3, D), dtype=np.float32)
    top, middle = Question(v, np.array([0.0, 0.0, 1.0])), Question(v, np.array([0.0, 1.0, 0.0]), np.array([.2, .3, .5]))
    x = _pack([([top], [Question(v)])], use_prior=False, mean_shift=True)["x"][0]          # (6 tokens, F)
    np.testing.assert_allclose(x[:, -1], [0.5] * 3 + [0.0] * 3, atol=1e-6)
    x = _pack([([middle], [Question(v, None, middle.prior)])], use_prior=True, mean_shift=True)["x"][0]
    np.testing.assert_allclose(x[:, -1], [-0.15] * 3 + [0.0] * 3, atol=1e-6)
    assert _pack([([top], [Question(v)])], use_prior=False)["x"].shape[-1] == D + 4       # off: no feature


def test_untrained_it_answers_the_prior_or_uniform(groups):
    rng = np.random.default_rng(2)
    prior = [Question(q.vectors, q.dist, rng.dirichlet(np.ones(len(q.vectors)))) for q in groups[0]]
    with_prior = GroupPreferencePredictor(d_model=8, n_layers=1, steps=0, use_prior=True, progress=False).fit([prior])
    for p, q in zip(with_prior.predict(prior[:3], prior[3:]), prior[3:]):
        np.testing.assert_allclose(p, q.prior, atol=1e-6)
    plain = GroupPreferencePredictor(d_model=8, n_layers=1, steps=0, progress=False).fit(groups)
    for p in plain.predict(groups[0][:3], queries_of(groups[0][3:])):
        np.testing.assert_allclose(p, np.full(len(p), 1 / len(p)), atol=1e-6)


def test_alignment_is_one_minus_w1_over_positions():
    rng = np.random.default_rng(3)
    for k in (2, 4, 7):
        p, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
        w1 = wasserstein_distance(np.arange(k), np.arange(k), p, q)
        assert alignment(p, q) == pytest.approx(1 - w1 / (k - 1))
        loss = ordinal_w1(torch.log(torch.tensor(p))[None], torch.tensor(q)[None], torch.ones(1, k, dtype=torch.bool))
        assert float(loss) == pytest.approx(w1 / (k - 1))


def test_the_mixed_loss_is_cross_entropy_plus_w1_in_option_steps_and_ignores_padding():
    rng = np.random.default_rng(4)
    k, pad = 5, 3                                                       # 5 real options in a row of 8
    p, q = rng.dirichlet(np.ones(k)), rng.dirichlet(np.ones(k))
    expected = -(q * np.log(p)).sum() + wasserstein_distance(np.arange(k), np.arange(k), p, q)
    logq = torch.log(torch.tensor(np.r_[p, np.full(pad, 0.2)]))[None]   # padding mass must not count
    target = torch.tensor(np.r_[q, np.zeros(pad)])[None]
    valid = torch.tensor([[True] * k + [False] * pad])
    assert float(cross_entropy_w1(logq, target, valid)) == pytest.approx(expected)
    p3, q3 = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(3))     # a batch: each row in its own option steps
    batch = cross_entropy_w1(torch.log(torch.tensor(np.stack([np.r_[p, np.full(pad, 0.2)], np.r_[p3, np.full(5, 0.2)]]))),
                             torch.tensor(np.stack([np.r_[q, np.zeros(pad)], np.r_[q3, np.zeros(5)]])),
                             torch.tensor([[True] * k + [False] * pad, [True] * 3 + [False] * 5]))
    second = -(q3 * np.log(p3)).sum() + wasserstein_distance(np.arange(3), np.arange(3), p3, q3)
    np.testing.assert_allclose(batch.numpy(), [expected, second], rtol=1e-6)


@pytest.mark.parametrize("bad, field", [
    (Question(np.ones((1, D)), np.ones(1)), "context[0].vectors"),                          # one option
    (Question(np.ones((3, D)), np.array([0.5, 0.4, 0.3])), "context[0].dist"),              # sums to 1.2
    (Question(np.ones((3, D)), np.array([np.nan, 0.5, 0.5])), "context[0].dist"),
    (Question(np.full((3, D), np.nan), np.ones(3) / 3), "context[0].vectors"),
    (Question(np.ones((3, D + 1)), np.ones(3) / 3), "context[0].vectors"),                  # another encoder
    (Question(np.ones((3, D))), "context[0].dist"),                                         # not answered
])
def test_bad_questions_name_their_field(fitted, groups, bad, field):
    with pytest.raises(ConfigError) as e:
        fitted.predict([bad], queries_of(groups[0][:2]))
    assert e.value.field == field


def test_an_empty_context_and_a_query_of_one_option_are_refused(fitted, groups):
    with pytest.raises(ConfigError, match="^context"):
        fitted.predict([], queries_of(groups[0][:2]))
    with pytest.raises(ConfigError, match=r"^queries\[1\]\.vectors"):
        fitted.predict(groups[0][:2], [queries_of(groups[0])[0], Question(np.ones((1, D)))])
    with pytest.raises(ConfigError, match="^groups"):
        GroupPreferencePredictor(steps=1, progress=False).fit([groups[0][:1]])
    with pytest.raises(ConfigError, match="^n_heads"):
        GroupPreferencePredictor(d_model=10, n_heads=4, progress=False).fit(groups)
    for name, value in (("dropout", 1.0), ("attention_dropout", -0.1), ("attention_dropout", "0.1")):
        with pytest.raises(ConfigError, match=f"^{name}"):
            GroupPreferencePredictor(steps=1, progress=False, **{name: value}).fit(groups)


def test_attention_dropout_is_its_own_knob_and_acts_only_in_training(groups):
    """When set, it changes the training (it reaches the attention); 0.1 by default, as ``dropout``."""
    def fit(rate):
        return GroupPreferencePredictor(d_model=16, n_layers=1, steps=5, dropout=0.0, attention_dropout=rate,
                                        max_context=6, max_targets=6, progress=False).fit(groups)

    plain, again, dropped = fit(0.0), fit(0.0), fit(0.5)
    assert plain.losses_ == again.losses_ and plain.losses_ != dropped.losses_
    assert all(layer.self_attn.dropout == 0.5 for layer in dropped.net_.body.layers)
    assert GroupPreferencePredictor().get_params()["attention_dropout"] == 0.1


def test_the_written_out_attention_is_pytorchs_encoder_layer():
    """Same state dict, same outputs in training and evaluation (dropout 0), for a context that is a prefix, one
    that is not, and one token; and its gradients too."""
    from torch import nn

    from parsona.persona.group_predictor import _EncoderLayer

    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(16, 4, 32, 0.0, batch_first=True, norm_first=True)
    ours = _EncoderLayer(16, 4, 32, 0.0, batch_first=True, norm_first=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 11, 16, requires_grad=True)
    key = torch.zeros(3, 11, dtype=torch.bool)
    key[0, :4], key[1, [0, 2, 6]], key[2, 0] = True, True, True
    for training in (True, False):
        ref.train(training), ours.train(training)
        a, b = ref(x, src_key_padding_mask=~key), ours(x, src_key_padding_mask=~key)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    ga, = torch.autograd.grad(ref(x, src_key_padding_mask=~key).square().sum(), x)
    gb, = torch.autograd.grad(ours(x, src_key_padding_mask=~key).square().sum(), x)
    torch.testing.assert_close(gb, ga, atol=1e-5, rtol=1e-5)


def test_a_user_read_as_a_mixture_of_two_groups_gets_their_weights():
    rng = np.random.default_rng(4)
    a = [rng.dirichlet(np.ones(k)) for k in (3, 4, 5, 4)]
    b = [rng.dirichlet(np.ones(k)) for k in (3, 4, 5, 4)]
    user = [0.3 * x + 0.7 * y for x, y in zip(a, b)]
    np.testing.assert_allclose(preference_from_answers(user, list(zip(a, b))), [0.3, 0.7], atol=1e-4)
    np.testing.assert_allclose(preference_from_answers(b, list(zip(a, b))), [0.0, 1.0], atol=1e-4)
    lam = preference_from_answers(user, [(x, y, np.full(len(x), 1 / len(x))) for x, y in zip(a, b)])
    assert lam.shape == (3,) and np.isclose(lam.sum(), 1.0) and np.all(lam >= 0)
    with pytest.raises(ConfigError, match="^axes"):
        preference_from_answers(user, [(x,) for x in a])
    with pytest.raises(ConfigError, match=r"^answers\[0\]"):
        preference_from_answers([np.array([0.5, 0.6, 0.1])] + user[1:], list(zip(a, b)))


def test_shares_of_unordered_replies_do_not_depend_on_their_order(fitted, tiny_encoder_dir):
    from parsona.persona import HistoryEncoder

    encoder = HistoryEncoder(str(tiny_encoder_dir), progress=False).fit()
    rng = np.random.default_rng(5)
    words = ["yes", "no", "maybe", "never", "always", "often", "rarely", "sure", "later", "now"]
    groups = [[Question(encoder.transform([f"q{g}{i}: {w}" for w in rng.choice(words, 3, replace=False)]),
                        rng.dirichlet(np.ones(3))) for i in range(6)] for g in range(3)]   # the encoder's own space
    model = GroupPreferencePredictor(d_model=8, n_layers=1, steps=3, progress=False).fit(groups)
    torch.nn.init.normal_(model.net_.out.weight, std=5.0)               # opinionated: replies' shares differ
    replies = ["yes, gladly", "no", "maybe later", "it depends"]
    a = model.shares_for(encoder, groups[0][:4], "will you come?", replies)
    b = model.shares_for(encoder, groups[0][:4], "will you come?", replies[::-1])
    np.testing.assert_allclose(a, b[::-1], atol=1e-6)
    assert np.isclose(a.sum(), 1.0) and np.ptp(a) > 1e-4
