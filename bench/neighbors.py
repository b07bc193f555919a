"""Nearest-neighbour latency over a large bank of unit vectors (issue 19: ≤ 5 ms per query over
100,000 expert vectors on CPU), for each ``NeighborIndex`` method, with recall@k against exact search.

The bank is SYNTHETIC: ``clusters`` Gaussian centres in ``dim`` dimensions, each vector a centre plus
noise, normalised (embeddings of people and texts cluster; uniform noise would make every approximate
index look worse than it is in use). Queries are bank vectors plus noise. One query at a time, as a
request needs it; build time printed apart.

    .venv/bin/python bench/neighbors.py                       # 100,000 × 384, exact / IVF / HNSW
    .venv/bin/python bench/neighbors.py --vectors 1000000     # a larger bank
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Config:
    vectors: int = 100_000
    """Vectors in the bank."""
    dim: int = 384
    """Width of each vector (384: all-MiniLM-L6-v2)."""
    clusters: int = 200
    """Gaussian centres the synthetic vectors gather around."""
    queries: int = 500
    """Queries timed one by one."""
    k: int = 4
    """Neighbours per query (SG-LoRA's top-K experts)."""
    methods: str = "exact,ivf,hnsw"
    """NeighborIndex methods to time."""
    target_ms: float = 5.0
    """The p50 latency target per query."""
    seed: int = 0


def synthetic(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(cfg.seed)
    centres = rng.standard_normal((cfg.clusters, cfg.dim)).astype(np.float32)
    X = centres[rng.integers(0, cfg.clusters, cfg.vectors)] + 0.7 * rng.standard_normal((cfg.vectors, cfg.dim)).astype(np.float32)
    Q = X[rng.integers(0, cfg.vectors, cfg.queries)] + 0.3 * rng.standard_normal((cfg.queries, cfg.dim)).astype(np.float32)
    return X, Q


def main(cfg: Config) -> dict:
    from parsona.persona import NeighborIndex

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    X, Q = synthetic(cfg)
    ids = [f"expert-{i}" for i in range(len(X))]
    results, exact = {}, None
    for method in [m.strip() for m in cfg.methods.split(",") if m.strip()]:
        began = time.perf_counter()
        index = NeighborIndex(method=method, n_lists=256, n_probe=16).fit(X, ids)
        build = time.perf_counter() - began
        found, times = [], []
        for q in Q:
            t = time.perf_counter()
            row, _ = index.kneighbors(q[None], k=cfg.k)
            times.append(1000 * (time.perf_counter() - t))
            found.append(set(row[0]))
        if exact is None and method == "exact":
            exact = found
        recall = float(np.mean([len(f & e) / cfg.k for f, e in zip(found, exact)])) if exact else float("nan")
        p50, p99 = np.percentile(times, [50, 99])
        results[method] = {"build_s": build, "p50_ms": float(p50), "p99_ms": float(p99), f"recall@{cfg.k}": recall}
        verdict = "PASS" if p50 <= cfg.target_ms else "FAIL"
        print(f"{method:6s} build {build:6.2f} s   per query p50 {p50:6.3f} ms  p99 {p99:6.3f} ms   "
              f"recall@{cfg.k} vs exact {recall:.3f}   (target p50 ≤ {cfg.target_ms:g} ms: {verdict})")
    print(f"bank: {cfg.vectors:,} synthetic unit vectors × {cfg.dim}, {cfg.clusters} clusters; {cfg.queries} queries one at a time")
    return results


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
