"""parsona.groups: real group data as Questions (OpinionQA rows, MovieLens ratings) and synthetic groups."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parsona.data.opinionqa import read_opinionqa_file
from parsona.groups import LEVELS, RatingPrior, mixed_groups, movie_question, movie_text, opinionqa_tasks, rating_dist
from parsona.persona import HistoryEncoder, Question

ROWS = [  # two questions, three groups, in GPO's format
    {"qkey": "A_W1", "wave": "W1", "question": "Favor more parks?", "options": ["yes", "no"], "attribute": "X",
     "group": "Overall", "dist": [0.6, 0.4]},
    {"qkey": "A_W1", "wave": "W1", "question": "Favor more parks?", "options": ["yes", "no"], "attribute": "X",
     "group": "Left", "dist": [0.8, 0.2]},
    {"qkey": "B_W2", "wave": "W2", "question": "How often do you read?", "options": ["often", "sometimes", "never"],
     "attribute": "X", "group": "Overall", "dist": [0.2, 0.5, 0.3]},
    {"qkey": "B_W2", "wave": "W2", "question": "How often do you read?", "options": ["often", "sometimes", "never"],
     "attribute": "X", "group": "Left", "dist": [0.3, 0.5, 0.2]},
    {"qkey": "B_W2", "wave": "W2", "question": "How often do you read?", "options": ["often", "sometimes", "never"],
     "attribute": "X", "group": "Right", "dist": [0.1, 0.4, 0.5]},
]


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "groups.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_opinionqa_rows_become_embedded_questions_with_the_overall_prior(rows_file, tiny_encoder_dir, tmp_path):
    encoder = HistoryEncoder(str(tiny_encoder_dir), progress=False).fit()
    tasks = opinionqa_tasks(encoder, tmp_path / "cache", read_opinionqa_file(rows_file))
    assert set(tasks.questions) == {"Overall", "Left", "Right"} and tasks.wave == {"A_W1": "W1", "B_W2": "W2"}
    left = tasks.questions["Left"]["B_W2"]
    assert left.vectors.shape == (3, 16)
    np.testing.assert_allclose(left.dist, [0.3, 0.5, 0.2])
    np.testing.assert_allclose(left.prior, [0.2, 0.5, 0.3])
    expected = encoder.transform(["Question: How often do you read?\nAnswer: never"])[0]
    np.testing.assert_allclose(left.vectors[2], expected, atol=1e-6)
    assert tasks.questions["Right"]["B_W2"].vectors is left.vectors        # one array per question, shared
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    again = opinionqa_tasks(encoder, tmp_path / "cache", read_opinionqa_file(rows_file))    # read from the cache
    np.testing.assert_array_equal(again.questions["Left"]["B_W2"].vectors, left.vectors)
    assert opinionqa_tasks(encoder, tmp_path / "c2", read_opinionqa_file(rows_file), "Nobody").questions[
        "Left"]["A_W1"].prior is None


def test_a_mixed_group_is_a_combination_of_departures_from_the_prior():
    prior = np.array([0.5, 0.3, 0.2])
    a, b = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.3, 0.5])
    v = np.zeros((3, 2), dtype=np.float32)
    tables = [{"q": Question(v, a, prior), "only_a": Question(v, a, prior)}, {"q": Question(v, b, prior)}]
    mixed = mixed_groups(tables, 3, scale=1.0, seed=0)
    assert len(mixed) == 3 and all(len(g) == 1 for g in mixed)             # only the question both tables hold
    c = np.random.default_rng(0).normal(0.0, 1.0, size=2)                   # the coefficients of the first group
    z = np.log(prior) + c[0] * (np.log(a) - np.log(prior)) + c[1] * (np.log(b) - np.log(prior))
    np.testing.assert_allclose(mixed[0][0].dist, np.exp(z) / np.exp(z).sum(), atol=1e-6)
    np.testing.assert_allclose(mixed_groups(tables, 1, scale=0.0)[0][0].dist, prior, atol=1e-6)
    rng = np.random.default_rng(0)                                          # random_scale: c shrunk by s ~ U(0, 1)
    c, s = rng.normal(0.0, 1.0, size=2), rng.uniform()
    z = np.log(prior) + s * (c[0] * (np.log(a) - np.log(prior)) + c[1] * (np.log(b) - np.log(prior)))
    np.testing.assert_allclose(mixed_groups(tables, 1, seed=0, random_scale=True)[0][0].dist,
                               np.exp(z) / np.exp(z).sum(), atol=1e-6)


def test_a_rating_prior_leaves_out_the_users_own_rating_and_sums_to_one():
    prior = RatingPrior([(1, 5.0), (1, 5.0), (1, 4.0), (2, 1.0)], alpha=0.0)
    np.testing.assert_allclose(prior(1)[[7, 9]], [1 / 3, 2 / 3])            # levels 4.0 and 5.0
    np.testing.assert_allclose(prior(1, exclude=4.0)[9], 1.0)
    smoothed = RatingPrior([(1, 5.0)], alpha=5.0)
    assert np.isclose(smoothed(1).sum(), 1.0) and np.isclose(smoothed(99).sum(), 1.0)
    assert smoothed(99).argmax() == 9                                        # an unseen movie: the global shares
    assert rating_dist(3.5).argmax() == 6 and LEVELS[6] == 3.5
    with pytest.raises(ValueError):
        rating_dist(3.7)


def test_a_movie_question_repeats_the_movies_vector_without_copies():
    v = np.arange(4, dtype=np.float32)
    q = movie_question(v, 4.5, np.full(10, 0.1, dtype=np.float32))
    assert q.vectors.shape == (10, 4) and q.vectors.strides[0] == 0 and q.dist.argmax() == 8
    assert movie_question(v, None, np.full(10, 0.1)).dist is None
    assert movie_text("Heat (1995)", ("Action", "Crime"), ["Pacino", "pacino", "heist"]) == \
        "Heat (1995) | Action, Crime | tags: pacino, heist"
    assert movie_text("Nada (1974)", ()) == "Nada (1974) | no genre"
