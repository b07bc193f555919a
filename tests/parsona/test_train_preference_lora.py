"""The Panacea + DPO recipe on a tiny model: a step helps, λ stays with its row, resume is exact."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import load_base_model
from parsona.errors import ConfigError
from parsona.logprobs import SequenceLogProbs
from parsona.objectives import dpo_loss
from parsona.recipes.train_preference_lora import Config, main, scalarizer
from parsona.training.front_data import front_pairs
from parsona.training.step import pair_losses

OBJECTIVES = ("helpful", "harmless")


@pytest.fixture(scope="module")
def both_labelled():
    train, _ = front_pairs(OBJECTIVES)
    return [p for p in train if set(p.labels) == set(OBJECTIVES)][:4]


def setup(tiny_dir, seed=0):
    torch.manual_seed(seed)
    model, tokenizer = load_base_model(tiny_dir)
    model.requires_grad_(False)
    adapter = attach(model, PreferenceLoRAConfig(rank=2))
    return SequenceLogProbs(model), adapter, tokenizer


def losses_of(scorer, adapter, tokenizer, pairs, lam, max_length=64):
    return pair_losses(scorer, adapter, tokenizer, pairs, lam, OBJECTIVES, dpo_loss, 0.1, max_length)[0]


def test_one_step_lowers_the_preference_weighted_loss(tiny_dir, both_labelled):
    scorer, adapter, tokenizer = setup(tiny_dir)
    lam = torch.tensor([[0.8, 0.2], [0.1, 0.9], [0.5, 0.5], [1.0, 0.0]])
    scalarize = scalarizer("linear")
    before = scalarize(losses_of(scorer, adapter, tokenizer, both_labelled, lam), lam).mean()
    torch.testing.assert_close(before, torch.tensor(0.6931472), rtol=0, atol=1e-6)  # ln 2: policy = reference
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = scalarize(losses_of(scorer, adapter, tokenizer, both_labelled, lam), lam).mean()
    assert after < before - 1e-4  # float noise here is ~1e-7


def test_each_row_is_weighted_by_its_own_preference(tiny_dir, both_labelled):
    scorer, adapter, tokenizer = setup(tiny_dir)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    lam = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7], [0.6, 0.4]])
    with torch.no_grad():
        batch = losses_of(scorer, adapter, tokenizer, both_labelled, lam)                     # (B, m)
        rows = torch.cat([losses_of(scorer, adapter, tokenizer, [p], lam[i : i + 1]) for i, p in enumerate(both_labelled)])
        swapped = losses_of(scorer, adapter, tokenizer, both_labelled, lam.flip(0))
    torch.testing.assert_close(batch, rows, rtol=1e-5, atol=1e-6)
    assert (batch - swapped).abs().max() > 1e-4          # a batch-level λ mix-up would change the numbers
    per_row = scalarizer("linear")(batch, lam)
    torch.testing.assert_close(per_row[:2], torch.stack([batch[0, 0], batch[1, 1]]))  # vertices pick one objective
    tch = scalarizer("tchebycheff")(batch, lam)
    torch.testing.assert_close(tch, (lam * batch).max(-1).values)


def test_per_pair_step_equals_the_batched_losses_and_gradient(tiny_dir):
    """The recipe steps one pair at a time with a shared prompt; it must be the same math.

    Pairs short enough that neither path cuts the prompt (the batched path cuts each row on its
    own, the per-pair path once for both replies), so both see exactly the same tokens.
    """
    from accelerate import Accelerator

    from parsona.logprobs import PairLogProbs
    from parsona.training.step import pair_step

    scorer, adapter, tokenizer = setup(tiny_dir)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    train, _ = front_pairs(OBJECTIVES)
    both_labelled = [p for p in train if len(p.labels) == 2
                     and len((p.prompt + max(p.response_a, p.response_b, key=len)).encode()) < 240][:4]
    assert len(both_labelled) == 4
    lam = torch.tensor([[0.3, 0.7], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    scalarize, params = scalarizer("linear"), list(adapter.parameters())
    batched = losses_of(scorer, adapter, tokenizer, both_labelled, lam, max_length=250)  # no cuts: same rows
    scalarize(batched, lam).mean().backward()
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    losses, _, _, loss = pair_step(PairLogProbs(scorer.model, adapter), adapter, tokenizer, both_labelled,
                                   lam, OBJECTIVES, dpo_loss, scalarize, 0.1, 250, Accelerator(cpu=True))
    torch.testing.assert_close(losses, batched.detach(), rtol=1e-4, atol=1e-5)
    assert loss == pytest.approx(scalarize(batched, lam).mean().item(), rel=1e-4)
    for got, want in zip((p.grad for p in params), expected):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


def test_missing_labels_do_not_count(tiny_dir):
    train, _ = front_pairs(OBJECTIVES)
    only_helpful = [p for p in train if set(p.labels) == {"helpful"}][:2]
    scorer, adapter, tokenizer = setup(tiny_dir)
    losses = losses_of(scorer, adapter, tokenizer, only_helpful, torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    assert losses[:, 1].abs().max() == 0 and losses[:, 0].min() > 0


def test_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path):
    common = dict(model=str(tiny_dir), max_length=48, pairs_per_step=2, checkpoint_every=2, rank=2)
    main(Config(output_dir=str(tmp_path / "straight"), max_steps=4, **common))
    main(Config(output_dir=str(tmp_path / "resumed"), max_steps=2, **common))   # "killed" after step 2
    main(Config(output_dir=str(tmp_path / "resumed"), max_steps=4, **common))   # rerun continues
    a = load_file(tmp_path / "straight" / "adapter" / "adapter.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)
    assert any(a[k].abs().sum() > 0 for k in a if k.endswith("sigma"))
    straight, resumed = (json.loads((tmp_path / run / "adapter" / "training_summary.json").read_text())
                         for run in ("straight", "resumed"))
    assert resumed["resumed_from"] == 2 and resumed["steps"] == 4 and resumed["data_sha256"]
    # the summary covers the whole run, not only its last leg: the compute a benchmark reports
    assert resumed["tokens"] == straight["tokens"] > 0
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    for got, want in zip(resumed["history"], straight["history"]):
        assert got == pytest.approx(want)


def test_a_finished_run_is_returned_untouched_and_other_settings_are_refused(tiny_dir, tmp_path):
    cfg = Config(model=tiny_dir, output_dir=str(tmp_path / "run"), max_length=48, pairs_per_step=2, rank=2,
                 max_steps=2, warmup_steps=1)
    adapter = main(cfg)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert main(cfg) == adapter
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()} == files

    with pytest.raises(ConfigError) as err:                  # not silently resumed under other settings
        main(dataclasses.replace(cfg, learning_rate=1e-3, seed=1))
    assert err.value.field == "output_dir" and "learning_rate, seed" in str(err.value)
    with pytest.raises(ConfigError) as err:                  # nor cut short: 2 steps are already taken
        main(dataclasses.replace(cfg, max_steps=1))
    assert err.value.field == "max_steps"
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()} == files

    shutil.rmtree(tmp_path / "run" / "adapter")              # a run killed after its last checkpoint: the same
    with pytest.raises(ConfigError) as err:
        main(dataclasses.replace(cfg, max_steps=4, beta=0.5))
    assert err.value.field == "output_dir" and "beta" in str(err.value)


def test_pref_scale_lr_multiplier_scales_the_step_of_s_only(tiny_dir, tmp_path):
    # Adam's step is lr × (a factor set by the gradient's sign history, not its size), so s moves
    # `multiplier` times as far as at multiplier 1 (s and σ get no gradient at step 1: U starts at 0)
    common = dict(model=str(tiny_dir), max_length=48, pairs_per_step=2, rank=2, max_steps=3, warmup_steps=1)
    moved = {}
    for mult in (1.0, 8.0):
        out = main(Config(output_dir=str(tmp_path / str(mult)), pref_scale_lr_multiplier=mult, **common))
        weights = load_file(out / "adapter.safetensors")
        moved[mult] = {k: (v - 1).abs() for k, v in weights.items() if k.endswith(("pref_scale", "sigma"))}
    for key, base in moved[1.0].items():
        if key.endswith("pref_scale"):
            assert base > 0
            torch.testing.assert_close(moved[8.0][key], 8 * base, rtol=0.05, atol=0)
    assert any(k.endswith("sigma") for k in moved[1.0])


def test_all_labels_only_and_preference_blocks_reach_the_saved_adapter(tiny_dir, tmp_path):
    out = main(Config(model=str(tiny_dir), output_dir=str(tmp_path / "run"), max_length=48, pairs_per_step=2,
                      max_steps=1, rank=0, preference_rank=2, all_labels_only=True))
    summary = json.loads((out / "training_summary.json").read_text())
    train, _ = front_pairs(OBJECTIVES)
    both = sum(set(p.labels) == set(OBJECTIVES) for p in train)
    assert 0 < summary["train_pairs"] == both < len(train)
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["rank"], config["preference_rank"]) == (0, 2)


@pytest.mark.parametrize("bad, field", [
    (dict(rank=-1), "rank"),
    (dict(preference_rank=0), "preference_rank"),
    (dict(n_objectives=3), "n_objectives"),
    (dict(scalarization="max"), "scalarization"),
    (dict(max_steps=0), "max_steps"),
    (dict(pref_scale_lr_multiplier=0.0), "pref_scale_lr_multiplier"),
    (dict(objectives=("helpful", "funny"), n_objectives=2), "objectives"),
])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        Config(**bad)
    assert err.value.field == field


def test_running_mean_weights_follow_the_logged_losses():
    from parsona.training.step import running_mean_weights

    assert running_mean_weights([], OBJECTIVES).tolist() == [1.0, 1.0]              # nothing logged yet
    history = [{"loss_helpful": 0.6, "loss_harmless": 0.3}, {"loss_helpful": 0.4, "loss_harmless": 0.3}]
    ema = torch.tensor([0.9 * 0.6 + 0.1 * 0.4, 0.3], dtype=torch.float64)           # EMA, momentum 0.9
    expected = (1 / ema) / (1 / ema).mean()                                         # ∝ 1 / EMA, mean 1
    torch.testing.assert_close(running_mean_weights(history, OBJECTIVES), expected.float())


def test_one_preference_per_batch_gives_every_row_the_same_lambda(tiny_dir):
    from parsona.training.preference import setup

    cfg = Config(model=tiny_dir, max_length=48, pairs_per_step=4, max_steps=2, rank=2, max_train_pairs=8)
    per_row = setup(cfg).preferences(0)
    per_batch = setup(dataclasses.replace(cfg, preference_sampling="batch")).preferences(0)
    assert per_batch.shape == per_row.shape == (4, 2)
    assert (per_batch == per_batch[:1]).all() and not (per_row == per_row[:1]).all()


def test_loss_normalisation_changes_the_step_and_resumes_exactly(tiny_dir, tmp_path):
    common = dict(model=str(tiny_dir), max_length=48, pairs_per_step=2, checkpoint_every=2, rank=2,
                  loss_normalisation="running_mean", warmup_steps=1)
    main(Config(output_dir=str(tmp_path / "straight"), max_steps=4, **common))
    main(Config(output_dir=str(tmp_path / "resumed"), max_steps=2, **common))
    main(Config(output_dir=str(tmp_path / "resumed"), max_steps=4, **common))
    plain = main(Config(output_dir=str(tmp_path / "plain"), max_steps=4, **{**common, "loss_normalisation": "none"}))
    a, b = (load_file(tmp_path / run / "adapter" / "adapter.safetensors") for run in ("straight", "resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-7)   # the weights come from the kept history
    c = load_file(plain / "adapter.safetensors")
    assert any((a[k] - c[k]).abs().max() > 1e-6 for k in a)              # the lever does change training


def test_objective_lr_multipliers_scale_each_objectives_columns_only(tiny_dir):
    from parsona.training.preference import setup

    cfg = Config(model=tiny_dir, max_length=48, pairs_per_step=2, max_steps=1, rank=2, preference_rank=2,
                 max_train_pairs=4, warmup_steps=1, seed=3)       # seed 3: step 0's λ rows weight both objectives
    moved = {}
    for name, multipliers in (("plain", ()), ("scaled", ("2", "0.5"))):      # strings, as the flag gives them
        run = setup(dataclasses.replace(cfg, objective_lr_multipliers=multipliers))
        layer = next(iter(run.adapter.layers.values()))
        before = layer.U.detach().clone(), layer.V.detach().clone()
        run.step(0)
        moved[name] = [after.detach() - b for after, b in zip((layer.U, layer.V), before)]   # (d, k + m·p) each
    want = torch.tensor([1.0, 1.0, 2.0, 2.0, 0.5, 0.5])                    # k = 2 shared, then p = 2 per objective
    assert moved["plain"][0].abs().min(dim=0).values.gt(0).all()           # every column of U moved (V: U = 0 at init)
    for plain, scaled in zip(moved["plain"], moved["scaled"]):
        torch.testing.assert_close(scaled, plain * want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("bad", [("1",), ("1", "0"), ("x", "1")])
def test_objective_lr_multipliers_need_one_positive_number_per_objective(bad):
    with pytest.raises(ConfigError) as err:
        Config(objective_lr_multipliers=bad)
    assert err.value.field == "objective_lr_multipliers"
