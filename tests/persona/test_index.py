"""NeighborIndex against brute force (numpy) and scikit-learn's NearestNeighbors."""

from __future__ import annotations

import numpy as np
import pytest

from parsona.errors import ConfigError
from parsona.persona import NeighborIndex


def bank(n=500, d=24, seed=0):
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X, [f"user-{i}" for i in range(n)]


def test_exact_search_matches_scikit_learns_cosine_neighbours():
    from sklearn.neighbors import NearestNeighbors

    X, ids = bank()
    Q = np.random.default_rng(1).standard_normal((20, 24))
    found, scores = NeighborIndex().fit(X, ids).kneighbors(Q, k=5)
    distance, rows = NearestNeighbors(n_neighbors=5, metric="cosine").fit(X).kneighbors(Q)
    assert found.tolist() == [[ids[r] for r in row] for row in rows]
    np.testing.assert_allclose(scores, 1 - distance, atol=1e-5)            # cosine similarity, best first


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_methods_find_most_true_neighbours(method):
    rng = np.random.default_rng(2)                          # 40 clusters of users, as embeddings of people form
    X = (rng.standard_normal((40, 24))[rng.integers(0, 40, 4000)] + 0.5 * rng.standard_normal((4000, 24))).astype(np.float32)
    ids = [f"user-{i}" for i in range(4000)]
    Q = X[:50] + 0.3 * rng.standard_normal((50, 24)).astype(np.float32)
    exact, _ = NeighborIndex().fit(X, ids).kneighbors(Q, k=10)
    approx, _ = NeighborIndex(method=method, n_lists=32, n_probe=8).fit(X, ids).kneighbors(Q, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.8


def test_k_beyond_the_bank_gives_every_row():
    X, ids = bank(n=3)
    found, scores = NeighborIndex().fit(X, ids).kneighbors(X[:1], k=10)
    assert found.shape == (1, 3) and found[0, 0] == "user-0" and scores[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("X, ids, field", [
    (np.zeros((2, 4)), None, "X"),                       # a zero vector has no direction
    (np.ones((2, 4)), ["a", "a"], "ids"),
    (np.ones((2, 4)), ["a"], "ids"),
    (np.full((2, 4), np.nan), None, "X"),
    (np.ones((0, 4)), None, "X"),
])
def test_bad_banks_are_refused(X, ids, field):
    with pytest.raises(ConfigError) as err:
        NeighborIndex().fit(X, ids)
    assert err.value.field == field


def test_bad_queries_are_refused():
    index = NeighborIndex().fit(*bank(n=10))
    with pytest.raises(ConfigError) as err:
        index.kneighbors(np.ones((1, 5)))
    assert err.value.field == "Q" and "(n, 24)" in str(err.value)
    with pytest.raises(ConfigError, match="fit"):
        NeighborIndex().kneighbors(np.ones((1, 5)))
    with pytest.raises(ConfigError):
        NeighborIndex(method="annoy").fit(*bank(n=10))
