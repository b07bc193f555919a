"""bench/scale.py parts 1-4 at a small size: users, LoRAs, history with embeddings and the per-request reads."""

from __future__ import annotations

import re

from conftest import load_bench
from parsona.recipes.config_cli import run_recipe


def test_history_goes_through_the_store_and_the_persona_lookup_is_timed(capsys):
    bench = load_bench("scale")
    ok = run_recipe(bench.Config, bench.main, ["--users", "20", "--vectors", "300", "--requests", "20",
                                               "--load-users", "0", "--assembly-target-ms", "1000"])
    printed = capsys.readouterr().out
    assert ok is True and "## 3. History and its embeddings" in printed
    assert re.search(r"300 items with a 384-float32 vector each \(15 per user, added 10 at a time\)", printed)
    assert re.search(r"persona lookup \(Personas.resolve's reads\)\s+p50", printed) and "(n=20)" in printed


def test_the_loopback_load_crosses_no_users_records(capsys):
    bench = load_bench("scale")
    ok = run_recipe(bench.Config, bench.main, ["--users", "12", "--vectors", "0", "--requests", "10", "--load-users", "2",
                                               "--load-rounds", "1", "--check-users", "5", "--server-threads", "1",
                                               "--assembly-target-ms", "1000"])
    printed = capsys.readouterr().out
    assert ok is True and "## 5. Loopback load" in printed and "## 3." not in printed
    assert "lost records: 0; crossed records: 0" in printed and "rounds done 2 of 2" in printed
