"""Part 5 of bench/scale.py, the loopback load: a real ``parsona serve`` on the bench's store of users,
``--load-users`` of them at once uploading, listing, chatting with, crossing into and deleting LoRAs
(see bench/scale.py's docstring for what is checked and printed)."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import httpx

def expected_replies(model_dir: Path, pref_dir: Path, loras: dict[str, Path], prompt: str, max_tokens: int) -> dict[str, str]:
    """The greedy reply for each LoRA, from an in-process store-less Host (one row at a time)."""
    from parsona.adapters import load_adapter
    from parsona.base_model import load_base_model
    from parsona.host import Host, Request

    model, tokenizer = load_base_model(str(model_dir), device="cpu")
    pref = load_adapter(model, str(pref_dir))
    host = Host(model, tokenizer, None, pref, loras={f"user{name}": str(p) for name, p in loras.items()})
    return {name: host.generate([Request(messages=[{"role": "user", "content": prompt}], max_new_tokens=max_tokens,
                                         conditioning={"preference": [0.3, 0.7], "adapter": f"user{name}"})])[0].text
            for name in loras}


async def load(cfg, base: str, model_id: str, load_users, archives: dict, expected: dict) -> dict:
    """Each load user: ``cfg.load_rounds`` rounds of upload / list / chat / cross / delete, all users at once."""
    from scale import PROMPTS

    stats = {"latency": [], "chat_latency": [], "status": collections.Counter(), "crossed": [], "lost": [],
             "rounds": 0, "requests": 0, "slowest": []}
    deadline = time.monotonic() + cfg.load_seconds
    load_started = time.perf_counter()
    ids_now: dict[int, str] = {}   # load user -> the adapter id it holds this round

    async def call(c, method, url, key, what, content_type=None, **kw):
        headers = {"Authorization": f"Bearer {key}", **({"Content-Type": content_type} if content_type else {})}
        t0 = time.perf_counter()
        r = await c.request(method, url, headers=headers, **kw)
        stats["latency"].append(time.perf_counter() - t0)
        stats["slowest"].append((stats["latency"][-1], what, r.status_code, t0 - load_started))
        if what == "chat":
            stats["chat_latency"].append(stats["latency"][-1])
        stats["status"][r.status_code] += 1
        stats["requests"] += 1
        return r

    def chat_body(adapter_id):
        return {"model": model_id, "messages": [{"role": "user", "content": PROMPTS[0]}], "temperature": 0,
                "max_tokens": cfg.max_tokens, "preference": [0.3, 0.7], "adapter": adapter_id}

    async def user(c, i):
        _, key, registered = load_users[i]
        for rnd in range(cfg.load_rounds):
            if time.monotonic() > deadline:
                return
            r = await call(c, "POST", "/v1/adapters", key, "upload", params={"name": f"load-{i}-{rnd}"},
                           content=archives[i], content_type="application/x-tar")
            if r.status_code != 201:
                stats["lost"].append(f"user {i} round {rnd}: upload answered {r.status_code} {r.text[:120]}")
                continue
            mine = r.json()["id"]
            ids_now[i] = mine
            r = await call(c, "GET", "/v1/adapters", key, "list")
            listed = {a["id"] for a in r.json().get("data", [])} if r.status_code == 200 else set()
            if listed != {registered, mine}:
                (stats["crossed"] if listed - {registered, mine} else stats["lost"]).append(
                    f"user {i} round {rnd}: listing {sorted(listed)} != own {sorted({registered, mine})}")
            r = await call(c, "POST", "/v1/chat/completions", key, "chat", json=chat_body(mine))
            if r.status_code != 200:
                stats["lost"].append(f"user {i} round {rnd}: chat with own LoRA answered {r.status_code} {r.text[:120]}")
            elif r.json()["choices"][0]["message"]["content"] != expected[i]:
                stats["crossed"].append(f"user {i} round {rnd}: reply {r.json()['choices'][0]['message']['content']!r} "
                                        f"is not this user's ({expected[i]!r})")
            await asyncio.sleep(0)
            for j, other in list(ids_now.items()):   # another load user's current LoRA: never ours
                if j == i:
                    continue
                r1 = await call(c, "POST", "/v1/chat/completions", key, "chat", json=chat_body(other))
                r2 = await call(c, "GET", f"/v1/adapters/{other}", key, "get")
                if r1.status_code != 404 or r2.status_code != 404:
                    stats["crossed"].append(f"user {i} reached user {j}'s LoRA {other}: chat {r1.status_code}, get {r2.status_code}")
                break
            r = await call(c, "DELETE", f"/v1/adapters/{mine}", key, "delete")
            if r.status_code != 200:
                stats["lost"].append(f"user {i} round {rnd}: delete answered {r.status_code} {r.text[:120]}")
            r1 = await call(c, "GET", f"/v1/adapters/{mine}", key, "get")
            r2 = await call(c, "POST", "/v1/chat/completions", key, "chat", json=chat_body(mine))
            if r1.status_code != 404 or r2.status_code != 404:
                stats["lost"].append(f"user {i} round {rnd}: deleted LoRA still answers: get {r1.status_code}, chat {r2.status_code}")
            r = await call(c, "GET", "/v1/adapters", key, "list")
            listed = {a["id"] for a in r.json().get("data", [])} if r.status_code == 200 else set()
            if listed != {registered}:
                (stats["crossed"] if listed - {registered} else stats["lost"]).append(
                    f"user {i} round {rnd}: listing after delete {sorted(listed)} != {[registered]}")
            stats["rounds"] += 1

    limits = httpx.Limits(max_connections=max(cfg.load_users, 1) * 2)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as c:
        await asyncio.gather(*[user(c, i) for i in range(len(load_users))])
    return stats


def read_back(base: str, users, n: int, seed: int) -> tuple[list[str], int]:
    """(problems, users checked): ``n`` random users read their registered LoRA through the server."""
    rng = random.Random(seed + 1)
    sample = rng.sample(users, min(n, len(users)))
    problems = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for user_id, key, adapter_id in sample:
            r = c.get(f"/v1/adapters/{adapter_id}", headers={"Authorization": f"Bearer {key}"})
            if r.status_code != 200 or r.json()["id"] != adapter_id:
                problems.append(f"{user_id}: its adapter {adapter_id} answered {r.status_code}")
    return problems, len(sample)


def loopback(cfg, tmp: Path, users, model_dir: Path, pref_dir: Path) -> list[tuple[str, bool]]:
    """Run the load against a fresh server on ``tmp / "store"``; print what it measured; return its checks."""
    from parsona.base_model import load_base_model
    from scale import PROMPTS, ms, tar_of, write_lora
    from servers import server_errors, start_server, stop_server

    print(f"\n## 5. Loopback load (product: parsona serve on this store of {cfg.users:,d} users)\n", flush=True)
    rng = random.Random(cfg.seed)
    load_users = rng.sample(users, cfg.load_users)
    model, _ = load_base_model(str(model_dir), device="cpu")
    lora_dirs = {i: write_lora(model, tmp / f"load-lora-{i}", cfg.lora_rank, seed=cfg.seed + 1000 + i)
                 for i in range(cfg.load_users)}
    del model
    archives = {i: tar_of(p) for i, p in lora_dirs.items()}
    expected = expected_replies(model_dir, pref_dir, lora_dirs, PROMPTS[0], cfg.max_tokens)
    distinct = len(set(expected.values()))
    proc, base, log = start_server(tmp / "store", ["--model", str(model_dir), "--preference-adapter", str(pref_dir),
                                                   "--max-batch-size", "16", "--rate-limit", "0"],
                                   admin_key="bench-scale-admin",   # its users are made in the store directly
                                   env={"OMP_NUM_THREADS": str(cfg.server_threads)} if cfg.server_threads else None)
    try:
        warm_user = next(u for u in users if u not in load_users)   # the first decode after start is slow
        t0 = time.perf_counter()
        r = httpx.post(f"{base}/v1/chat/completions", timeout=120, headers={"Authorization": f"Bearer {warm_user[1]}"},
                       json={"model": model_dir.name, "messages": [{"role": "user", "content": PROMPTS[1]}],
                             "max_tokens": cfg.max_tokens, "temperature": 0, "preference": [0.5, 0.5],
                             "adapter": warm_user[2]})
        print(f"first request after the server started (untimed warm-up): {r.status_code} in "
              f"{(time.perf_counter() - t0) * 1e3:.0f} ms", flush=True)
        t0 = time.perf_counter()
        stats = asyncio.run(load(cfg, base, model_dir.name, load_users, archives, expected))
        wall = time.perf_counter() - t0
        lost_after, checked = read_back(base, users, cfg.check_users, cfg.seed)
        with httpx.Client(base_url=base, timeout=60) as c:
            for i, (_, key, registered) in enumerate(load_users):
                r = c.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"})
                listed = {a["id"] for a in r.json()["data"]} if r.status_code == 200 else set()
                if listed != {registered}:
                    lost_after.append(f"load user {i} ends with {sorted(listed)}, not {[registered]}")
        alive = proc.poll() is None
    finally:
        stop_server(proc)
    internal = server_errors(log)
    five = sum(n for code, n in stats["status"].items() if code >= 500)
    lost, crossed = stats["lost"] + lost_after, stats["crossed"]
    done = stats["rounds"] == cfg.load_users * cfg.load_rounds
    print(f"{cfg.load_users} users × {cfg.load_rounds} rounds at once: {stats['requests']} requests served in "
          f"{wall:.1f} s ({stats['requests'] / wall:.1f}/s), rounds done {stats['rounds']} of "
          f"{cfg.load_users * cfg.load_rounds}; server alive at the end: {alive}")
    print(f"status codes: {dict(sorted(stats['status'].items()))}; 5xx: {five}")
    print(f"latency, every request: {ms(stats['latency'])}")
    print(f"latency, chat completions ({cfg.max_tokens} greedy tokens): {ms(stats['chat_latency'])}")
    slow = sorted(stats["slowest"], reverse=True)[:5]
    print("slowest: " + "; ".join(f"{what} {code} {lat * 1e3:.0f} ms at t={at:.2f} s" for lat, what, code, at in slow))
    print(f"server log: {sum(internal.values())} internal errors" + "".join(f"; ×{n} {line}" for line, n in internal.items()))
    print(f"lost records: {len(lost)}; crossed records: {len(crossed)} (each reply compared with its user's own "
          f"LoRA's: {distinct} distinct expected replies among {cfg.load_users}; {checked} other users read back)")
    for line in (lost + crossed)[:20]:
        print("  ", line)
    return [(f"0 × 5xx in the loopback load (measured {five}; {sum(internal.values())} internal errors logged)",
                five == 0 and not internal),
               (f"0 lost or crossed records (measured {len(lost)} lost, {len(crossed)} crossed)", not lost and not crossed),
               (f"the load ran every round within --load-seconds ({stats['rounds']} of "
                f"{cfg.load_users * cfg.load_rounds})", done)]

