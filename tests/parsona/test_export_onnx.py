"""ONNX export on a tiny model: the preference stays a live graph input, ORT matches torch, decoding with the
KV cache gives the host's tokens, and the runtime needs no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import perturb, tiny_tokenizer
from parsona.adapters import PreferenceLoRAConfig, attach
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.host import Host, Request

pytest.importorskip("onnxruntime")
from parsona.export.onnx import export  # noqa: E402
from parsona.export.runtime import OnnxGenerator  # noqa: E402

GRID = [[i / 10, 1 - i / 10] for i in range(11)]                 # 11 preferences on the simplex


def tiny(n_objectives=2, seed=0):
    torch.manual_seed(seed)
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    pref = attach(model, PreferenceLoRAConfig(rank=2, n_objectives=n_objectives))
    perturb(pref, std=1.0)
    return model, pref


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, pref = tiny()
    out = export(model, tiny_tokenizer(), tmp_path_factory.mktemp("onnx") / "export", [pref],
                 objectives=["helpful", "harmless"])
    return model, pref, out


def torch_logits(model, pref, ids, mask, lam):
    with torch.no_grad(), pref.inputs(preference=torch.tensor(lam, dtype=torch.float32)):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.numpy()


def test_ort_logits_match_torch_for_every_row_preference(exported):
    model, pref, out = exported
    gen = OnnxGenerator(out)
    prompts = [f"prompt number {i}" + "!" * i for i in range(11)]           # lengths differ: left padding
    ids, mask = gen.encode(prompts)
    meta = gen.meta_
    feeds = {"input_ids": ids, "attention_mask": mask, "preference": np.array(GRID, dtype=np.float32),
             **gen.empty_past(11)}
    ort_logits = gen.session_.run(["logits"], feeds)[0]
    ref = torch_logits(model, pref, torch.from_numpy(ids), torch.from_numpy(mask), GRID)
    valid = mask.astype(bool)
    assert np.abs(ort_logits[valid] - ref[valid]).max() <= 1e-4
    assert meta["inputs"][0]["name"] == "preference" and meta["inputs"][0]["shape"] == [2]
    assert meta["objectives"] == ["helpful", "harmless"] and meta["eos_token_ids"] == [2]


def test_greedy_decoding_with_the_cache_gives_the_hosts_tokens(exported):
    model, pref, out = exported
    gen = OnnxGenerator(out)
    prompts = ["hello there", "a much longer prompt than that", "hi"]
    lams = [[0.2, 0.8], [1.0, 0.0], [0.5, 0.5]]
    texts = gen.generate(prompts, preference=lams, max_new_tokens=20)
    host = Host(model, tiny_tokenizer(), adapters=[pref])
    expected = host.generate([Request(prompt=p, conditioning={"preference": lam}, max_new_tokens=20)
                              for p, lam in zip(prompts, lams)])
    assert texts == [c.text for c in expected]
    assert max(len(gen.tokenizer_.encode(t, add_special_tokens=False).ids) for t in texts) > 5


def test_the_preference_is_live_in_the_graph(exported):
    gen = OnnxGenerator(exported[2])
    a = gen.generate_ids(["same prompt"] * 2, preference=[[1.0, 0.0], [0.0, 1.0]], max_new_tokens=12)
    assert a[0] != a[1]
    again = gen.generate_ids(["same prompt"], preference=[1.0, 0.0], max_new_tokens=12)   # one row for all
    assert again[0] == a[0]
    s1 = gen.generate_ids(["x"], preference=[0.5, 0.5], max_new_tokens=8, temperature=1.0, seed=3)
    assert s1 == gen.generate_ids(["x"], preference=[0.5, 0.5], max_new_tokens=8, temperature=1.0, seed=3)


def test_three_objectives_export_with_no_code_change(tmp_path):
    model, pref = tiny(n_objectives=3, seed=1)
    gen = OnnxGenerator(export(model, tiny_tokenizer(), tmp_path / "m3", [pref]))
    assert gen.meta_["inputs"][0]["shape"] == [3]
    assert len(gen.generate(["hi"], preference=[[0.2, 0.3, 0.5]], max_new_tokens=3)) == 1


def test_bad_runtime_inputs_name_the_field_and_the_expected_width(exported):
    gen = OnnxGenerator(exported[2])
    with pytest.raises(ConfigError, match=r"preference.*\(1, 2\)") as e:
        gen.generate(["hi"], preference=[[0.2, 0.3, 0.5]])
    assert e.value.field == "preference"
    for bad in ([0.7, 0.7], [-0.5, 1.5], [float("nan"), 1.0]):
        with pytest.raises(ConfigError, match="^preference"):
            gen.generate(["hi"], preference=bad)
    with pytest.raises(ConfigError, match="^preference.*missing"):
        gen.generate(["hi"])
    with pytest.raises(ConfigError, match="^persona"):
        gen.generate(["hi"], preference=[0.5, 0.5], persona=[1.0])


def test_an_export_refuses_a_non_empty_directory_and_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    model, pref = tiny()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="^out"):
        export(model, tiny_tokenizer(), tmp_path / "full", [pref])
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        export(model, tiny_tokenizer(), tmp_path / "new", [pref])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_the_runtime_imports_and_generates_where_torch_cannot_be_imported(exported, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    code = textwrap.dedent(f"""
        import sys
        from parsona.export.runtime import OnnxGenerator
        print(OnnxGenerator({str(exported[2])!r}).generate(["hi"], preference=[0.4, 0.6], max_new_tokens=4))
        assert "torch" not in sys.modules or sys.modules["torch"] is None
    """)
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0                                 # the block is real


def test_the_cli_exports_and_generates_with_the_hosts_text(tmp_path, tiny_dir, capsys):
    from parsona.adapters import save_adapter
    from parsona.base_model import load_base_model
    from parsona.cli import main

    model, _ = load_base_model(tiny_dir)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref, std=1.0)
    save_adapter(pref, tmp_path / "pref")
    assert main(["export", "onnx", "--adapter", str(tmp_path / "pref"), "--out", str(tmp_path / "onnx")]) == 0
    assert "ONNX export" in capsys.readouterr().out
    assert main(["generate", "--onnx", str(tmp_path / "onnx"), "--preference", "0.3,0.7", "--max-new-tokens", "8",
                 "hello"]) == 0
    from_onnx = capsys.readouterr().out
    assert main(["generate", "--preference-adapter", str(tmp_path / "pref"), "--preference", "0.3,0.7",
                 "--max-new-tokens", "8", "hello"]) == 0
    assert capsys.readouterr().out == from_onnx
    assert main(["export", "onnx", "--adapter", str(tmp_path / "pref"), "--out", str(tmp_path / "onnx")]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.real
def test_the_runtime_renders_smollm2s_chat_template_as_transformers_does():
    from transformers import AutoTokenizer

    from parsona.base_model import _resolve

    tokenizer = AutoTokenizer.from_pretrained(_resolve(None))
    gen = OnnxGenerator.__new__(OnnxGenerator)
    gen.meta_ = {"chat_template": tokenizer.chat_template, "bos_token": tokenizer.bos_token,
                 "eos_token": tokenizer.eos_token}
    for messages in ([{"role": "user", "content": "Hi there"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"},
                      {"role": "assistant", "content": "Because."}, {"role": "user", "content": "Really?"}]):
        assert gen.chat_prompt(messages) == tokenizer.apply_chat_template(messages, tokenize=False,
                                                                          add_generation_prompt=True)


def test_a_persona_export_puts_the_placeholders_before_the_prompt_as_the_host_does(tmp_path):
    from parsona.adapters import PersonaPrefixConfig

    torch.manual_seed(0)
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()
    adapter = attach(model, PersonaPrefixConfig(persona_dim=8, placeholder_id=3))
    perturb(adapter, std=1.0)
    gen = OnnxGenerator(export(model, tiny_tokenizer(), tmp_path / "persona", [adapter]))
    personas = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    prompts = ["hello", "hi there"]
    texts = gen.generate(prompts, persona=personas.numpy(), max_new_tokens=10)
    host = Host(model, tiny_tokenizer(), adapters=[adapter])
    expected = host.generate([Request(prompt=p, conditioning={"persona": v.tolist()}, max_new_tokens=10)
                              for p, v in zip(prompts, personas)])
    assert texts == [c.text for c in expected]
    assert gen.generate(prompts, max_new_tokens=10) == [c.text for c in host.generate(
        [Request(prompt=p, max_new_tokens=10) for p in prompts])]            # not given: the base model
    marker = gen.tokenizer_.decode([3])                                      # the placeholder's own text
    assert 3 in gen.tokenizer_.encode(marker).ids
    with pytest.raises(ConfigError, match=r"^prompts\[0\]"):
        gen.generate([marker], persona=personas[:1].numpy())


def test_bad_seeds_and_half_precision_models_are_refused(exported, tmp_path):
    gen = OnnxGenerator(exported[2])
    with pytest.raises(ConfigError, match="^seed"):
        gen.generate(["hi"], preference=[0.5, 0.5], temperature=1.0, seed=-1)
    model, pref = tiny()
    with pytest.raises(ConfigError, match="^model"):
        export(model.to(torch.bfloat16), tiny_tokenizer(), tmp_path / "bf16", [pref])
    assert not (tmp_path / "bf16").exists()


def test_a_per_user_export_merges_the_users_lora_under_a_live_preference(tmp_path, tiny_dir, capsys):
    from conftest import peft_lora_dir
    from parsona.adapters import save_adapter
    from parsona.base_model import load_base_model
    from parsona.cli import main

    model, tokenizer = load_base_model(tiny_dir)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref, std=1.0)
    save_adapter(pref, tmp_path / "pref")
    lora = peft_lora_dir(tmp_path / "lora", seed=4)
    assert main(["export", "onnx", "--adapter", str(tmp_path / "pref"), "--lora", str(lora), "--out",
                 str(tmp_path / "user")]) == 0
    gen = OnnxGenerator(tmp_path / "user")
    host = Host(model, tokenizer, adapters=[pref], loras={"u": str(lora)})
    prompts, lams = ["hello there", "hi"], [[0.2, 0.8], [0.9, 0.1]]
    expected = host.generate([Request(prompt=p, conditioning={"preference": lam, "adapter": "u"}, max_new_tokens=12)
                              for p, lam in zip(prompts, lams)])
    assert gen.generate(prompts, preference=lams, max_new_tokens=12) == [c.text for c in expected]
    without = host.generate([Request(prompt=p, conditioning={"preference": lam}, max_new_tokens=12)
                             for p, lam in zip(prompts, lams)])
    assert [c.text for c in expected] != [c.text for c in without]          # the LoRA matters


def test_fp16_and_int8_variants_keep_the_inputs_live_and_stay_near_the_float32_graph(tmp_path, tiny_dir, capsys):
    import onnx

    from parsona.cli import main as cli

    model, pref = tiny()
    out = export(model, tiny_tokenizer(), tmp_path / "export", [pref], variants=["fp16", "int8"])
    assert OnnxGenerator(out).meta_["variants"] == {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
    full = OnnxGenerator(out)
    ids, mask = full.encode(["hello there", "a cat sat on the mat"])
    valid = mask.astype(bool)

    def logits(gen, lam):
        feeds = {"input_ids": ids, "attention_mask": mask, "preference": np.array(lam, np.float32), **gen.empty_past(2)}
        return gen.session_.run(["logits"], feeds)[0][valid]                         # (valid tokens, V)

    ref = logits(full, [[0.2, 0.8], [1.0, 0.0]])
    for variant, atol, agree in (("fp16", 2e-2, 1.0), ("int8", None, 1.0)):
        gen = OnnxGenerator(out, variant=variant)
        got = logits(gen, [[0.2, 0.8], [1.0, 0.0]])
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= agree, variant
        if atol is not None:
            assert np.abs(got - ref).max() <= atol
        assert np.abs(got - logits(gen, [[0.8, 0.2], [0.0, 1.0]])).max() > 1e-3    # λ is still live
        assert [i.type for i in gen.session_.get_inputs()][:3] == ["tensor(int64)", "tensor(int64)", "tensor(float)"]
    from parsona.export.variants import adapter_nodes

    float32 = onnx.load(str(out / "model.onnx"))
    inside = set(adapter_nodes(float32))
    kept = {n.name for n in float32.graph.node if n.op_type == "MatMul" and n.name in inside}
    quantized = onnx.load(str(out / "model.int8.onnx")).graph.node
    assert len(kept) == 2 * len(pref.layers)                                          # x V and z Uᵀ per Linear
    assert kept <= {n.name for n in quantized if n.op_type == "MatMul"}              # the adapters' factors: float32
    weights = {i.name for i in float32.graph.initializer}
    base = [n for n in float32.graph.node if n.op_type == "MatMul" and n.input[1] in weights and n.name not in inside]
    assert len(base) >= len(pref.layers)                                        # each adapted Linear's W0 (and lm_head)
    assert sum(n.op_type == "MatMulNBits" for n in quantized) == len(base)     # every base weight: int8
    ops = {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert "MatMulNBits" in ops, ops                                              # weights really are 8-bit blocks
    halves = [t for t in onnx.load(str(out / "model.fp16.onnx")).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves
    packed = [n for n in onnx.load(str(out / "model.int8.onnx")).graph.node if n.op_type == "MatMulNBits"]
    assert len(packed) >= 7 * model.config.num_hidden_layers                      # q k v o gate up down per layer
    assert all(a.i == 8 for n in packed for a in n.attribute if a.name == "bits")
    with pytest.raises(ConfigError, match="variants"):
        export(model, tiny_tokenizer(), tmp_path / "other", [pref], variants=["int4"])
    assert not (tmp_path / "other").exists()
    with pytest.raises(ConfigError, match="variant"):
        OnnxGenerator(out, variant="bf16")
    assert cli(["generate", "--onnx", str(out), "--onnx-variant", "int8", "--max-new-tokens", "3", "hi"]) == 0
    capsys.readouterr()
    assert cli(["generate", "--onnx-variant", "int8", "--model", tiny_dir, "hi"]) == 2
    assert "--onnx-variant" in capsys.readouterr().err


def test_onnxruntime_genai_loads_the_export_and_takes_the_preference_per_row(exported):
    og = pytest.importorskip("onnxruntime_genai")
    _, _, out = exported
    ours = OnnxGenerator(out)
    model = og.Model(str(out))
    ids, mask = ours.encode(["hello there", "a cat sat on the mat"])
    lam = np.array([[1.0, 0.0], [0.2, 0.8]], np.float32)
    feeds = {"input_ids": ids, "attention_mask": mask, "preference": lam, **ours.empty_past(2)}
    want = ours.session_.run(["logits"], feeds)[0][:, -1]                          # (2, V): the last prompt token
    for row in range(2):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=64, batch_size=1)
        gen = og.Generator(model, params)
        gen.set_model_input("preference", lam[row:row + 1])
        gen.append_tokens(ids[row:row + 1][mask[row:row + 1].astype(bool)][None].astype(np.int32))
        got = np.asarray(gen.get_logits()).reshape(-1)
        assert np.abs(got - want[row]).max() <= 1e-4, (row, np.abs(got - want[row]).max())
    assert np.abs(want[0] - want[1]).max() > 1e-3                                  # the rows' λ differ, so do they


def test_a_live_preference_lora_costs_four_nodes_per_adapted_linear(exported, tmp_path):
    """At decode every node is a kernel launch: x V, the Mul by [1, λ], z Uᵀ and the Add, nothing more per
    Linear (σ, the learned scale and alpha / r fold into U at export; [1, λ] is computed once)."""
    import onnx

    _, pref, out = exported
    model, other = tiny()
    other.detach()
    bare = export(model, tiny_tokenizer(), tmp_path / "bare", [])
    n_bare = len(onnx.load(str(bare / "model.onnx")).graph.node)
    n_pref = len(onnx.load(str(out / "model.onnx")).graph.node)
    assert n_pref - n_bare <= 4 * len(pref.layers) + 4                   # + [1, λ]'s own few nodes, once


def test_no_parameter_only_arithmetic_is_left_for_the_runtime(tmp_path):
    """An MLP wide enough that U (1,024 × 16) is past the exporter's own folding limit: its product with the
    constant singular values is stored folded, not left as nodes (fp16 would run them at every step)."""
    import onnx

    torch.manual_seed(0)
    model = tiny_causal_lm(vocab_size=259, pad_token_id=0, bos_token_id=1, eos_token_id=2, intermediate_size=1024).eval()
    pref = attach(model, PreferenceLoRAConfig(rank=0, n_objectives=2, preference_rank=8))
    perturb(pref, std=0.1)
    graph = onnx.load(str(export(model, tiny_tokenizer(), tmp_path / "wide", [pref]) / "model.onnx")).graph
    constant = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    left = [n.op_type for n in graph.node if n.op_type != "Constant" and n.input and all(i in constant for i in n.input if i)]
    assert left == []
