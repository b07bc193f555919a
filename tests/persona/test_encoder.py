"""HistoryEncoder: unit rows, the model's own pooling, clear errors for bad history items."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parsona.errors import ConfigError
from parsona.persona import HistoryEncoder, check_texts

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog", "cat", "barks", "sleeps", "meeting", "monday",
         "gas", "price", "call", "me", "."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 1-layer BERT + WordPiece tokenizer saved offline, pooled by its [CLS] token."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("bert")
    (path / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(path)
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 16, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    return path


def test_rows_are_the_models_own_cls_pooling_normalised(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    texts = ["the dog barks .", "call me monday", "the cat sleeps"]
    X = HistoryEncoder(model=str(tiny_bert), progress=False).fit_transform(texts)
    assert X.shape == (3, 16) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-6)
    tokenizer, net = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    for text, row in zip(texts, X):                                     # one at a time, no padding: the reference
        with torch.no_grad():
            cls = net(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 0]
        np.testing.assert_allclose(row, (cls / cls.norm()).numpy(), atol=1e-5)


def test_long_texts_keep_their_first_tokens(tiny_bert):
    encoder = HistoryEncoder(model=str(tiny_bert), max_length=6, progress=False).fit()
    start = "the dog barks"
    a, b = encoder.transform([start + " . the cat sleeps . gas price", start + " . call me monday ."])
    np.testing.assert_allclose(a, b, atol=1e-6)                         # the same first 4 words + [CLS] + [SEP]


def test_an_empty_history_is_an_empty_matrix(tiny_bert):
    assert HistoryEncoder(model=str(tiny_bert), progress=False).transform([]).shape == (0, 16)


@pytest.mark.parametrize("texts, field, says", [
    (["ok", "   "], "texts[1]", "empty"),
    ([b"ok", b"\xff\xfe"], "texts[1]", "UTF-8"),
    (["ok", 3], "texts[1]", "int"),
    ("one string", "texts", "not one string"),
])
def test_a_bad_history_item_is_named(texts, field, says):
    with pytest.raises(ConfigError) as err:
        check_texts(texts)
    assert err.value.field == field and says in str(err.value)


def test_utf8_bytes_are_decoded():
    assert check_texts([b"caf\xc3\xa9"]) == ["café"]


@pytest.mark.real
def test_minilm_places_paraphrases_closer_than_unrelated_texts():
    X = HistoryEncoder(progress=False).fit_transform(["Can we move the meeting to Monday?",
                                                      "Could the meeting be rescheduled for Monday?",
                                                      "Natural gas prices rose sharply in California."])
    assert X.shape == (3, 384)
    assert X[0] @ X[1] > 0.7 > 0.2 > X[0] @ X[2]
