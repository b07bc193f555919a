"""Nearest neighbours among unit vectors (personas, history items) on faiss, by inner product.

    index = NeighborIndex().fit(X, ids=user_ids)          # X (n, d); exact search
    ids, scores = index.kneighbors(Q, k=5)                # (q, k) each, best first

On unit vectors the inner product is the cosine similarity, so ``fit`` and ``kneighbors``
L2-normalise copies of what they are given (a zero row is an error: it has no direction).
``method="exact"`` (faiss ``IndexFlatIP``) is the default and what tests compare against; for a
large bank ``"ivf"`` (``IndexIVFFlat``: k-means into ``n_lists`` cells, ``n_probe`` of them
searched) or ``"hnsw"`` (``IndexHNSWFlat``, ``hnsw_m`` links per node, ``ef_search`` candidates)
trade a little recall for speed. Ids are any strings; faiss itself only ever sees row numbers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from parsona.errors import ConfigError

METHODS = ("exact", "ivf", "hnsw")


class NeighborIndex:
    """scikit-learn style: hyperparameters here; after :meth:`fit`, ``index_`` (faiss), ``ids_``
    (n,) and ``dim_``."""

    def __init__(self, method: str = "exact", n_lists: int = 64, n_probe: int = 8, hnsw_m: int = 32,
                 ef_search: int = 64, seed: int = 0):
        self.method = method
        self.n_lists = n_lists
        self.n_probe = n_probe
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.seed = seed

    def fit(self, X, ids: Sequence[str] | None = None) -> "NeighborIndex":
        if self.method not in METHODS:
            raise ConfigError("method", f"Use one of {', '.join(METHODS)}.", problem=f"got {self.method!r}")
        X = unit_rows(X, "X")                                                   # (n, d) float32
        ids = [str(i) for i in range(len(X))] if ids is None else [str(i) for i in ids]
        if len(ids) != len(X) or len(set(ids)) != len(ids):
            raise ConfigError("ids", "Give one distinct id per row of X.",
                              problem=f"{len(ids)} ids ({len(set(ids))} distinct) for {len(X)} rows")
        self.index_ = self._build(X)
        self.ids_, self.dim_ = np.asarray(ids, dtype=object), X.shape[1]
        return self

    def kneighbors(self, Q, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows most similar to each query: ids (q, k) and inner products (q, k), best first;
        ``k`` larger than the index gives every row (exact search). The approximate methods may find
        fewer than ``k`` (IVF searches only ``n_probe`` cells): those slots hold id None and score -inf."""
        if not hasattr(self, "index_"):
            raise ConfigError("NeighborIndex", "Call fit(X, ids) before kneighbors.", problem="not fitted")
        if k < 1:
            raise ConfigError("k", "Ask for at least one neighbour.", problem=f"got {k}")
        Q = unit_rows(Q, "Q", self.dim_)                                         # (q, d)
        scores, rows = self.index_.search(Q, min(k, len(self.ids_)))            # (q, k) each; -1: no row found
        found = rows >= 0
        ids = np.where(found, self.ids_[np.where(found, rows, 0)], None)
        return ids, np.where(found, scores, -np.inf).astype(np.float32)

    def _build(self, X: np.ndarray):
        import faiss

        d = X.shape[1]
        if self.method == "exact":
            index = faiss.IndexFlatIP(d)
        elif self.method == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        else:
            n_lists = max(1, min(self.n_lists, len(X) // 39))   # faiss wants ≥ 39 training points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, n_lists, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = self.seed
            index.train(X)
            index.nprobe = min(self.n_probe, n_lists)
        index.add(X)
        return index


def unit_rows(X, field: str, dim: int | None = None) -> np.ndarray:
    """(n, d) float32 C-contiguous copy of ``X`` with every row scaled to length 1."""
    X = np.array(X, dtype=np.float32, ndmin=2, copy=True)
    if X.ndim != 2 or X.shape[0] == 0 or (dim is not None and X.shape[1] != dim):
        want = f"(n, {dim})" if dim is not None else "(n, d) with n ≥ 1"
        raise ConfigError(field, f"Pass vectors of shape {want}.", problem=f"got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)                            # (n, 1)
    if not np.all(np.isfinite(X)) or np.any(norms == 0):
        raise ConfigError(field, "Pass finite, non-zero vectors (a zero vector has no direction).",
                          problem=f"{int(np.sum(norms == 0))} zero rows, {int(np.sum(~np.isfinite(X)))} non-finite values")
    return np.ascontiguousarray(X / norms)
