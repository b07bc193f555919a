"""The adapter contract (docs/architecture.md), checked for every registered type automatically.

Each check is a plain function of ``(name, model, input_ids, tmp_path)`` collected in ``CONTRACT``;
the tests below parametrize them over the registry, and :func:`check_contract` runs them all for a
type registered later (a test's throwaway type).
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import weakref
from pathlib import Path

import pytest
import torch

from conftest import perturb
from parsona.adapters import attach, get, load_adapter, names, save_adapter
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError

TYPES = names()
ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


@pytest.fixture
def input_ids(name, input_ids):
    """The ids a request of type ``name`` carries: a soft-token type marks where its tokens go
    (``Adapter.example_input_ids``; every other type leaves the ids as they are)."""
    return get(name).adapter_cls.example_input_ids(input_ids, get(name).config_cls())


def run(model, adapter, input_ids, inputs):
    with torch.no_grad(), adapter.inputs(**inputs):
        return model(input_ids).logits


def rows_of(inputs: dict, row: int) -> dict:
    """Row ``row`` of a batch of runtime inputs, still a batch (of one)."""
    return {k: v[row : row + 1] for k, v in inputs.items()}


def test_every_folder_is_a_registered_type():
    folders = {p.parent.name for p in ADAPTERS.glob("*/__init__.py")}
    assert folders and folders <= set(TYPES), sorted(folders - set(TYPES))


@pytest.mark.parametrize("name", TYPES)
def test_identity_at_init(name, tiny_model, input_ids):
    with torch.no_grad():
        base = tiny_model(input_ids).logits
    adapter = attach(tiny_model, get(name).config_cls())
    out = run(tiny_model, adapter, input_ids, adapter.example_inputs(len(input_ids)))
    torch.testing.assert_close(out, base, rtol=0, atol=0)


@pytest.mark.parametrize("name", TYPES)
def test_save_load_round_trip_and_base_untouched(name, tiny_model, input_ids, tmp_path):
    base_state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        base = tiny_model(input_ids).logits
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(len(input_ids), torch.Generator().manual_seed(0))
    before = run(tiny_model, adapter, input_ids, inputs)
    assert not torch.allclose(before, base)  # the perturbation is visible, so the round trip means something

    save_adapter(adapter, tmp_path / "saved")
    other = tiny_causal_lm()
    loaded = load_adapter(other, tmp_path / "saved")
    assert type(loaded) is type(adapter)
    assert loaded.config == adapter.config
    torch.testing.assert_close(run(other, loaded, input_ids, inputs), before)

    adapter.detach()
    after = tiny_model.state_dict()
    assert after.keys() == base_state.keys()
    for key, value in base_state.items():
        torch.testing.assert_close(after[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", TYPES)
def test_adapter_keys_are_prefixed_with_the_type(name, tiny_model):
    base_keys = set(tiny_model.state_dict())
    adapter = attach(tiny_model, get(name).config_cls())
    added = set(tiny_model.state_dict()) - base_keys
    assert added == set(adapter.state_dict())
    assert added and all(f".{name}." in key for key in added)
    assert all(f".{name}." not in key for key in base_keys)


@pytest.mark.parametrize("name", TYPES)
def test_mixed_batch_equals_row_by_row(name, tiny_model, input_ids):
    # float64: in fp32 a batch of 4 and a batch of 1 take different GEMM blockings, whose rounding
    # (~1e-5 on these logits) is as large as fp32's tolerance; in fp64 it is ~1e-16, so a tight
    # tolerance checks the routing of rows, not the luck of the kernels
    tiny_model.double()
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(len(input_ids), torch.Generator().manual_seed(3))
    batch = run(tiny_model, adapter, input_ids, inputs)
    for row in range(len(input_ids)):
        torch.testing.assert_close(batch[row : row + 1], run(tiny_model, adapter, input_ids[row : row + 1], rows_of(inputs, row)))
    # the rows really differ: a mixed batch that ignored its inputs would pass the loop above too
    assert not torch.allclose(batch[0], run(tiny_model, adapter, input_ids[:1], rows_of(inputs, 1))[0])


@pytest.mark.parametrize("name", TYPES)
def test_rows_checked_and_stacked_give_the_batch(name, tiny_model, input_ids):
    # what the host does with a request per row: check_row each value, stack_rows the batch
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(len(input_ids), torch.Generator().manual_seed(6))
    assert set(inputs) == set(adapter.input_names) == set(get(name).input_names())
    stacked = {}
    for key, batch in inputs.items():
        rows = [batch[i] for i in range(len(input_ids))]
        wire = [r.tolist() if isinstance(r, torch.Tensor) else r for r in rows]  # what JSON would carry
        stacked[key] = adapter.stack_rows(key, [None if w is None else adapter.check_row(key, w) for w in wire])
    torch.testing.assert_close(run(tiny_model, adapter, input_ids, stacked), run(tiny_model, adapter, input_ids, inputs))


@pytest.mark.parametrize("name", TYPES)
def test_a_bad_row_value_names_its_input(name, tiny_model):
    adapter = attach(tiny_model, get(name).config_cls())
    for key in adapter.input_names:
        for bad in (object(), "\u0000" * 3, [[[1.0]]]):
            with pytest.raises(ConfigError) as err:
                adapter.check_row(key, bad)
            assert err.value.field == key


@pytest.mark.parametrize("name", TYPES)
def test_attach_freezes_the_base(name, tiny_model):
    # PEFT's rule: an optimizer over requires_grad parameters must train the adapter only
    adapter = attach(tiny_model, get(name).config_cls())
    trainable = {id(p) for p in tiny_model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in adapter.parameters()} and trainable
    adapter.detach()   # ...and the last detach gives the base back as it was
    assert all(p.requires_grad for p in tiny_model.parameters())


@pytest.mark.parametrize("name", TYPES)
def test_weights_changed_inside_one_inputs_block_are_used(name, tiny_model, input_ids):
    # layers may reuse per-batch values across the forwards of one block (decode steps); never stale ones
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(len(input_ids), torch.Generator().manual_seed(4))
    with torch.no_grad(), adapter.inputs(**inputs):
        first = tiny_model(input_ids).logits
        again = tiny_model(input_ids).logits
        perturb(adapter, seed=2)
        changed = tiny_model(input_ids).logits
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert (changed - first).abs().max() > 1e-3
    torch.testing.assert_close(changed, run(tiny_model, adapter, input_ids, inputs))


@pytest.mark.parametrize("name", TYPES)
def test_a_finished_block_leaves_nothing_of_its_batch_alive(name, tiny_model, input_ids):
    # per-batch caches (each row's gathered weights) can be ~100s of MB on a real model
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    with torch.no_grad(), adapter.inputs(**adapter.example_inputs(len(input_ids))):
        tiny_model(input_ids)
        tiny_model(input_ids)
        alive = [weakref.ref(v) for v in adapter._inputs.values() if isinstance(v, torch.Tensor)]
    assert alive
    gc.collect()
    assert all(ref() is None for ref in alive)


@pytest.mark.parametrize("name", TYPES)
def test_merge_equals_unmerged(name, tiny_model, input_ids):
    if not get(name).adapter_cls.mergeable:
        adapter = attach(tiny_model, get(name).config_cls())
        single = {k: v[0] for k, v in adapter.example_inputs(1).items()}
        with pytest.raises(ConfigError, match="cannot be folded") as err:  # says so, never a wrong merge
            adapter.merge(**single)
        assert err.value.field == "merge"
        return
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(1, torch.Generator().manual_seed(5))
    single = {k: v[0] for k, v in inputs.items()}
    rows = {k: v[:1] * len(input_ids) if isinstance(v, list) else v.expand(len(input_ids), *v.shape[1:])
            for k, v in inputs.items()}
    unmerged = run(tiny_model, adapter, input_ids, rows)
    weights = {k: v.clone() for k, v in tiny_model.state_dict().items() if f".{name}." not in k}
    adapter.merge(**single)
    assert not any(m._forward_hooks for m in tiny_model.modules())  # merged runs the bare model's code
    with torch.no_grad():
        merged = tiny_model(input_ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)  # fp32 rounding: W0 + ΔW vs W0 x + ΔW x
    adapter.unmerge()
    for key, value in weights.items():
        torch.testing.assert_close(tiny_model.state_dict()[key], value, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", TYPES)
def test_bad_config_names_the_field(name, tiny_model):
    config_cls = get(name).config_cls
    for field in dataclasses.fields(config_cls):
        if field.type in ("int", int) and isinstance(field.default, int):
            with pytest.raises(ConfigError) as err:
                config_cls(**{field.name: -1})
            assert err.value.field == field.name
    if "target_modules" not in {f.name for f in dataclasses.fields(config_cls)}:
        return  # this type does not adapt Linears by name
    with pytest.raises(ConfigError) as err:
        attach(tiny_model, config_cls(target_modules=("no_such_proj",)))
    assert err.value.field == "target_modules" and "q_proj" in str(err.value)


@pytest.mark.parametrize("name", TYPES)
def test_forward_without_inputs_is_an_error(name, tiny_model, input_ids):
    attach(tiny_model, get(name).config_cls())
    with pytest.raises(RuntimeError, match="adapter.inputs"):
        tiny_model(input_ids)


@pytest.mark.parametrize("name", TYPES)
def test_disabled_runs_the_base_model(name, tiny_model, input_ids):
    with torch.no_grad():
        base = tiny_model(input_ids).logits
    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    with torch.no_grad(), adapter.disabled():
        torch.testing.assert_close(tiny_model(input_ids).logits, base, rtol=0, atol=0)
    assert not torch.allclose(run(tiny_model, adapter, input_ids, adapter.example_inputs(len(input_ids))), base)


@pytest.mark.parametrize("name", TYPES)
def test_onnx_export_equals_torch(name, tiny_model, input_ids, tmp_path):
    """Check 7: exported with its runtime inputs as graph inputs, onnxruntime's logits equal torch's; a type
    whose input is not a tensor (the LoRA bank's adapter ids) is refused by the exporter, naming the input."""
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnxruntime as ort

    from conftest import tiny_tokenizer
    from parsona.export.onnx import MODEL_NAME, export

    adapter = attach(tiny_model, get(name).config_cls())
    perturb(adapter)
    inputs = adapter.example_inputs(len(input_ids), torch.Generator().manual_seed(2))
    if not all(isinstance(v, torch.Tensor) and v.is_floating_point() for v in inputs.values()):
        with pytest.raises(ConfigError) as e:
            export(tiny_model, tiny_tokenizer(), tmp_path / "onnx", [adapter])
        assert e.value.field in adapter.input_names and not (tmp_path / "onnx").exists()
        return
    out = export(tiny_model, tiny_tokenizer(), tmp_path / "onnx", [adapter])
    config = tiny_model.config
    empty = np.zeros((len(input_ids), config.num_key_value_heads, 0, config.hidden_size // config.num_attention_heads),
                     dtype=np.float32)
    feeds = {"input_ids": input_ids.numpy(), "attention_mask": np.ones(input_ids.shape, dtype=np.int64),
             **{k: v.float().numpy() for k, v in inputs.items()},
             **{f"past_key_values.{i}.{kv}": empty for i in range(config.num_hidden_layers) for kv in ("key", "value")}}
    logits = ort.InferenceSession(str(out / MODEL_NAME)).run(["logits"], feeds)[0]
    np.testing.assert_allclose(logits, run(tiny_model, adapter, input_ids, inputs).numpy(), atol=1e-4, rtol=0)


CONTRACT = [f for n, f in sorted(globals().items()) if n.startswith("test_") and "name" in inspect.signature(f).parameters]


def check_contract(name: str, tmp_path: Path) -> list[str]:
    """Run every contract check for type ``name`` on fresh tiny models; returns the checks run."""
    ran = []
    for check in CONTRACT:
        wanted = inspect.signature(check).parameters
        ids = torch.randint(3, 256, (4, 7), generator=torch.Generator().manual_seed(0))
        kwargs = {"name": name, "tiny_model": tiny_causal_lm(), "tmp_path": tmp_path / check.__name__,
                  "input_ids": get(name).adapter_cls.example_input_ids(ids, get(name).config_cls())}
        kwargs["tmp_path"].mkdir(parents=True, exist_ok=True)
        check(**{k: v for k, v in kwargs.items() if k in wanted})
        ran.append(check.__name__)
    return ran
