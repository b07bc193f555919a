"""Crash recovery (issue 15, finding 3): a real ``parsona serve`` killed with SIGKILL mid-job, then
restarted on the same store.

After the restart the job that was running is ``failed`` with a message saying the server restarted,
the jobs that were queued (the queue lived only in the dead process's memory) run and succeed in
the order they were created, no temp or partial folder is left in the store, and the adapters
stored before the crash still serve. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import start_serve
from parsona.base_model import save_tiny_model

pytestmark = pytest.mark.slow

ADMIN_KEY = "recovery-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
FINAL = ("succeeded", "failed")


class Server:
    """``parsona serve --model DIR --store DIR`` on a free loopback port."""

    def __init__(self, model_dir: Path, store: Path):
        self.proc, self.base = start_serve(["--model", str(model_dir), "--store", str(store), "--max-jobs-per-user", "3"],
                                           ADMIN_KEY)

    def call(self, method: str, path: str, key: dict | None = None, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{self.base}{path}", headers=key or ADMIN, timeout=30, **kwargs)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def wait_job(server: Server, key: dict, job_id: str, until, seconds: float = 60) -> dict:
    deadline, job = time.monotonic() + seconds, None
    while time.monotonic() < deadline:
        r = server.call("GET", f"/v1/jobs/{job_id}", key)
        if r.status_code == 200:  # (a 429 from the per-user rate limit: ask again later)
            job = r.json()
            if until(job):
                return job
        time.sleep(0.1)  # 10 requests a second: under the server's default rate limit
    pytest.fail(f"job {job_id} did not get there within {seconds} s: {job}")


def completion(server: Server, key: dict, adapter: str) -> httpx.Response:
    return server.call("POST", "/v1/completions", key, json={"model": "model", "prompt": "Hello", "max_tokens": 4,
                                                            "temperature": 0, "adapter": adapter})


def test_restart_after_kill_9_recovers_jobs_and_sweeps_temp_folders(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    store = tmp_path / "store"
    first = Server(model_dir, store)
    try:
        key = {"Authorization": f"Bearer {first.call('POST', '/v1/users').json()['api_key']}"}
        texts = [("I write long, careful notes about tea and trains. " * 6)[:300] for _ in range(8)]
        assert first.call("PUT", "/v1/profile/history", key, json={"items": texts}).status_code == 200
        train = lambda **params: first.call("POST", "/v1/adapters/train", key, json={"rank": 8, **params})  # noqa: E731
        earlier = wait_job(first, key, train(steps=1, name="before").json()["id"], lambda j: j["status"] in FINAL)
        assert earlier["status"] == "succeeded", earlier
        assert completion(first, key, earlier["adapter_id"]).status_code == 200

        running = train(steps=200, rank=64).json()["id"]  # long enough to be killed mid-way
        queued = [train(steps=1, name="q1").json()["id"], train(steps=2, name="q2").json()["id"]]
        over = train(steps=1)
        assert over.json()["error"]["param"] == "max_jobs_per_user", over.text  # --max-jobs-per-user 3 reached
        wait_job(first, key, running, lambda j: j["status"] == "running" and j["progress"] > 0)
        partial = [p for p in (store / "tmp").rglob("*") if p.is_dir()]
        assert any(p.name.startswith("train-") for p in partial)  # the job's scratch folder, inside the store
    finally:
        first.kill()
    legacy = store / "adapters" / f".{earlier['adapter_id']}.tmp-deadbeef"  # what older versions left
    legacy.mkdir()
    (legacy / "adapter_model.safetensors").write_bytes(b"half")

    second = Server(model_dir, store)
    try:
        jobs = [wait_job(second, key, j, lambda j: j["status"] in FINAL) for j in queued]
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
        assert jobs[0]["updated_at"] <= jobs[1]["updated_at"]  # requeued oldest first
        interrupted = second.call("GET", f"/v1/jobs/{running}", key).json()
        assert interrupted["status"] == "failed" and "restarted" in interrupted["message"], interrupted
        assert "POST /v1/adapters/train" in interrupted["message"]

        assert not legacy.exists()
        tmp = sorted(os.listdir(store / "tmp"))
        assert len(tmp) == 2 and tmp[1] == f"{tmp[0]}.lock", tmp  # only the live server's own folder...
        assert os.listdir(store / "tmp" / tmp[0]) == []  # ...and nothing in it between requests
        assert not any(name.startswith(".") for name in os.listdir(store / "adapters"))

        for adapter in (earlier["adapter_id"], *(j["adapter_id"] for j in jobs)):
            r = completion(second, key, adapter)
            assert r.status_code == 200, r.text
        listed = {a["id"] for a in second.call("GET", "/v1/adapters", key).json()["data"]}
        assert listed == {earlier["adapter_id"], *(j["adapter_id"] for j in jobs)}
    finally:
        second.stop()
    assert os.listdir(store / "tmp") == []  # a clean stop removes the server's own folder too
