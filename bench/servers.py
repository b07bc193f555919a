"""Real ``parsona serve`` processes for the loopback benchmarks (serve, serve_fuzz, scale): start one on
127.0.0.1 and a free port, wait until it answers, stop it, read its log for internal errors."""

from __future__ import annotations

import collections
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, args: list[str], *, admin_key: str,
                 env: dict | None = None) -> tuple[subprocess.Popen, str, Path]:
    """``parsona serve --store STORE ARGS`` on 127.0.0.1 and a free port, once /healthz answers:
    (process, base url, its log file). ``env`` adds to this process's environment."""
    port = free_port()
    cmd = [sys.executable, "-m", "parsona.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--store", str(store), *args]
    log = store.with_suffix(".log")
    with open(log, "wb") as stderr:   # the child keeps its own handle
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {}), "PARSONA_ADMIN_KEY": admin_key}, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base, log
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    raise SystemExit(f"server did not start (exit status {proc.wait()}): {shlex.join(cmd)}\n{tail}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def tiny_server_files(tmp: Path, preference_rank: int = 2) -> tuple[Path, Path]:
    """A tiny random model dir and a preference LoRA saved for it: (model dir, adapter dir)."""
    from parsona.adapters import PreferenceLoRAConfig, attach, save_adapter
    from parsona.base_model import load_base_model, save_tiny_model

    model_dir = save_tiny_model(tmp / "tiny")
    model, _ = load_base_model(str(model_dir), device="cpu")
    save_adapter(attach(model, PreferenceLoRAConfig(rank=preference_rank, n_objectives=2)), tmp / "pref")
    return model_dir, tmp / "pref"


def server_errors(log: Path) -> collections.Counter:
    """Internal errors in a server's log, by the exception line that ends each traceback."""
    counts: collections.Counter = collections.Counter()
    pending = False
    for line in log.read_text(errors="replace").splitlines():
        if "internal error on" in line or line.startswith("Traceback") or "Exception in ASGI application" in line:
            pending = True
        elif pending and re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            counts[line[:160]] += 1
            pending = False
    return counts
