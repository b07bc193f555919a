"""HistoryEncoder: unit rows, the model's own pooling, clear errors for bad history items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parsona.errors import ConfigError
from parsona.persona import HistoryEncoder, check_texts


def test_rows_are_the_models_own_cls_pooling_normalised(tiny_encoder_dir):
    from transformers import AutoModel, AutoTokenizer

    texts = ["the dog barks .", "call me monday", "the cat sleeps"]
    X = HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="fp32").fit_transform(texts)
    assert X.shape == (3, 16) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, rtol=1e-6)
    tokenizer, net = AutoTokenizer.from_pretrained(tiny_encoder_dir), AutoModel.from_pretrained(tiny_encoder_dir).eval()
    for text, row in zip(texts, X):                                     # one at a time, no padding: the reference
        with torch.no_grad():
            cls = net(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 0]
        np.testing.assert_allclose(row, (cls / cls.norm()).numpy(), atol=1e-5)


def test_long_texts_keep_their_first_tokens(tiny_encoder_dir):
    encoder = HistoryEncoder(model=str(tiny_encoder_dir), max_length=6, progress=False).fit()
    start = "the dog barks"
    a, b = encoder.transform([start + " . the cat sleeps . gas price", start + " . call me monday ."])
    np.testing.assert_allclose(a, b, atol=1e-6)                         # the same first 4 words + [CLS] + [SEP]


def test_an_empty_history_is_an_empty_matrix(tiny_encoder_dir):
    assert HistoryEncoder(model=str(tiny_encoder_dir), progress=False).transform([]).shape == (0, 16)


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


def test_max_length_is_capped_at_the_encoders_positions(tiny_encoder_dir):
    long = " ".join(["the dog barks ."] * 40)                            # 160 words: past the 64 positions
    X = HistoryEncoder(model=str(tiny_encoder_dir), max_length=256, progress=False).fit_transform([long])
    assert X.shape == (1, 16) and np.isfinite(X).all()


@pytest.mark.parametrize("file, content", [
    ("1_Pooling/config.json", {"pooling_mode_mean_tokens": True, "pooling_mode_mean_sqrt_len_tokens": True}),
    ("modules.json", [{"type": "sentence_transformers.models.Transformer"}, {"type": "sentence_transformers.models.Dense"}]),
])
def test_an_encoder_we_would_compute_differently_is_refused(tiny_encoder_dir, tmp_path, file, content):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_encoder_dir, model)
    (model / file).write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        HistoryEncoder(model=str(model), progress=False).fit()
    assert file.split("/")[-1] in err.value.field


def test_bf16_vectors_stay_close_to_fp32_ones_and_a_bad_precision_is_named(tiny_encoder_dir):
    texts = ["the dog barks .", "call me monday", "the cat sleeps"]
    exact = HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="fp32").fit_transform(texts)
    fast = HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="bf16").fit()
    assert fast.bf16_ and (fast.transform(texts) * exact).sum(1).min() > 0.999
    with pytest.raises(ConfigError) as err:
        HistoryEncoder(model=str(tiny_encoder_dir), progress=False, precision="fp8").fit()
    assert err.value.field == "precision"
