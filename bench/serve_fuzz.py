"""Schemathesis against a real ``parsona serve`` on loopback: the long run of the schema fuzz (issue 15).

``tests/parsona/test_serve_fuzz.py`` is the short run in CI (in-process, one user, a stubbed trainer).
This one starts ``parsona serve`` (uvicorn, 127.0.0.1 only) on a tiny random model with a preference
LoRA and the real per-user training recipe, registers ``--users`` users, each uploading one PEFT LoRA
and a little history, then runs schemathesis's engine (what ``schemathesis run`` drives: examples,
coverage and fuzzing phases, stateful if it finds links) once per user, the users at once in their own
processes, each with its own key, its own LoRA id in the generated bodies and its own seed.
``POST /v1/users`` is sent with the admin key. Checks: ``not_a_server_error``, ``status_code_conformance``,
``response_schema_conformance``.

Bounded by count: ``--examples`` fuzzed cases per operation per user (plus the coverage phase's fixed
set), every phase once; after ``--max-seconds`` a user's engine is stopped (the run is then incomplete:
a FAIL).

Generation is steered as in the test: ``model`` is the served one in 90% of the bodies and ``adapter``
the user's own LoRA in half of them, the server has a default preference, valid ``temperature`` /
``top_p`` values at the float edges (5e-324, 1e-40, ...) are mixed in, and a generated ``max_tokens``
in (``--max-tokens-cap``, 512] is cut to at most the cap (the schema has no upper bound; 0 keeps them).

Printed: cases and their status codes per operation, 5xx, distinct schema violations (each with its
curl), the server log's internal errors by exception, whether any user's listing shows another's
adapter, PASS/FAIL per target and the command.

    .venv/bin/python bench/serve_fuzz.py                              # 3 users × 200 examples, a few minutes
    .venv/bin/python bench/serve_fuzz.py --users 1 --examples 20      # smoke run
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from parsona.errors import ConfigError
from parsona.recipes.config_cli import is_internal
from servers import server_errors, start_server, stop_server, tiny_server_files  # noqa: E402  (bench/ is on sys.path)

ADMIN = "fuzz-bench-admin"
CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance")
EDGE_FLOATS = [5e-324, 1e-300, 1e-40, 1e-8, 1.0]


@dataclass
class Config:
    """Every field is a flag: ``max_seconds`` is ``--max-seconds``."""

    users: int = 3
    """Users fuzzing at once, each with its own key, LoRA and seed."""
    examples: int = 200
    """Fuzzed cases per operation per user (the coverage phase adds a fixed set)."""
    seed: int = 15
    """Seed of user 0's engine; user i uses seed + i."""
    max_tokens_cap: int = 32
    """Generated max_tokens / max_completion_tokens in (cap, 512] are cut to 1..cap; 0: left as generated."""
    max_seconds: float = 900.0
    """Time limit of each user's engine (the run is incomplete, FAIL, if it is reached)."""
    model: str | None = None
    """Model dir or id to serve; None: a tiny random model (save_tiny_model)."""
    batch_wait_ms: float = 10.0
    """The server's --batch-wait-ms."""
    server_args: str = "--rate-limit 0"
    """More flags for parsona serve (default: no rate limit, so the cases reach the handlers, not 429s)."""
    # set by main for the worker processes it starts (one per user; the key and LoRA id travel in the environment)
    worker_base: str = field(default="", metadata={"internal": True})
    worker_index: int = field(default=-1, metadata={"internal": True})
    worker_model_id: str = field(default="", metadata={"internal": True})
    result_file: str = field(default="", metadata={"internal": True})

    def __post_init__(self) -> None:
        for name in ("users", "examples"):
            if getattr(self, name) < 1:
                raise ConfigError(name, "Use a whole number ≥ 1.", problem=f"got {getattr(self, name)}")
        if self.max_tokens_cap < 0:
            raise ConfigError("max_tokens_cap", "Use 0 (no cap) or a whole number ≥ 1.", problem=f"got {self.max_tokens_cap}")
        if not self.max_seconds > 0:
            raise ConfigError("max_seconds", "Use a number of seconds > 0.", problem=f"got {self.max_seconds}")


def flags(cfg: Config, internal: bool = False) -> list[str]:
    """``cfg`` as this script's flags, every field spelled out (the internal ones only if asked)."""
    parts = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if value is None or (is_internal(f) and not internal):
            continue
        if isinstance(value, bool):
            parts.append(flag if value else f"--no-{flag[2:]}")
        else:   # --flag=value: a value starting with "-" (--server-args) is not read as a flag
            parts.append(f"{flag}={value}" if str(value).startswith("-") else flag)
            parts += [] if str(value).startswith("-") else [str(value)]
    return parts


def command(cfg: Config) -> str:
    """The command line that reproduces ``cfg``."""
    return " ".join(shlex.quote(p) for p in [".venv/bin/python", "bench/serve_fuzz.py", *flags(cfg)])


# -- a server on loopback (bench/scale.py uses these too) ------------------------------------------
def lora_archive(model, rank: int, seed: int, targets=("q_proj", "v_proj")) -> bytes:
    """A PEFT LoRA for ``model`` (rank ``rank`` on every Linear named in ``targets``) as a tar archive."""
    import torch

    from parsona.adapters.peft_format import LoRAWeights, write_peft_lora

    linears = {p: m for p, m in model.named_modules() if p.rsplit(".", 1)[-1] in targets}
    g = torch.Generator().manual_seed(seed)
    factors = {p: (torch.randn(rank, m.in_features, generator=g) * 0.1, torch.randn(m.out_features, rank, generator=g) * 0.1)
               for p, m in linears.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_peft_lora(LoRAWeights(rank, 2.0 * rank, factors), Path(tmp) / "lora", list(linears))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for f in sorted(path.iterdir()):
                t.add(f, arcname=f.name)
    return buf.getvalue()


# -- the fuzz ----------------------------------------------------------------------------------------
def fuzz_schema(base: str, key: str, adapter_id: str | None, model_id: str, seed: int, cfg: Config):
    import schemathesis

    parameters = {"body.model": {"dictionary": "model", "probability": 0.9}}
    dictionaries = {"model": {"values": [model_id]}}
    if adapter_id:
        parameters["body.adapter"] = {"dictionary": "adapter", "probability": 0.5}
        dictionaries["adapter"] = {"values": [adapter_id]}
    config = schemathesis.Config.from_dict({
        "seed": seed,
        "headers": {"Authorization": f"Bearer {key}"},
        "request-timeout": 120,
        "continue-on-failure": True,
        "generation": {"max-examples": cfg.examples, "deterministic": True, "database": "none"},
        "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
        "dictionaries": dictionaries,
        "parameters": parameters,
        "operations": [{"include-path": "/v1/users", "headers": {"Authorization": f"Bearer {ADMIN}"}}],
    })
    return steer(schemathesis.openapi.from_url(f"{base}/openapi.json", config=config), cfg.max_tokens_cap)


def steer(schema, max_tokens_cap: int):
    """Steer generation, never the schema (this run and tests/parsona/test_serve_fuzz.py share it): a generated
    max_tokens in (cap, 512] is cut to 1..cap (a 512-token decode takes seconds here), and valid temperature
    and top_p values are drawn at the float edges too (5e-324 once made sampling raise)."""
    from hypothesis import strategies as st

    @schema.hook
    def map_body(context, body):
        if max_tokens_cap and isinstance(body, dict):
            for name in ("max_tokens", "max_completion_tokens"):
                value = body.get(name)
                if type(value) is int and max_tokens_cap < value <= 512:
                    body[name] = 1 + value % max_tokens_cap
        return body

    @schema.hook
    def flatmap_body(context, body):
        if not isinstance(body, dict):
            return st.just(body)
        edges = [st.sampled_from(EDGE_FLOATS).map(lambda v, name=name: {**body, name: v})
                 for name, ok in (("temperature", lambda v: 0 <= v <= 2), ("top_p", lambda v: 0 < v <= 1))
                 if type(body.get(name)) in (int, float) and ok(body[name])]
        return st.one_of(st.just(body), *edges)

    return schema


@dataclass
class Result:
    statuses: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(collections.Counter))
    failures: dict = dataclasses.field(default_factory=dict)   # (operation, check, title, status) -> text
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # same key -> cases
    errors: list = dataclasses.field(default_factory=list)
    stop_reason: str = "not run"
    seconds: float = 0.0

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps({
            "statuses": {op: [[code, n] for code, n in c.items()] for op, c in self.statuses.items()},
            "failures": [[list(k), v] for k, v in self.failures.items()],
            "counts": [[list(k), n] for k, n in self.counts.items()],
            "errors": self.errors, "stop_reason": self.stop_reason, "seconds": self.seconds}))

    @classmethod
    def load(cls, path: Path) -> "Result":
        d = json.loads(path.read_text())
        r = cls(failures={tuple(k): v for k, v in d["failures"]}, counts=collections.Counter({tuple(k): n for k, n in d["counts"]}),
                errors=d["errors"], stop_reason=d["stop_reason"], seconds=d["seconds"])
        for op, pairs in d["statuses"].items():
            r.statuses[op].update(dict((code, n) for code, n in pairs))
        return r


def run_engine(schema, result: Result, max_seconds: float) -> None:
    """Every phase once (a count-bounded run: schemathesis's own max-time would repeat the fuzzing phase
    until the time is spent); a timer stops the engine after ``max_seconds``."""
    from schemathesis.engine import from_schema

    started = time.perf_counter()
    stream = from_schema(schema).execute()
    timer = threading.Timer(max_seconds, stream.stop)
    timer.daemon = True
    timer.start()
    try:
        result.stop_reason = _consume(stream, result)
    finally:
        timer.cancel()
    if time.perf_counter() - started >= max_seconds:
        result.stop_reason = "stopped by --max-seconds"
    result.seconds = time.perf_counter() - started


def scenario(recorder, statuses: dict):
    """One finished scenario (this run and tests/parsona/test_serve_fuzz.py share it): count each response's
    status into ``statuses[operation]``; yield ``(key, response bytes, request body, code sample)`` per failed
    check, key = (operation, check, failure title, status)."""
    for interaction in recorder.interactions.values():
        statuses[recorder.label][interaction.response.status_code if interaction.response else "none"] += 1
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.failure_info is None:
                continue
            interaction = recorder.interactions.get(case_id)
            response = interaction.response if interaction else None
            status = response.status_code if response is not None else None
            body = (interaction.request.body or b"") if interaction else b""
            yield ((recorder.label, check.name, check.failure_info.failure.title, status),
                   response.content if response is not None else b"", body, check.failure_info.code_sample)


def _consume(stream, result: Result) -> str:
    from schemathesis.engine import events

    stop_reason = "no EngineFinished event"
    for event in stream:
        if isinstance(event, events.ScenarioFinished):
            for key, response_text, _, code_sample in scenario(event.recorder, result.statuses):
                result.counts[key] += 1
                result.failures.setdefault(key, f"{key[3]} {response_text[:240]!r}\n      {code_sample[:500]}")
        elif isinstance(event, events.NonFatalError):
            result.errors.append(f"{event.label}: {event.info.title}: {str(event.value)[:300]}")
        elif isinstance(event, events.FatalError):
            result.errors.append(f"fatal: {event.exception!r}"[:400])
        elif isinstance(event, events.EngineFinished):
            stop_reason = str(event.stop_reason.value)
    return stop_reason


def make_user(base: str, archive: bytes | None, i: int) -> tuple[str, str | None]:
    with httpx.Client(base_url=base, timeout=120) as c:
        r = c.post("/v1/users", headers={"Authorization": f"Bearer {ADMIN}"})
        r.raise_for_status()
        key = r.json()["api_key"]
        auth = {"Authorization": f"Bearer {key}"}
        adapter_id = None
        if archive is not None:
            r = c.post("/v1/adapters", params={"name": f"user{i}"}, content=archive,
                       headers={**auth, "Content-Type": "application/x-tar"})
            r.raise_for_status()
            adapter_id = r.json()["id"]
        c.put("/v1/profile/history", json={"items": [f"user {i} likes short answers.", {"text": f"note {i}"}]},
              headers=auth).raise_for_status()
    return key, adapter_id


def crossed_records(base: str, keys: list[str]) -> tuple[int, int]:
    """(adapter ids listed by more than one user or readable by another user, ids checked)."""
    with httpx.Client(base_url=base, timeout=60) as c:
        owned = []
        for key in keys:
            r = c.get("/v1/adapters", headers={"Authorization": f"Bearer {key}"})
            owned.append({a["id"] for a in r.json()["data"]} if r.status_code == 200 else set())
        crossed = sum(len(a & b) for i, a in enumerate(owned) for b in owned[i + 1:])
        checked = 0
        for i, key in enumerate(keys):
            for j, ids in enumerate(owned):
                if i == j:
                    continue
                for adapter_id in sorted(ids)[:5]:
                    checked += 1
                    crossed += c.get(f"/v1/adapters/{adapter_id}", headers={"Authorization": f"Bearer {key}"}).status_code != 404
    return crossed, checked


def run_workers(cfg: Config, tmp: Path, base: str, model_id: str, users) -> list[Result]:
    """One process per user, all at once (hypothesis is not thread-safe: two engines in threads of one
    process raised "AST constructor recursion depth mismatch"), each bounded by --max-seconds."""
    procs = []
    for i, (key, adapter) in enumerate(users):
        child = dataclasses.replace(cfg, worker_base=base, worker_index=i, worker_model_id=model_id,
                                    result_file=str(tmp / f"worker{i}.json"))
        env = {**os.environ, "PARSONA_FUZZ_KEY": key, "PARSONA_FUZZ_ADAPTER": adapter or ""}
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *flags(child, internal=True)],
                                      env=env, stdout=sys.stderr))
    results = []
    deadline = time.monotonic() + cfg.max_seconds + 120   # the worker's own timer stops its engine first
    for i, proc in enumerate(procs):
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        path = tmp / f"worker{i}.json"
        results.append(Result.load(path) if path.is_file() else
                       Result(errors=[f"worker {i} wrote no result (exit status {proc.returncode})"], stop_reason="failed"))
    return results


def worker(cfg: Config) -> bool:
    """One user's engine against the running server; writes its Result to ``cfg.result_file``."""
    key, adapter = os.environ["PARSONA_FUZZ_KEY"], os.environ.get("PARSONA_FUZZ_ADAPTER") or None
    result = Result()
    run_engine(fuzz_schema(cfg.worker_base, key, adapter, cfg.worker_model_id, cfg.seed + cfg.worker_index, cfg),
               result, cfg.max_seconds)
    result.dump(Path(cfg.result_file))
    return True


def main(cfg: Config) -> bool:
    if cfg.worker_base:
        return worker(cfg)
    print("command:", command(cfg), flush=True)
    from parsona.base_model import load_base_model

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="parsona-serve-fuzz-") as tmp:
        tmp = Path(tmp)
        if cfg.model is None:
            model_dir, pref_dir = tiny_server_files(tmp)
            model_id, served = model_dir.name, str(model_dir)
            args = ["--model", served, "--preference-adapter", str(pref_dir), "--default-preference", "0.5,0.5"]
        else:
            served = cfg.model
            model_id = Path(served).name if Path(served).exists() else served
            args = ["--model", served]
        args += ["--batch-wait-ms", str(cfg.batch_wait_ms), *shlex.split(cfg.server_args)]
        model, _ = load_base_model(served, device="cpu")
        archives = [lora_archive(model, rank=4, seed=i) for i in range(cfg.users)]
        del model
        proc, base, log = start_server(tmp / "store", args, admin_key=ADMIN)
        try:
            users = [make_user(base, archives[i], i) for i in range(cfg.users)]
            print(f"server: parsona serve {' '.join(args)} at {base}; {cfg.users} users, each with one LoRA "
                  f"(rank 4) and 2 history items", flush=True)
            results = run_workers(cfg, tmp, base, model_id, users)
            crossed, checked = crossed_records(base, [key for key, _ in users])
            alive = proc.poll() is None
            operations = {f"{m.upper()} {p}" for p, ops in httpx.get(f"{base}/openapi.json").json()["paths"].items() for m in ops}
        finally:
            stop_server(proc)
        errors_in_log = server_errors(log)
    return report(cfg, results, operations, errors_in_log, crossed, checked, alive, time.perf_counter() - started)


def report(cfg, results, operations, errors_in_log, crossed, checked, alive, seconds) -> bool:
    statuses: dict = collections.defaultdict(collections.Counter)
    failures, counts, errors = {}, collections.Counter(), []
    for r in results:
        for op, c in r.statuses.items():
            statuses[op].update(c)
        for k, v in r.failures.items():
            failures.setdefault(k, v)
        counts.update(r.counts)
        errors += r.errors
    print("\ncases: one per distinct generated request (a case replayed while shrinking is counted once)")
    print(f"{'operation':34s} {'cases':>8s} {'2xx':>6s} {'4xx':>6s} {'5xx':>5s} {'none':>5s}  status codes")
    total = fivexx = 0
    for op in sorted(statuses, key=lambda o: o.split(" ", 1)[::-1]):
        c = statuses[op]
        n = sum(c.values())
        band = lambda lo: sum(v for k, v in c.items() if isinstance(k, int) and lo <= k < lo + 100)
        total, fivexx = total + n, fivexx + band(500)
        codes = " ".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))
        print(f"{op:34s} {n:8d} {band(200):6d} {band(400):6d} {band(500):5d} {c.get('none', 0):5d}  {codes}")
    print(f"{'total':34s} {total:8d}   5xx {fivexx}")
    violations = {k: v for k, v in failures.items() if k[1] != "not_a_server_error"}
    print(f"\n{len(failures)} distinct failures ({sum(counts.values())} failing cases), {len(violations)} of them schema "
          "or status-code violations:")
    for k, text in sorted(failures.items(), key=lambda kv: str(kv[0])):
        print(f"  {k[0]} [{k[1]}] {k[2]} ×{counts[k]}: {text}")
    if errors:
        print(f"\n{len(errors)} engine errors (an exception, a timeout or a dropped connection):")
        for line, n in collections.Counter(errors).most_common(20):
            print(f"  ×{n} {line}")
    if errors_in_log:
        print(f"\nserver log: {sum(errors_in_log.values())} internal errors:")
        for line, n in errors_in_log.most_common(20):
            print(f"  ×{n} {line}")
    stops = collections.Counter(r.stop_reason for r in results)
    print(f"\nengines stopped: {dict(stops)}; slowest user {max(r.seconds for r in results):.0f} s; "
          f"cross-user reads checked {checked}, crossed {crossed}; server alive at the end: {alive}")
    missing = sorted(operations - set(statuses))
    checks = [
        (f"0 × 5xx (measured {fivexx})", fivexx == 0),
        (f"0 schema or status-code violations (measured {len(violations)} distinct)", not violations),
        (f"0 engine errors: exceptions, timeouts, dropped connections (measured {len(errors)})", not errors),
        (f"0 crossed records (measured {crossed} of {checked} reads + listings)", crossed == 0),
        (f"every operation exercised ({len(operations) - len(missing)} of {len(operations)}"
         + (f"; missing {missing})" if missing else ")"), not missing),
        (f"run complete: every engine ran its count, not stopped by --max-seconds ({dict(stops)})",
         set(stops) == {"completed"}),
    ]
    from bench_targets import report as report_targets

    return report_targets(checks, seconds, command(cfg))


if __name__ == "__main__":
    from parsona.recipes.config_cli import run_recipe

    sys.exit(0 if run_recipe(Config, main) else 1)   # exit status 1 when a target fails
