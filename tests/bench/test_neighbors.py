"""bench/neighbors.py on a small bank: it times every method and exact search has recall 1."""

from __future__ import annotations


from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_it_times_every_method_against_exact_search(capsys):
    bench = load_bench("neighbors")
    results = run_recipe(bench.Config, bench.main, ["--vectors", "3000", "--dim", "16", "--queries", "20", "--clusters", "10"])
    assert set(results) == {"exact", "ivf", "hnsw"} and results["exact"]["recall@4"] == 1.0
    assert all(r["p50_ms"] > 0 and 0 <= r["recall@4"] <= 1 for r in results.values())
    assert "target p50" in capsys.readouterr().out
