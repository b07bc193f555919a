"""Shared fixtures: tiny seeded models and token batches (milliseconds to build)."""

from __future__ import annotations

import pytest
import torch

from parsona.base_model import save_tiny_model, tiny_causal_lm


@pytest.fixture(autouse=True)
def _reference_cache(tmp_path_factory, monkeypatch):
    """Training recipes keep reference log-probs in the parsona cache: each test gets its own, empty."""
    monkeypatch.setattr("parsona.training.reference.default_dir", lambda: tmp_path_factory.mktemp("reference-logps"))


@pytest.fixture
def tiny_model():
    return tiny_causal_lm()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A saved tiny causal LM + tokenizer directory: what ``--model`` / ``Config.model`` take (read-only)."""
    return str(save_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory):
    """A random 1-layer BERT sentence encoder saved offline (width 16, 64 positions), pooled by [CLS]."""
    from parsona.persona import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("encoder") / "bert", pooling="cls")


@pytest.fixture
def input_ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, 256, (4, 7), generator=g)


def perturb(adapter, seed: int = 1, std: float = 0.5) -> None:
    """Move every adapter parameter away from its (identity) init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def tiny_tokenizer():
    """A byte-level tokenizer built offline (259 ids: <pad>=0, <s>=1, </s>=2, then one per byte).

    Pair it with ``tiny_causal_lm(vocab_size=259, pad_token_id=0)``; it has no chat template.
    """
    from parsona.base_model import tiny_tokenizer as build

    return build()


def peft_lora_dir(path, seed, r=4, targets=("q_proj", "v_proj", "down_proj"), alpha=None):
    """A real PEFT LoRA for the byte-level tiny model (vocab 259), with random non-zero weights and
    ``lora_alpha`` ``alpha`` (default 2r); README.md removed (the store keeps weights only)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(tiny_causal_lm(vocab_size=259, pad_token_id=0),
                           LoraConfig(r=r, lora_alpha=alpha or 2 * r, target_modules=list(targets), init_lora_weights=False))
    for p in model.parameters():
        if p.requires_grad:  # PEFT's random init is small: make each user's LoRA clearly matter
            p.data.mul_(8)
    model.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)
    return path


@pytest.fixture(scope="session")
def expert_lora_dirs(tmp_path_factory):
    """Four rank-2 PEFT LoRAs of the tiny model (seeds 0-3): an expert bank for generated LoRAs."""
    root = tmp_path_factory.mktemp("experts")
    return [peft_lora_dir(root / f"e{n}", seed=n, r=2) for n in range(4)]


def start_serve(args: list[str], admin_key: str, seconds: float = 90):
    """A real ``parsona serve ARGS`` on a free loopback port, once /healthz answers: (process, base url).
    One torch thread (tiny models); stdout and stderr together in ``process.stdout``."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PARSONA_ADMIN_KEY": admin_key, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "parsona.cli", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"parsona serve exited with {proc.returncode}:\n{proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"parsona serve did not answer /healthz within {seconds} s")


def load_bench(name: str):
    """``bench/<name>.py`` as a module named ``name``, as when it runs as a script: bench/ on the path (a
    bench may import another), and in ``sys.modules`` (config_cli reads a Config's field docs and type
    hints through its module). Loaded once per session."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def stored_host(tmp_path, **host_kwargs):
    """(host, store): the byte-level tiny model with a perturbed 2-objective preference LoRA, serving a new
    store under tmp_path; what the HTTP tests build their app on."""
    from parsona.adapters import PreferenceLoRAConfig, attach
    from parsona.host import Host
    from parsona.store import Store

    model = tiny_causal_lm(vocab_size=259, pad_token_id=0)
    pref = attach(model, PreferenceLoRAConfig(rank=2))
    perturb(pref)
    store = Store(tmp_path / "store")
    return Host(model, tiny_tokenizer(), store, pref, **host_kwargs), store
