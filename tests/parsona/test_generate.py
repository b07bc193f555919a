"""Generated LoRAs from the store: the public expert bank, a description or texts -> the top-K blend as a
new adapter of the caller's, explicit weights over public experts and the caller's own adapters only."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from parsona.adapters.generated_lora import blend_compact, blend_exact
from parsona.adapters.peft_format import read_peft_lora
from parsona.errors import ConfigError
from parsona.generate import ExpertCache, Experts, GeneratedLoRAs, describe, fit_generator, generate_lora
from parsona.persona import HistoryEncoder
from parsona.store import CorruptAdapter, NotFound, Store

TOPICS = ["the dog barks at the cat .", "call me on monday about the meeting", "gas prices rose again today",
          "the quarterly report is late"]


def dense(lora, path):
    A, B = lora.factors[path]
    return lora.scale * B.double() @ A.double()


def same_update(a, b):
    assert set(a.factors) == set(b.factors)
    for path in a.factors:
        torch.testing.assert_close(dense(a, path), dense(b, path), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="fp32").fit()


@pytest.fixture
def lora_dirs(expert_lora_dirs):
    return expert_lora_dirs[: len(TOPICS)]


@pytest.fixture
def store(tmp_path, lora_dirs, encoder):
    with Store(tmp_path / "store") as s:
        for n, (d, text) in enumerate(zip(lora_dirs, TOPICS)):
            s.experts.add(d, f"expert {n}", text, encoder.transform([text])[0], encoder.key)
        yield s


def test_a_generated_lora_blends_the_experts_nearest_the_description(lora_dirs, encoder):
    loras = [read_peft_lora(d) for d in lora_dirs]
    query = describe(encoder, description="the dog sleeps")
    others = np.random.default_rng(0).normal(size=(3, len(query)))
    vectors = np.vstack([others[:2], query, others[2:]])       # expert 2 is described exactly as the user is
    experts = Experts.of(loras, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    lora, info = generate_lora(experts, encoder, description="the dog sleeps", k=2, tau=0.1)
    rows = [int(i) for i in info["experts"]]
    assert rows[0] == 2 and len(rows) == 2 and info["weights"][0] > 0.5
    same_update(lora, blend_exact([loras[i] for i in rows], info["weights"]))
    small, info = generate_lora(experts, encoder, description="the dog sleeps", k=3, rank=2)
    assert small.rank == 2 and 0 < info["max_relative_error"] < 1
    np.testing.assert_allclose(describe(encoder, texts=[TOPICS[0]] * 7), encoder.transform([TOPICS[0]])[0],
                               atol=1e-6)                                   # at most 5 texts, pooled
    for kwargs, field in ((dict(description="  "), "description"), (dict(), "description"), (dict(texts=[]), "texts"),
                          (dict(texts="one string"), "texts")):
        with pytest.raises(ConfigError) as err:
            describe(encoder, **kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError) as err:
        generate_lora(Experts.of([], np.zeros((0, 16))), encoder, description="x")
    assert err.value.field == "experts"


def test_the_cvae_generator_fits_the_bank_and_samples_in_its_span(lora_dirs, encoder):
    loras = [read_peft_lora(d) for d in lora_dirs]
    experts = Experts.of(loras, encoder.transform(TOPICS))
    generator = fit_generator(experts, k=2, steps=300)
    assert np.mean(generator.losses_[-20:]) < 0.5 * np.mean(generator.losses_[:20])   # it learns the bank
    a = generator.coefficients([0, 1], [0.5, 0.5], sample=False)
    b = generator.coefficients([2, 3], [0.5, 0.5], sample=False)
    assert np.abs(a - b).max() > 0.1                              # the condition steers what comes out
    lora, info = generate_lora(experts, encoder, texts=["the cat sleeps ."], k=2, generator=generator)
    c = np.array(info["weights"])
    assert c.sum() == pytest.approx(1.0, abs=1e-9) and lora.rank == sum(e.rank for e in loras)
    for path in lora.factors:
        torch.testing.assert_close(dense(lora, path), sum(float(ci) * dense(e, path) for ci, e in zip(c, loras)),
                                   rtol=1e-5, atol=1e-6)


def test_the_public_bank_keeps_verified_files_and_survives_a_reopen(store, lora_dirs, encoder, tmp_path):
    listed = store.experts.list()
    assert [e["name"] for e in listed] == [f"expert {n}" for n in range(4)] and listed[0]["description"] == TOPICS[0]
    ids, V = store.experts.vectors(encoder.key)
    assert ids == [e["expert_id"] for e in listed] and V.shape == (4, encoder.dim_)
    assert store.experts.vectors("another encoder")[0] == []
    same_update(read_peft_lora(store.experts.path(ids[1])), read_peft_lora(lora_dirs[1]))
    (store.experts.path(ids[2]) / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(CorruptAdapter):
        store.experts.path(ids[2])
    store.experts.delete(ids[3])
    with pytest.raises(NotFound):
        store.experts.path(ids[3])
    for bad in ("../../etc", "adp_" + "0" * 32, None):
        with pytest.raises(NotFound):
            store.experts.path(bad)
    with Store(store.root) as again:
        assert [e["expert_id"] for e in again.experts.list()] == ids[:3]
    (tmp_path / "notalora").mkdir()
    (tmp_path / "notalora" / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError):
        store.experts.add(tmp_path / "notalora", "x", "y", V[0], encoder.key)
    assert len(store.experts.list()) == 3 and not list((store.root / "tmp").rglob("exp_*"))


def test_a_description_becomes_an_adapter_of_the_callers_own(store, lora_dirs, encoder):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    made = GeneratedLoRAs(store, encoder)
    adapter_id, info = made.create(alice, name="mine", description="the dog sleeps", k=2)
    assert [a["adapter_id"] for a in store.list_adapters(alice)] == [adapter_id] and store.list_adapters(bob) == []
    ids, _ = store.experts.vectors(encoder.key)
    chosen = [read_peft_lora(lora_dirs[ids.index(e)]) for e in info["experts"]]
    same_update(read_peft_lora(store.adapter_path(alice, adapter_id)), blend_exact(chosen, info["weights"]))
    cvae_id, info = made.create(alice, texts=["gas is dear"], method="cvae", k=2, rank=2)
    assert read_peft_lora(store.adapter_path(alice, cvae_id)).rank == 2
    assert info["experts"] == ids and len(info["chosen"]) == 2 and sum(info["weights"]) == pytest.approx(1.0)
    fitted = made._generator[1]
    made.create(alice, texts=["gas is dear"], method="cvae", k=3, tau=0.5)
    assert made._generator[1] is fitted                           # a request's k and τ never refit the CVAE


def test_explicit_weights_blend_public_experts_and_the_callers_own_adapters_only(store, lora_dirs, encoder):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    own = store.put_adapter(alice, lora_dirs[0], "lora", "alice's")
    bobs = store.put_adapter(bob, lora_dirs[1], "lora", "bob's")
    public = store.experts.vectors(encoder.key)[0]
    made = GeneratedLoRAs(store, encoder)
    adapter_id, _ = made.create(alice, experts=[own, public[2]], weights=[0.25, 0.75], rank=3)
    expected, _ = blend_compact([read_peft_lora(lora_dirs[0]), read_peft_lora(lora_dirs[2])], [0.25, 0.75], 3)
    same_update(read_peft_lora(store.adapter_path(alice, adapter_id)), expected)
    with pytest.raises(NotFound) as err:                         # bob's adapter is not there for alice
        made.create(alice, experts=[public[0], bobs], weights=[0.5, 0.5])
    assert err.value.field == "experts[1]"
    with pytest.raises(NotFound) as missing:                     # ... exactly as a missing one is not
        made.create(alice, experts=[public[0], "adp_" + "0" * 32], weights=[0.5, 0.5])
    assert str(missing.value) == str(err.value)
    for kwargs, field in ((dict(experts=[own, public[1]], weights=[0.5, 0.6]), "weights"),
                          (dict(experts=[own], weights=None), "weights"),
                          (dict(experts=[own, own], weights=[0.5, 0.5]), "experts"),
                          (dict(experts=[own, public[1]], weights=[0.5, 0.5], k=2), "k"),
                          (dict(experts=[own, public[1]], weights=[0.5, 0.5], method="cvae"), "method"),
                          (dict(experts=[own, public[1]], weights=[0.5, 0.5], description="x"), "description"),
                          (dict(description="x", method="magic"), "method")):
        with pytest.raises(ConfigError) as err:
            made.create(alice, **kwargs)
        assert err.value.field == field
    assert len(store.list_adapters(alice)) == 2                 # own + the one made: nothing half-made is kept


def test_the_expert_cache_reads_each_expert_once_rereads_a_rebuilt_one_and_stays_bounded(lora_dirs, tmp_path,
                                                                                        monkeypatch):
    import shutil

    import parsona.adapters.peft_format as peft_format

    reads = []
    real = peft_format.read_peft_lora
    monkeypatch.setattr(peft_format, "read_peft_lora", lambda d: reads.append(str(d)) or real(d))
    one = sum(A.nbytes + B.nbytes for A, B in real(lora_dirs[0]).factors.values())
    cache = ExpertCache(max_bytes=2 * one)                          # room for two of these experts
    first = cache.load(lora_dirs[0])
    assert cache.load(lora_dirs[0]) is first and len(reads) == 1
    expert = tmp_path / "rebuilt"
    shutil.copytree(lora_dirs[0], expert)
    before = cache.load(expert)
    shutil.rmtree(expert)
    shutil.copytree(lora_dirs[1], expert)                           # rebuilt in place
    same_update(cache.load(expert), real(lora_dirs[1]))
    assert not torch.equal(before.factors[next(iter(before.factors))][1],
                           cache.load(expert).factors[next(iter(before.factors))][1])
    weights = expert / "adapter_model.safetensors"
    kept_times = weights.stat().st_atime_ns, weights.stat().st_mtime_ns
    shutil.copyfile(lora_dirs[0] / "adapter_model.safetensors", weights)   # rewritten, its times put back
    os.utime(weights, ns=kept_times)
    same_update(cache.load(expert), real(lora_dirs[0]))
    cache.load(lora_dirs[2])                                        # a third: the least recently used goes
    assert cache.nbytes <= 2 * one
    reads.clear()
    cache.load(lora_dirs[0])
    assert reads == [str(lora_dirs[0])]                             # evicted, so read again
    tiny = ExpertCache(max_bytes=one - 1)                           # an expert larger than the cache: read, not kept
    tiny.load(lora_dirs[0])
    assert tiny.nbytes == 0


def test_a_users_own_adapter_never_enters_the_shared_expert_cache(store, lora_dirs, encoder):
    alice, _ = store.create_user()
    own = store.put_adapter(alice, lora_dirs[0], "lora", "alice's")
    public = store.experts.vectors(encoder.key)[0]
    made = GeneratedLoRAs(store, encoder)
    made.create(alice, experts=[own, public[2]], weights=[0.25, 0.75])
    made.create(alice, description="the dog sleeps", k=2)
    kept = set(made.cache._items)
    assert str(store.experts.path(public[2])) in kept and len(kept) >= 2        # the explicit and the chosen ones
    assert kept <= {str(store.experts.path(e)) for e in public}                 # public experts only


def test_blends_and_the_generator_leave_the_shared_cached_experts_as_they_were_read(store, encoder):
    from parsona.adapters.peft_format import read_peft_lora

    made = GeneratedLoRAs(store, encoder, k=3)
    alice, _ = store.create_user()
    public = store.experts.vectors(encoder.key)[0]
    made.make(alice, description="the dog sleeps")
    made.make(alice, description="the dog sleeps", method="cvae", rank=2)
    made.make(alice, experts=public[:2], weights=[0.5, 0.5], rank=2)
    assert len(made.cache._items) == len(public)
    for path, (_, lora, _) in made.cache._items.items():
        fresh = read_peft_lora(path)
        for name, (A, B) in lora.factors.items():
            assert torch.equal(A, fresh.factors[name][0]) and torch.equal(B, fresh.factors[name][1])


def test_an_empty_bank_is_an_error_naming_the_fix(tmp_path, encoder):
    with Store(tmp_path / "empty") as s:
        user, _ = s.create_user()
        with pytest.raises(ConfigError) as err:
            GeneratedLoRAs(s, encoder).create(user, description="anything")
        assert err.value.field == "experts" and "build-expert-bank" in str(err.value)
