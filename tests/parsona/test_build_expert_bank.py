"""parsona build-expert-bank and parsona generate-lora on the command line: a manifest or the Enron authors
into the public bank (a rerun keeps, --replace swaps), then a user's LoRA or a PEFT folder from it."""

from __future__ import annotations

import json

import pytest

from conftest import peft_lora_dir
from parsona.adapters.peft_format import read_peft_lora
from parsona.cli import main
from parsona.store import Store


@pytest.fixture
def manifest(tmp_path):
    lines = [{"name": f"e{n}", "lora": str(peft_lora_dir(tmp_path / f"e{n}", seed=n, r=2)), "description": text}
             for n, text in enumerate(["dogs and cats", "meetings on monday", "gas prices"])]
    lines.append({"name": "e3", "lora": str(peft_lora_dir(tmp_path / "e3", seed=3, r=2)), "texts": ["a report", "late"]})
    (tmp_path / "experts.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path / "experts.jsonl"


def test_a_manifest_fills_the_bank_once_and_users_generate_from_it(manifest, tmp_path, tiny_encoder_dir, capsys):
    store = str(tmp_path / "store")
    args = ["build-expert-bank", "--store", store, "--experts", str(manifest), "--encoder", str(tiny_encoder_dir)]
    assert main(args) == 0 and main(args) == 0                                    # a rerun keeps what is there
    with Store(store) as s:
        first = [e["expert_id"] for e in s.experts.list()]
        assert [e["name"] for e in s.experts.list()] == ["e0", "e1", "e2", "e3"]
        user, _ = s.create_user()
    assert main([*args, "--replace"]) == 0
    with Store(store) as s:
        assert len(s.experts.list()) == 4 and not set(first) & {e["expert_id"] for e in s.experts.list()}
    capsys.readouterr()
    common = ["generate-lora", "--store", store, "--encoder", str(tiny_encoder_dir), "--k", "2"]
    assert main([*common, "--user", user, "--description", "my dog", "--name", "cli"]) == 0
    printed = capsys.readouterr().out
    with Store(store) as s:
        [adapter] = s.list_adapters(user)
        assert adapter["name"] == "cli" and f"LoRA: {adapter['adapter_id']}" in printed and " e" in printed
    assert main([*common, "--output", str(tmp_path / "peft"), "--description", "gas", "--rank", "2"]) == 0
    assert read_peft_lora(tmp_path / "peft").rank == 2 and "largest relative error" in capsys.readouterr().out
    assert main([*common, "--description", "gas"]) == 2                          # neither --user nor --output
    assert "--user" in capsys.readouterr().err


@pytest.mark.parametrize("line, problem", [("not json", "JSON"), ('{"name": "x"}', '"lora"'),
                                           ('{"name": "x", "lora": "d", "description": "a", "texts": ["b"]}', "one of")])
def test_a_bad_manifest_line_is_named(tmp_path, tiny_encoder_dir, capsys, line, problem):
    (tmp_path / "m.jsonl").write_text(line + "\n")
    assert main(["build-expert-bank", "--store", str(tmp_path / "s"), "--experts", str(tmp_path / "m.jsonl"),
                 "--encoder", str(tiny_encoder_dir)]) == 2
    err = capsys.readouterr().err
    assert "m.jsonl:1" in err and problem in err


def test_the_enron_authors_become_experts(tmp_path, tiny_dir, tiny_encoder_dir):
    store = str(tmp_path / "store")
    assert main(["build-expert-bank", "--store", store, "--encoder", str(tiny_encoder_dir), "--model", tiny_dir,
                 "--authors", "3", "--max-emails", "3", "--max-steps", "1", "--batch-size", "2", "--max-length", "16",
                 "--rank", "2", "--output-dir", str(tmp_path / "runs")]) == 0
    with Store(store) as s:
        experts = s.experts.list()
        assert len(experts) == 3 and all(e["name"].startswith("enron:") for e in experts)
        assert read_peft_lora(s.experts.path(experts[0]["expert_id"])).rank == 2


def test_generate_lora_blends_explicit_experts_and_names_a_bad_one(manifest, tmp_path, tiny_encoder_dir, capsys):
    store = str(tmp_path / "store")
    assert main(["build-expert-bank", "--store", store, "--experts", str(manifest), "--encoder", str(tiny_encoder_dir)]) == 0
    with Store(store) as s:
        a, b = (e["expert_id"] for e in s.experts.list()[:2])
        expected = [read_peft_lora(s.experts.path(x)).rank for x in (a, b)]
    explicit = ["generate-lora", "--store", store, "--encoder", str(tiny_encoder_dir), "--experts", f"{a},{b}"]
    capsys.readouterr()
    assert main([*explicit, "--weights", "0.7,0.3", "--output", str(tmp_path / "mix")]) == 0
    printed = capsys.readouterr().out
    assert "0.700  e0" in printed and "0.300  e1" in printed
    assert read_peft_lora(tmp_path / "mix").rank == sum(expected)                 # the exact blend: ranks concatenated
    assert main([*explicit, "--weights", "0.7,0.2", "--output", str(tmp_path / "bad")]) == 2
    assert "weights" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main([*explicit, "--weights", "0.7,0.3", "--k", "2", "--output", str(tmp_path / "bad")]) == 2
    assert "k:" in capsys.readouterr().err                                        # k picks experts: not with --experts
    unknown = f"exp_{'0' * 32}"
    assert main([*explicit[:-1], f"{a},{unknown}", "--weights", "0.5,0.5", "--output", str(tmp_path / "bad")]) == 2
    assert "experts[1]: not found" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_generate_lora_help_states_the_library_defaults(capsys):
    from parsona.persona.experts import K, TAU

    with pytest.raises(SystemExit):
        main(["generate-lora", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {K})" in text and f"(default: {TAU})" in text
