"""The embedded store at scale (issue 15): 10,000 registered users with adapters, 1,000,000 persona-sized
vectors, per-request lookup and assembly latency, bytes of per-user state, and a bounded loopback load.

Five parts, each saying what is the product's code path and what is not:

1. Registration (product): ``--users`` users through ``Store.create_user`` and one rank-``--lora-rank``
   LoRA each through ``Store.put_adapter`` (the store has no batch insert, so its public methods in a
   loop: one transaction per user and per adapter), timed; the store's size on disk.
2. Bytes of per-user state per adapter type: the SQLite pages of the users, api_keys and adapters
   tables and their indexes (dbstat) per user, plus a LoRA's files, measured on the tiny model and
   computed from the shapes of SmolLM2-135M-Instruct (its config.json; no weights loaded). The LoRA is
   what the server's training writes (LoRAConfig's targets: every projection); preference
   conditioning keeps no per-user state (λ travels in each request).
3. History and embeddings (product): ``--vectors`` history items through ``Store.add_history``, each with
   a random unit ``--dim`` float32 vector through ``Store.put_embeddings`` (what ``Personas.refresh``
   stores after encoding; the encoder itself is not run), ``vectors / users`` per registered user, added
   in rounds of 10 per user (users add items over time); the time and the store's growth per item.
4. Per-request lookup and assembly (product): what a handler does before decoding, for ``--requests``
   requests from random users of the 10,000: ``Store.authenticate(key)``, then ``Host.prepare`` (checks,
   tokenization, the row's conditioning, which looks the user's adapter record up in the store), on a
   Host over the tiny model with this store. ``Store.get_adapter`` alone, the persona lookup (the store
   reads of ``Personas.resolve``: the unembedded-items check and the newest vectors) and
   a cold LoRA load (``verified_adapter_path`` + ``read_peft_lora``: sha256 check and validation, paid by
   the decode worker when the user's LoRA is not resident) are timed beside it. Target: p99 ≤ 5 ms.
5. Loopback load (product): a real ``parsona serve`` (tiny model, preference LoRA, 127.0.0.1) on the
   same store of 10,000 users; ``--load-users`` of them at once, for ``--load-rounds`` rounds each:
   upload a new LoRA of their own, list (only their own ids, the new one included), chat with it
   (greedy: the reply must equal the one an in-process Host gives for that user's LoRA: rows are never
   crossed), try another load user's LoRA id and read it (404), delete it, read and chat with it again
   (404), list again. Afterwards every load user still has exactly their registration LoRA and
   ``--check-users`` random others still read theirs (nothing lost). Bounded by count and by
   ``--load-seconds``, after one untimed warm-up request. Printed: requests served, status codes, 5xx,
   the server log's internal errors, lost or crossed records, p50/p99. The server runs with torch's
   default threads, as ``parsona serve`` does; ``--server-threads 1`` sets its OMP_NUM_THREADS (on 2
   busy cores and the tiny model that cut the chat p99 about 8× in one run: thread hand-offs, not
   compute).

Targets: 0 × 5xx, 0 lost or crossed records, p99 per-request assembly ≤ 5 ms at 10,000 users.

    .venv/bin/python bench/scale.py                                         # the issue's sizes, a few minutes
    .venv/bin/python bench/scale.py --users 500 --vectors 20000 --requests 500 --load-rounds 1   # smoke run
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import random
import shlex
import sqlite3
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parsona.errors import ConfigError
from parsona.personalize import MAX_PERSONA_ITEMS

PROMPTS = ["Give me a tip for cooking rice.", "What is the capital of France?", "Write a haiku about rain.",
           "How do I sort a list in Python?", "Name three primary colours.", "Why is the sky blue?"]
SMOLLM2_CONFIG = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,   # used if the packaged
                  "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}        # config is not cached


@dataclass
class Config:
    """Every field is a flag: ``load_users`` is ``--load-users``."""

    users: int = 10_000
    """Registered users, each with one stored LoRA."""
    vectors: int = 1_000_000
    """History items, each with its embedding (vectors // users per user), through the store; 0 skips part 3."""
    dim: int = 384
    """Floats per embedding (float32; all-MiniLM-L6-v2's 384)."""
    requests: int = 5_000
    """Timed per-request lookups and assemblies (after 200 untimed warm-up ones)."""
    lora_rank: int = 8
    """Rank of every stored LoRA (all projections of the tiny model)."""
    load_users: int = 8
    """Users of the loopback load, all at once; 0 skips part 5."""
    load_rounds: int = 5
    """Upload / list / chat / cross / delete rounds per load user."""
    load_seconds: float = 300.0
    """Time limit of the loopback load (the rounds left are not run: a FAIL)."""
    check_users: int = 200
    """Random other users whose stored LoRA is read back through the server after the load."""
    max_tokens: int = 8
    """Greedy tokens per chat reply in the load."""
    assembly_target_ms: float = 5.0
    """Target: p99 of authenticate + Host.prepare, in ms."""
    server_threads: int = 0
    """OMP_NUM_THREADS of the loopback server; 0: torch's default (one per core), as parsona serve runs."""
    seed: int = 0
    """Seed of the random embeddings, the LoRAs and the request order."""

    def __post_init__(self) -> None:
        for name in ("users", "dim", "requests", "lora_rank", "load_rounds", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        for name in ("vectors", "load_users", "check_users", "server_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(name, "Use 0 (skip) or a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.vectors and self.vectors < self.users:
            raise ConfigError("vectors", "Use 0 or at least one vector per user.", problem=f"{self.vectors} < {self.users} users")
        if self.load_users >= self.users:   # one registered user is left out of the load: it warms the server up
            raise ConfigError("load_users", "Use fewer than --users.", problem=f"{self.load_users} ≥ {self.users}")
        if not self.load_seconds > 0:
            raise ConfigError("load_seconds", "Use a number of seconds > 0.", problem=f"got {self.load_seconds}")


def command(cfg: Config) -> str:
    parts = [".venv/bin/python", "bench/scale.py"]
    for f in dataclasses.fields(cfg):
        parts += ["--" + f.name.replace("_", "-"), str(getattr(cfg, f.name))]
    return " ".join(shlex.quote(p) for p in parts)


def pct(values, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")


def ms(values) -> str:
    return f"p50 {pct(values, 0.5) * 1e3:7.3f} ms  p99 {pct(values, 0.99) * 1e3:7.3f} ms  max {max(values) * 1e3:7.2f} ms"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def index_owner(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {name: table for name, table in conn.execute("SELECT name, tbl_name FROM sqlite_master")}
    finally:
        conn.close()


# -- LoRAs -----------------------------------------------------------------------------------------
def write_lora(model, out: Path, rank: int, seed: int, scale: float = 0.3) -> Path:
    """A PEFT LoRA over every projection LoRAConfig targets (what the server's training writes), with random
    weights large enough that each user's greedy reply differs."""
    from parsona.adapters.lora.config import LoRAConfig
    from parsona.adapters.peft_format import LoRAWeights, write_peft_lora

    targets = LoRAConfig().target_modules
    linears = {p: m for p, m in model.named_modules() if isinstance(m, torch.nn.Linear) and p.rsplit(".", 1)[-1] in targets}
    g = torch.Generator().manual_seed(seed)
    factors = {p: (torch.randn(rank, m.in_features, generator=g) * scale, torch.randn(m.out_features, rank, generator=g) * scale)
               for p, m in linears.items()}
    return write_peft_lora(LoRAWeights(rank, 2.0 * rank, factors), out, list(linears))


def tar_of(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for f in sorted(path.iterdir()):
            t.add(f, arcname=f.name)
    return buf.getvalue()


def lora_bytes_from_shapes(config: dict, rank: int, targets, header_per_tensor: float, config_json: int) -> tuple[int, int]:
    """(files bytes, tensors) of a float32 PEFT LoRA of ``rank`` on ``targets`` of a Llama with ``config``."""
    h, i, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head, config["num_key_value_heads"] * head
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}          # (d_in, d_out)
    floats = sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets) * L
    tensors = 2 * len(targets) * L
    return int(4 * floats + header_per_tensor * tensors + config_json), tensors


def smollm2_config() -> tuple[dict, str]:
    cache = Path(os.environ.get("PARSONA_CACHE", Path.home() / ".cache" / "parsona")) / "models"
    for path in sorted(cache.glob("SmolLM2-135M-Instruct*/config.json")):
        return json.loads(path.read_text()), str(path)
    return SMOLLM2_CONFIG, "built-in copy of SmolLM2-135M-Instruct's config (the packaged one is not cached)"


# -- part 1 and 2 ----------------------------------------------------------------------------------
def register(cfg: Config, store, lora_dir: Path) -> tuple[list[tuple[str, str, str]], dict]:
    """``cfg.users`` users with one LoRA each: [(user_id, api_key, adapter_id)], timings."""
    users, t0 = [], time.perf_counter()
    for _ in range(cfg.users):
        user_id, key = store.create_user()
        users.append([user_id, key])
    t_users = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, u in enumerate(users):
        u.append(store.put_adapter(u[0], lora_dir, "lora", f"registered-{i}"))
    t_adapters = time.perf_counter() - t0
    return [tuple(u) for u in users], {"users_s": t_users, "adapters_s": t_adapters}


def state_bytes(cfg: Config, store, users, lora_dir: Path, pref_dir: Path) -> list[str]:
    from parsona.adapters.lora.config import LoRAConfig

    db = store.db_path
    owners = index_owner(db)
    pages = collections.Counter()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for name, size in conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
            pages[owners.get(name, name)] += size
    finally:
        conn.close()
    n = len(users)
    user_rows = (pages["users"] + pages["api_keys"]) / n
    adapter_rows = pages["adapters"] / n
    files = dir_bytes(store.adapters_dir / users[0][2])
    cfg_json = (lora_dir / "adapter_config.json").stat().st_size
    tensors_tiny = len([1 for _ in json.loads(_safetensors_header(lora_dir / "adapter_model.safetensors"))
                        if _ != "__metadata__"])
    floats_tiny = sum(np.prod(v["shape"]) for k, v in json.loads(_safetensors_header(lora_dir / "adapter_model.safetensors")).items()
                      if k != "__metadata__")
    header_per_tensor = ((lora_dir / "adapter_model.safetensors").stat().st_size - 4 * floats_tiny) / tensors_tiny
    smol, source = smollm2_config()
    smol_files, smol_tensors = lora_bytes_from_shapes(smol, cfg.lora_rank, LoRAConfig().target_modules, header_per_tensor, cfg_json)
    qv_files, _ = lora_bytes_from_shapes(smol, cfg.lora_rank, ("q_proj", "v_proj"), header_per_tensor, cfg_json)
    lines = [
        f"user + API key rows (SQLite pages of users, api_keys and their indexes): {user_rows:8.0f} B per user",
        f"LoRA record (adapters table + indexes):                                {adapter_rows:8.0f} B per adapter",
        f"LoRA files, tiny model, rank {cfg.lora_rank}, {tensors_tiny} tensors (measured):       {files:10,d} B per adapter",
        f"LoRA files, SmolLM2-135M, rank {cfg.lora_rank}, all 7 projections × 30 layers ({smol_tensors} tensors, from shapes): "
        f"{smol_files:,d} B per adapter",
        f"LoRA files, SmolLM2-135M, rank {cfg.lora_rank}, q_proj + v_proj only (PEFT's usual targets, from shapes): "
        f"{qv_files:,d} B per adapter",
        f"  (shapes from {source}; float32 as write_peft_lora stores them, safetensors header "
        f"{header_per_tensor:.0f} B per tensor and adapter_config.json {cfg_json} B as measured)",
        f"preference conditioning: 0 B per user (λ travels in each request); the shared preference LoRA is "
        f"stored once: {dir_bytes(pref_dir):,d} B on the tiny model",
        f"whole store after registration: SQLite {sum(pages.values()) / n:.0f} B per user, adapter files "
        f"{dir_bytes(store.adapters_dir) / n:,.0f} B per user",
    ]
    return lines


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return f.read(size).decode()


# -- part 3 ----------------------------------------------------------------------------------------
ENCODER_KEY = "bench-random-unit-vectors"   # the key Store.put_embeddings files them under (a HistoryEncoder's .key)
ROUND = 10                                  # items a user adds at once: users add over time, interleaved


def build_history(cfg: Config, store, users) -> tuple[int, float]:
    """``cfg.vectors`` history items through Store.add_history, each with a random unit ``cfg.dim`` vector
    through Store.put_embeddings (what Personas.refresh stores), in rounds of ``ROUND`` items per user;
    (items per user, seconds)."""
    per_user = cfg.vectors // len(users)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    for start in range(0, per_user, ROUND):
        n = min(ROUND, per_user - start)
        for user_id, _, _ in users:
            ids = store.add_history(user_id, [f"item {start + i} of {user_id}" for i in range(n)])
            v = rng.standard_normal((n, cfg.dim), dtype=np.float32)
            store.put_embeddings(user_id, ENCODER_KEY, ids, v / np.linalg.norm(v, axis=1, keepdims=True))
    return per_user, time.perf_counter() - t0


def db_bytes(store) -> int:
    """The store's SQLite file after a checkpoint (the WAL folded in): what the records take."""
    with sqlite3.connect(store.db_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store.db_path.stat().st_size


def persona_lookup(store, user_id: str) -> np.ndarray:
    """What Personas.resolve reads from the store for one request (before pooling): the check for items
    without a vector, then the newest MAX_PERSONA_ITEMS vectors."""
    store.unembedded_history(user_id, ENCODER_KEY, MAX_PERSONA_ITEMS)
    return store.history_embeddings(user_id, ENCODER_KEY, MAX_PERSONA_ITEMS)[0]


# -- part 4 ----------------------------------------------------------------------------------------
def assembly(cfg: Config, store, host, users, with_history: bool) -> dict[str, list[float]]:
    from parsona.adapters.peft_format import read_peft_lora
    from parsona.host import Request

    rng = random.Random(cfg.seed)
    times: dict[str, list[float]] = collections.defaultdict(list)
    for n in range(200 + cfg.requests):
        user_id, key, adapter_id = users[rng.randrange(len(users))]
        lam = rng.random()
        t0 = time.perf_counter()
        uid = store.authenticate(key)
        t1 = time.perf_counter()
        prepared = host.prepare(Request(messages=[{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}], user_id=uid,
                                        conditioning={"preference": [lam, 1 - lam], "adapter": adapter_id},
                                        max_new_tokens=cfg.max_tokens))
        t2 = time.perf_counter()
        assert uid == user_id and prepared.conditioning["adapter"] == adapter_id   # the right user's records
        store.get_adapter(uid, adapter_id)
        t3 = time.perf_counter()
        X = persona_lookup(store, uid) if with_history else None
        t4 = time.perf_counter()
        assert X is None or X.shape == (min(cfg.vectors // cfg.users, MAX_PERSONA_ITEMS), cfg.dim)   # the user's own
        if n < 200:
            continue
        times["authenticate"].append(t1 - t0)
        times["Host.prepare (incl. adapter record)"].append(t2 - t1)
        times["authenticate + Host.prepare  [target]"].append(t2 - t0)
        times["Store.get_adapter alone"].append(t3 - t2)
        if with_history:
            times["persona lookup (Personas.resolve's reads)"].append(t4 - t3)
            times["assembly + persona lookup"].append((t2 - t0) + (t4 - t3))
    for n in range(min(cfg.requests, 300)):   # cold LoRA load: what the decode worker pays on a miss
        user_id, _, adapter_id = users[rng.randrange(len(users))]
        t0 = time.perf_counter()
        read_peft_lora(store.verified_adapter_path(user_id, adapter_id))
        times["cold LoRA load (sha256 + read + validate)"].append(time.perf_counter() - t0)
    return times


# -- main --------------------------------------------------------------------------------------------
def main(cfg: Config) -> bool:
    print("command:", command(cfg), flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from servers import tiny_server_files

    from parsona.adapters import load_adapter
    from parsona.base_model import load_base_model
    from parsona.host import Host
    from parsona.store import Store

    torch.set_num_threads(1)   # the tiny model: thread hand-offs cost more than they save
    started, checks = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="parsona-scale-") as tmp:
        tmp = Path(tmp)
        model_dir, pref_dir = tiny_server_files(tmp)
        model, tokenizer = load_base_model(str(model_dir), device="cpu")
        lora_dir = write_lora(model, tmp / "registered-lora", cfg.lora_rank, seed=cfg.seed)

        print(f"\n## 1. Registration (product: Store.create_user, Store.put_adapter, one transaction each)\n", flush=True)
        store = Store(tmp / "store")
        users, t = register(cfg, store, lora_dir)
        print(f"{cfg.users:,d} users in {t['users_s']:.1f} s ({cfg.users / t['users_s']:,.0f}/s); {cfg.users:,d} LoRAs "
              f"stored in {t['adapters_s']:.1f} s ({cfg.users / t['adapters_s']:,.0f}/s); store on disk "
              f"{dir_bytes(store.root) / 1e6:,.1f} MB", flush=True)

        print(f"\n## 2. Bytes of per-user state per adapter type (product store; SmolLM2 computed from shapes)\n")
        for line in state_bytes(cfg, store, users, lora_dir, pref_dir):
            print(line)

        if cfg.vectors:
            print(f"\n## 3. History and its embeddings (product: Store.add_history, Store.put_embeddings)\n", flush=True)
            before = db_bytes(store)
            per_user, seconds = build_history(cfg, store, users)
            size = db_bytes(store) - before
            print(f"{cfg.vectors:,d} items with a {cfg.dim}-float32 vector each ({per_user} per user, added {ROUND} at a "
                  f"time) in {seconds:.1f} s ({cfg.vectors / seconds:,.0f}/s); the store grew {size / 1e9:.2f} GB = "
                  f"{size / cfg.vectors:,.0f} B per item ({4 * cfg.dim} B of floats), {size / cfg.users:,.0f} B per user",
                  flush=True)

        print(f"\n## 4. Per-request lookup and assembly at {cfg.users:,d} users (product: Store.authenticate + Host.prepare)\n",
              flush=True)
        pref = load_adapter(model, str(pref_dir))
        host = Host(model, tokenizer, store, pref)
        times = assembly(cfg, store, host, users, bool(cfg.vectors))
        for name, values in times.items():
            print(f"{name:44s} {ms(values)}  (n={len(values)})")
        p99 = pct(times["authenticate + Host.prepare  [target]"], 0.99) * 1e3
        checks.append((f"p99 per-request assembly ≤ {cfg.assembly_target_ms:g} ms at {cfg.users:,d} users "
                       f"(measured {p99:.3f} ms)", p99 <= cfg.assembly_target_ms))
        store.close()
        del host, pref, model

        if cfg.load_users:
            from scale_load import loopback

            checks += loopback(cfg, tmp, users, model_dir, pref_dir)

    from bench_targets import report as report_targets

    return report_targets(checks, time.perf_counter() - started, command(cfg))


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    sys.exit(0 if run_recipe(Config, main) else 1)   # exit status 1 when a target fails
