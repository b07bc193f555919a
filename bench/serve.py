"""Loopback load against real ``parsona serve`` processes (SmolLM2 by default): what does per-row
conditioning cost a server?

Three servers run side by side on 127.0.0.1, each on the same base model:

  (a) base       no adapters at all
  (b) pref       one preference LoRA (rank 8, m = 2, all projections); every request its own λ
  (c) users64    64 users, each with their own LoRA (rank 8, all projections), all resident;
                 request i goes to user i mod 64

Load: ``--concurrency`` clients (httpx, keep-alive) send chat completions (greedy,
``--max-tokens`` tokens) until ``--requests`` are done or ``--seconds`` have passed, per server per
round. Rounds rotate the order of the servers so load from other processes on the machine drifts
onto all of them alike; a ratio is the median over rounds of that round's ratio to (a).

Batches: the servers run with ``--batch-wait-ms`` (default 250) and a batch size equal to the
concurrency, so every batch waits until all clients have sent their next request. With the
server's 10 ms default, how many of the 16 requests made it into a batch depended on how fast
16 responses were parsed and re-sent on these 2 cores; whole rounds ran at half batch size and the
per-round ratios spread over 0.57..1.17, which measured luck, not adapters. The mean batch size
each server saw (from its ``/metrics``) is printed beside its numbers.

The adapters' weights are random but tiny (LoRA B ~ N(0, 1e-6); the preference LoRA as attached,
whose ΔW is 0), so every server generates the same tokens and the ratios measure compute, not
different answer lengths. The compute per token is the same as with trained weights.

Targets: (b) ≥ 0.90 × (a) and (c) ≥ 0.80 × (a) in tokens/s.

    .venv/bin/python bench/serve.py                      # SmolLM2-135M-Instruct, ~5 min on 2 cores
    .venv/bin/python bench/serve.py --tiny --rounds 1    # a tiny random model: smoke run
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from parsona.errors import ConfigError

ADMIN = "bench-admin"
PROMPTS = ["Give me a tip for cooking rice.", "What is the capital of France?", "Write a haiku about rain.",
           "How do I sort a list in Python?", "Name three primary colours.", "Why is the sky blue?"]


@dataclass
class Config:
    """Every field is a flag: ``max_tokens`` is ``--max-tokens``."""

    model: str | None = None
    """Model id or dir; None: the packaged SmolLM2-135M-Instruct."""
    tiny: bool = False
    """Use a tiny random model (smoke run)."""
    rounds: int = 3
    """Timed rounds, after one warm-up round that is discarded."""
    requests: int = 96
    """Requests per server per round."""
    seconds: float = 60.0
    """Time limit per server per round."""
    concurrency: int = 16
    """Clients sending at once; also the servers' --max-batch-size."""
    max_tokens: int = 16
    """Tokens per greedy reply."""
    batch_wait_ms: float = 250.0
    """The servers' --batch-wait-ms: long enough that every batch fills."""

    def __post_init__(self) -> None:
        for name in ("rounds", "requests", "concurrency", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")


def start(cfg: Config, store: Path, extra: list[str]) -> tuple[subprocess.Popen, str]:
    """One ``parsona serve`` process on a free port, once /healthz answers; its stderr goes to store.log."""
    from servers import start_server

    args = ["--max-resident-loras", "64", "--max-batch-size", str(cfg.concurrency), "--batch-wait-ms",
            str(cfg.batch_wait_ms), "--rate-limit", "0", *extra]   # it measures compute, not limits
    proc, base, _ = start_server(store, args + (["--model", cfg.model] if cfg.model else []), admin_key=ADMIN)
    return proc, base


def lora_archives(model, n: int, rank: int = 8) -> list[bytes]:
    """``n`` PEFT LoRA archives over every projection of ``model``, with tiny random weights."""
    from parsona.adapters.base import LLAMA_PROJECTIONS
    from parsona.adapters.peft_format import LoRAWeights, write_peft_lora

    linears = {p: m for p, m in model.named_modules() if p.rsplit(".", 1)[-1] in LLAMA_PROJECTIONS}
    g = torch.Generator().manual_seed(0)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            factors = {p: (torch.randn(rank, m.in_features, generator=g) * 0.01,
                           torch.randn(m.out_features, rank, generator=g) * 1e-6) for p, m in linears.items()}
            path = write_peft_lora(LoRAWeights(rank, 2.0 * rank, factors), Path(tmp) / f"u{i}", list(linears))
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                for f in sorted(path.iterdir()):
                    t.add(f, arcname=f.name)
            out.append(buf.getvalue())
    return out


def make_users(base: str, archives: list[bytes | None]) -> list[tuple[str, str | None]]:
    """One user per archive, with that archive uploaded as their LoRA (None: a user without one)."""
    users = []
    for data in archives:
        key = httpx.post(f"{base}/v1/users", headers={"Authorization": f"Bearer {ADMIN}"}).json()["api_key"]
        if data is None:
            users.append((key, None))
            continue
        r = httpx.post(f"{base}/v1/adapters", content=data, headers={"Authorization": f"Bearer {key}"}, timeout=120)
        r.raise_for_status()
        users.append((key, r.json()["id"]))
    return users


def batch_stats(base: str) -> tuple[float, float]:
    """(rows decoded, batches) so far, from the server's Prometheus metrics."""
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("parsona_batch_size_"))
    return float(values["parsona_batch_size_sum"]), float(values["parsona_batch_size_count"])


async def load(base: str, model: str, users, with_preference: bool, cfg) -> dict:
    """Send requests from ``cfg.concurrency`` clients until the count or the time is up."""
    latencies, tokens, errors = [], 0, 0
    next_i, deadline = 0, time.monotonic() + cfg.seconds

    async def client(c: httpx.AsyncClient):
        nonlocal next_i, tokens, errors
        while next_i < cfg.requests and time.monotonic() < deadline:
            i, next_i = next_i, next_i + 1
            key, adapter = users[i % len(users)]
            body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "temperature": 0, "max_tokens": cfg.max_tokens}
            if with_preference:
                lam = (i % 11) / 10
                body["preference"] = [lam, 1 - lam]
            if adapter:
                body["adapter"] = adapter
            t0 = time.perf_counter()
            r = await c.post(f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                errors += 1
                continue
            tokens += r.json()["usage"]["completion_tokens"]

    start_t = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=cfg.concurrency)) as c:
        await asyncio.gather(*[client(c) for _ in range(cfg.concurrency)])
    wall = time.perf_counter() - start_t
    lat = sorted(latencies)
    return {"req_s": len(lat) / wall, "tok_s": tokens / wall, "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "n": len(lat), "errors": errors}


def main(cfg: Config) -> None:
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]), flush=True)

    from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
    from parsona.base_model import DEFAULT_MODEL, load_base_model, save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if cfg.tiny:
            cfg = dataclasses.replace(cfg, model=str(save_tiny_model(tmp / "tiny")))
        model, _ = load_base_model(cfg.model, device="cpu")
        model_id = Path(cfg.model).name if cfg.model else DEFAULT_MODEL
        save_adapter(attach(model, PreferenceLoRAConfig(rank=8, n_objectives=2)), tmp / "pref")
        archives = lora_archives(model, 64)
        del model
        servers = {}
        try:
            for name, extra in [("base", []), ("pref", ["--preference-adapter", str(tmp / "pref")]), ("users64", [])]:
                servers[name] = start(cfg, tmp / f"store-{name}", extra)
            users = {name: make_users(base, archives if name == "users64" else [None])
                     for name, (_, base) in servers.items()}
            results: dict[str, list[dict]] = {n: [] for n in servers}
            order = list(servers)
            for rnd in range(cfg.rounds + 1):  # round 0 warms every server up and is discarded
                for name in order[rnd % 3:] + order[: rnd % 3]:
                    before = batch_stats(servers[name][1])
                    res = asyncio.run(load(servers[name][1], model_id, users[name], name == "pref", cfg))
                    after = batch_stats(servers[name][1])
                    res["batch"] = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    if rnd > 0:
                        results[name].append(res)
                        print(f"round {rnd} {name:8s} {res['req_s']:6.2f} req/s {res['tok_s']:7.1f} tok/s "
                              f"p50 {res['p50']:.2f}s p99 {res['p99']:.2f}s n={res['n']} errors={res['errors']} "
                              f"mean batch {res['batch']:.1f}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
    report(results)


def report(results: dict[str, list[dict]]) -> None:
    print(f"\n{'server':10s} {'req/s':>7s} {'tok/s':>8s} {'p50 s':>7s} {'p99 s':>7s} {'batch':>6s} {'tok/s ÷ (a)':>12s}  target")
    targets = {"base": None, "pref": 0.90, "users64": 0.80}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("req_s", "tok_s", "p50", "p99", "batch")}
        ratios = [r["tok_s"] / a["tok_s"] for r, a in zip(runs, results["base"])]
        ratio = statistics.median(ratios)
        target = targets[name]
        verdict = "" if target is None else f"≥ {target:.2f}  {'met' if ratio >= target else 'MISSED'} " \
                  f"(rounds {min(ratios):.2f}..{max(ratios):.2f})"
        print(f"{name:10s} {med['req_s']:7.2f} {med['tok_s']:8.1f} {med['p50']:7.2f} {med['p99']:7.2f} {med['batch']:6.1f} "
              f"{ratio:12.2f}  {verdict}")


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    run_recipe(Config, main)
