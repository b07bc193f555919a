"""Front policies and front evaluation, each checked against an independent computation."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from parsona.adapters import LoRAConfig, PreferenceLoRAConfig, attach
from parsona.adapters.peft_format import LoRAWeights
from parsona.base_model import load_base_model
from parsona.data.hh_rlhf import MultiObjectivePair
from parsona.errors import ConfigError
from parsona.evaluate import (FrontResult, base_reward_reference, compare, evaluate_front, indicators,
                              union_front)
from parsona.front_policies import FrontPolicy, GridPolicy, PreferenceLoRAPolicy, RewardedSoupsPolicy
from parsona.logprobs import tokenize_pairs

OBJECTIVES = ("helpful", "harmless")


def logits(model, input_ids):
    with torch.no_grad():
        return model(input_ids).logits


def random_lora(bank, seed: int, rank: int = 4, alpha: float = 8.0) -> LoRAWeights:
    g = torch.Generator().manual_seed(seed)
    factors = {p: (torch.randn(rank, l.d_in, generator=g) * 0.3, torch.randn(l.d_out, rank, generator=g) * 0.3)
               for p, l in bank.layers.items()}
    return LoRAWeights(rank, alpha, factors)


def perturb(adapter, seed: int = 1, std: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def with_delta(model, deltas: dict[str, torch.Tensor]):
    """An independent model: a copy whose Linear weights are W0 + ΔW, no adapter code involved."""
    other = copy.deepcopy(model)
    for module in other.modules():  # drop every adapter hook and child the copy carried over
        module._forward_hooks.clear()
    with torch.no_grad():
        for path, delta in deltas.items():
            other.get_submodule(path).weight += delta
    return other


@pytest.fixture
def bank_setup(tiny_model):
    base = copy.deepcopy(tiny_model)
    bank = attach(tiny_model, LoRAConfig(rank=4))
    w1, w2 = random_lora(bank, 1), random_lora(bank, 2, alpha=4.0)   # different scales: 2 and 1
    bank.add("one", w1)
    bank.add("two", w2)
    return tiny_model, base, bank, w1, w2


def test_preference_lora_policy_equals_per_row_inputs(tiny_model, input_ids):
    base = logits(tiny_model, input_ids)
    adapter = attach(tiny_model, PreferenceLoRAConfig(rank=2))
    perturb(adapter)
    policy = PreferenceLoRAPolicy(adapter)
    assert isinstance(policy, FrontPolicy)
    lam = [0.3, 0.7]
    with adapter.inputs(preference=torch.tensor([lam] * input_ids.shape[0])):
        expected = logits(tiny_model, input_ids)
    with policy.at(lam):   # merged vs unmerged: the same math, summed in another order
        torch.testing.assert_close(logits(tiny_model, input_ids), expected, rtol=1e-4, atol=1e-4)
    assert not adapter.merged
    with policy.reference():
        torch.testing.assert_close(logits(tiny_model, input_ids), base, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError) as err:
        policy.merge([0.5, 0.6])
    assert err.value.field == "preference"


def test_rewarded_soups_cat_is_the_exact_mixture(bank_setup, input_ids):
    model, base, bank, w1, w2 = bank_setup
    policy = RewardedSoupsPolicy(bank, ["one", "two"], mode="cat")
    with bank.inputs(adapter="one"):
        only_one = logits(model, input_ids)
    with policy.at([1.0, 0.0]):
        torch.testing.assert_close(logits(model, input_ids), only_one, rtol=1e-4, atol=1e-5)
    lam = (0.25, 0.75)
    deltas = {p: lam[0] * w1.scale * w1.factors[p][1] @ w1.factors[p][0] + lam[1] * w2.scale * w2.factors[p][1] @ w2.factors[p][0]
              for p in bank.layers}
    with policy.at(lam):
        torch.testing.assert_close(logits(model, input_ids), logits(with_delta(base, deltas), input_ids), rtol=1e-4, atol=1e-4)
    assert bank.names == ("default", "one", "two") and not bank.merged   # the temporary soup is gone
    with policy.reference():
        torch.testing.assert_close(logits(model, input_ids), logits(base, input_ids), rtol=0, atol=1e-5)


def test_rewarded_soups_linear_interpolates_the_factors(bank_setup, input_ids):
    model, base, bank, w1, w2 = bank_setup
    lam = (0.4, 0.6)
    deltas = {}
    for p in bank.layers:
        A = lam[0] * w1.factors[p][0] + lam[1] * w2.factors[p][0]                            # (r, d_in)
        B = lam[0] * w1.scale * w1.factors[p][1] + lam[1] * w2.scale * w2.factors[p][1]      # (d_out, r)
        deltas[p] = B @ A
    with RewardedSoupsPolicy(bank, ["one", "two"], mode="linear").at(lam):
        torch.testing.assert_close(logits(model, input_ids), logits(with_delta(base, deltas), input_ids), rtol=1e-4, atol=1e-4)
    # Two equal LoRAs: the soup is that LoRA at every λ.
    bank.add("one-again", w1)
    with bank.inputs(adapter="one"):
        only_one = logits(model, input_ids)
    with RewardedSoupsPolicy(bank, ["one", "one-again"], mode="linear").at(lam):
        torch.testing.assert_close(logits(model, input_ids), only_one, rtol=1e-4, atol=1e-5)


def test_rewarded_soups_linear_needs_equal_ranks(bank_setup):
    _, _, bank, _, _ = bank_setup
    bank.add("small", random_lora(bank, 3, rank=2))
    with pytest.raises(ConfigError) as err:
        RewardedSoupsPolicy(bank, ["one", "small"], mode="linear")
    assert err.value.field == "mode"
    RewardedSoupsPolicy(bank, ["one", "small"], mode="cat")   # cat takes any ranks


def test_grid_policy_uses_its_lora_and_refuses_other_preferences(bank_setup, input_ids):
    model, _, bank, _, _ = bank_setup
    policy = GridPolicy(bank, {(1.0, 0.0): "one", (0.5, 0.5): "two"})
    with bank.inputs(adapter="two"):
        expected = logits(model, input_ids)
    with policy.at(torch.tensor([0.5, 0.5])):
        torch.testing.assert_close(logits(model, input_ids), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError) as err:
        policy.merge([0.4, 0.6])
    assert err.value.field == "preference" and not bank.merged
    assert policy.row_inputs(np.array([[0.5, 0.5], [1.0, 0.0]])) == {"adapter": ["two", "one"]}   # a LoRA per row


# -- cheap evaluation against a hand computation --------------------------------------------------

PAIRS = [
    MultiObjectivePair("\n\nHuman: hi there\n\nAssistant:", " Hello! How can I help?", " Go away.", {"helpful": 0, "harmless": 1}),
    MultiObjectivePair("\n\nHuman: a lock?\n\nAssistant:", " I can't help with that.", " Use a pick.", {"helpful": 1}),
    MultiObjectivePair("\n\nHuman: weather\n\nAssistant:", " Sunny.", " It is sunny and warm today.", {"harmless": 0}),
]


def naive_logps(model, tokenizer, pairs) -> torch.Tensor:
    """(2, N) Σ log softmax over response tokens, from full logits (not SequenceLogProbs)."""
    out = torch.zeros(2, len(pairs))
    for j, side in enumerate(("response_a", "response_b")):
        for n, p in enumerate(pairs):
            batch = tokenize_pairs(tokenizer, [p.prompt], [getattr(p, side)], 64)
            with torch.no_grad():
                logp = torch.log_softmax(model(batch.input_ids).logits[0, :-1].double(), -1)
            targets, mask = batch.input_ids[0, 1:], batch.response_mask[0, 1:].bool()
            out[j, n] = logp[torch.arange(len(targets)), targets][mask].sum().float()
    return out


@pytest.mark.parametrize("per_row", [True, False], ids=["grid-in-one-forward", "merged-per-preference"])
def test_cheap_eval_equals_a_hand_computation(tiny_dir, per_row):
    torch.manual_seed(0)
    model, tokenizer = load_base_model(tiny_dir)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(adapter)
    grid = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    beta = 0.5
    policy = PreferenceLoRAPolicy(adapter)
    if not per_row:                        # the path of methods that can only merge ΔW(λ) (Rewarded Soups)
        policy.row_inputs = lambda grid: None
    result = evaluate_front(model, tokenizer, policy, PAIRS, OBJECTIVES, grid, beta=beta,
                            max_length=64, batch_size=2, progress=False, method="pref")
    with adapter.disabled():
        ref = naive_logps(model, tokenizer, PAIRS)
    assert result.n_labelled == [2, 2]
    for k, lam in enumerate(grid):
        with adapter.inputs(preference=torch.tensor([lam.tolist()])):
            pol = naive_logps(model, tokenizer, PAIRS)
        for i, o in enumerate(OBJECTIVES):
            acc, loss, per_pair = [], [], []
            for n, p in enumerate(PAIRS):
                if o not in p.labels:
                    per_pair.append(np.nan)
                    continue
                w, l = (0, 1) if p.labels[o] == 0 else (1, 0)
                h = float((pol[w, n] - pol[l, n]) - (ref[w, n] - ref[l, n]))
                acc.append(1.0 if h > 0 else 0.0 if h < 0 else 0.5)
                per_pair.append(acc[-1])
                loss.append(math.log1p(math.exp(-beta * h)))          # -log σ(β h)
            assert result.accuracy[k, i] == pytest.approx(np.mean(acc))
            np.testing.assert_array_equal(result.pair_correct[k, :, i], per_pair)  # what the bootstrap resamples
            assert result.dpo_loss[k, i] == pytest.approx(np.mean(loss), rel=1e-4, abs=1e-5)
    assert result.points is result.accuracy and result.metric == "accuracy"


def test_untrained_policy_scores_chance_and_ln2(tiny_dir):
    model, tokenizer = load_base_model(tiny_dir)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))   # σ = s = 0: ΔW = 0 exactly
    result = evaluate_front(model, tokenizer, PreferenceLoRAPolicy(adapter), PAIRS, OBJECTIVES, [[0.5, 0.5]],
                            max_length=64, progress=False)
    np.testing.assert_allclose(result.accuracy, 0.5)
    np.testing.assert_allclose(result.dpo_loss, math.log(2), atol=1e-6)


class CharCount:
    """A stand-in reward model: characters of the reply (any object with .score works)."""

    def score(self, prompts, responses):
        return np.array([len(r) for r in responses], dtype=float)


class CodePointSum:
    """A stand-in reward that sees what the reply says, not only its length: the sum of its code points."""

    def __init__(self, sign: float = 1.0):
        self.sign = sign

    def score(self, prompts, responses):
        return self.sign * np.array([sum(map(ord, r)) for r in responses], dtype=float)


def greedy_replies_one_by_one(model, tokenizer, prompts, max_new_tokens=3):
    """Independently of the batched, left-padded eval: each prompt's greedy reply, decoded."""
    replies = []
    for prompt in prompts:
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or 0)
        replies.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n\nHuman:")[0].strip())
    return replies


def test_base_reward_reference_is_the_base_models_mean_reward_minus_the_margin(tiny_dir):
    model, tokenizer = load_base_model(tiny_dir)
    prompts = [p.prompt for p in PAIRS]
    policy = PreferenceLoRAPolicy(attach(model, PreferenceLoRAConfig(rank=2)))
    with policy.reference():
        point = base_reward_reference(model, tokenizer, prompts, {"helpful": CharCount(), "harmless": CharCount()},
                                      OBJECTIVES, margin=0.5, max_new_tokens=3, max_length=64)
        lengths = [len(r) for r in greedy_replies_one_by_one(model, tokenizer, prompts)]
    np.testing.assert_allclose(point, [np.mean(lengths) - 0.5] * 2)


def test_real_eval_scores_greedy_replies(tiny_dir):
    model, tokenizer = load_base_model(tiny_dir)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(adapter)                                                       # so that λ changes the replies
    policy = PreferenceLoRAPolicy(adapter)
    rewards = {"helpful": CodePointSum(), "harmless": CodePointSum(sign=-1.0)}
    with pytest.raises(ConfigError) as err:
        evaluate_front(model, tokenizer, policy, PAIRS, OBJECTIVES, [[1.0, 0.0]], reward_models=rewards, progress=False)
    assert err.value.field == "reference_point"
    grid = [[1.0, 0.0], [0.0, 1.0]]
    result = evaluate_front(model, tokenizer, policy, PAIRS, OBJECTIVES, grid, max_length=64,
                            reward_models=rewards, max_new_tokens=3, reference_point=[0.0, -1e4], progress=False)
    prompts = list(dict.fromkeys(p.prompt for p in PAIRS))
    assert result.metric == "reward" and result.prompt_reward.shape == (2, len(prompts), 2)   # kept per prompt
    for k, lam in enumerate(grid):                                        # each objective's own reward, per prompt
        with policy.at(lam):
            codes = CodePointSum().score(prompts, greedy_replies_one_by_one(model, tokenizer, prompts))
        np.testing.assert_allclose(result.prompt_reward[k], np.stack([codes, -codes], axis=1))
        np.testing.assert_allclose(result.reward[k], [codes.mean(), -codes.mean()])
    assert not np.array_equal(result.prompt_reward[0], result.prompt_reward[1])   # the replies did move with λ


def test_bad_grid_names_the_field(tiny_dir):
    model, tokenizer = load_base_model(tiny_dir)
    policy = PreferenceLoRAPolicy(attach(model, PreferenceLoRAConfig(rank=2)))
    with pytest.raises(ConfigError) as err:
        evaluate_front(model, tokenizer, policy, PAIRS, OBJECTIVES, [[0.2, 0.3, 0.5]], progress=False)
    assert err.value.field == "grid"


# -- indicators on a hand-made table -------------------------------------------------------------

def made(method, acc, grid=((1.0, 0.0), (0.5, 0.5), (0.0, 1.0))):
    acc = np.asarray(acc, float)
    return FrontResult(method, OBJECTIVES, np.asarray(grid, float), acc, np.zeros_like(acc), [3, 3], np.full(2, 0.4))


def test_indicators_on_a_hand_made_table(tmp_path):
    a = made("a", [[0.6, 0.5], [0.55, 0.55], [0.5, 0.6]])
    ind = indicators(a)
    # Rectangles above (0.4, 0.4): 0.2·0.1 + 0.15·0.05 + 0.1·0.05
    assert ind["hypervolume"] == pytest.approx(0.0325)
    assert ind["reference_point"] == [0.4, 0.4]
    assert ind["spearman_helpful"] == pytest.approx(1.0) and ind["spearman_harmless"] == pytest.approx(1.0)
    assert ind["inner_product"] == pytest.approx((0.6 + 0.55 + 0.6) / 3)
    reversed_ = indicators(made("r", [[0.5, 0.6], [0.55, 0.55], [0.6, 0.5]]))
    assert reversed_["spearman_helpful"] == pytest.approx(-1.0)
    assert math.isnan(indicators(made("flat", [[0.5, 0.5]] * 3))["spearman_helpful"])

    b = made("b", a.accuracy + 0.05)                    # dominates a everywhere
    np.testing.assert_allclose(union_front([a, b]), b.accuracy[::-1])     # b's points, rows sorted
    rows = {r["method"]: r for r in compare([a, b])}
    assert rows["b"]["igd_plus"] == pytest.approx(0.0)
    assert rows["a"]["igd_plus"] == pytest.approx(0.05 * math.sqrt(2))

    saved = json.loads(a.to_json(tmp_path / "a.json"))
    assert json.loads((tmp_path / "a.json").read_text()) == saved
    assert saved["indicators"]["hypervolume"] == pytest.approx(0.0325) and saved["reference_point"] == [0.4, 0.4]
    lines = a.to_csv(tmp_path / "a.csv").splitlines()
    assert lines[0].startswith("method,preference_helpful,preference_harmless,accuracy_helpful")
    assert lines[1].startswith("a,1.0,0.0,0.6,")                                  # λ = (1, 0), one number a column


def test_compare_refuses_different_reference_points():
    a, b = made("a", [[0.6, 0.5]] * 3), made("b", [[0.6, 0.5]] * 3)
    b.reference_point = np.array([0.5, 0.5])
    with pytest.raises(ConfigError) as err:
        compare([a, b])
    assert err.value.field == "reference_point"
