"""Per-user quotas (issue 15, finding 4): jobs, adapters, history items and bytes, and zip bombs.

Each quota is reproduced over HTTP and refused with 429 in OpenAI's error shape, naming the quota,
with nothing half-written; a user at a quota does not affect another user; the limits hold under
concurrent writers (checked in the same SQLite transaction as the write). Archive bombs are refused
having written (almost) nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from conftest import peft_lora_dir, tiny_tokenizer
from parsona.base_model import tiny_causal_lm
from parsona.errors import ConfigError
from parsona.host import Host
from parsona.serve import uploads
from parsona.serve.app import create_app
from parsona.serve.training import Trainer
from parsona.store import Quotas, QuotaExceeded, Store

ADMIN = {"Authorization": "Bearer admin-secret"}
QUOTAS = Quotas(max_jobs_per_user=2, max_adapters_per_user=3, max_history_items=5, max_history_bytes=200)
UPLOAD_LIMIT = 200_000


def tiny_lm():
    return tiny_causal_lm(vocab_size=259, pad_token_id=0)


class GatedTrain:
    """The Trainer's ``train``: copies a real PEFT LoRA, but only once the gate opens, so jobs stay
    queued or running for as long as a test needs."""

    def __init__(self, lora_dir: Path):
        self.lora_dir, self.gate = lora_dir, threading.Event()

    def __call__(self, settings: dict, *, model, tokenizer, texts, progress) -> Path:
        assert self.gate.wait(60), "the test never opened the gate"
        out = Path(settings["output_dir"])
        shutil.copytree(self.lora_dir, out)
        progress(1, 1, 0.0)
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(client, store, trainer, gated train, a tar.gz of a real LoRA)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("quotas")
    lora = peft_lora_dir(tmp / "lora", seed=0, r=2)
    store = Store(tmp / "store", quotas=QUOTAS)
    host = Host(tiny_lm(), tiny_tokenizer(), store, max_resident_loras=2)
    train = GatedTrain(lora)
    trainer = Trainer(store, tiny_lm, tiny_tokenizer(), train=train)
    app = create_app(host, store, model_id="tiny", admin_key="admin-secret", trainer=trainer,
                     max_upload_bytes=UPLOAD_LIMIT)
    with TestClient(app) as client:
        yield client, store, trainer, train, tar_gz(lora)
    train.gate.set()
    store.close()
    torch.set_num_threads(previous)


def tar_gz(path: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        t.add(path, arcname="lora")
    return buf.getvalue()


def new_user(client) -> dict:
    r = client.post("/v1/users", headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['api_key']}"}


def upload(client, key, data: bytes):
    return client.post("/v1/adapters?name=x", content=data, headers={**key, "Content-Type": "application/x-tar"})


def assert_quota(r, quota: str) -> None:
    """429 in OpenAI's error shape, naming the quota and saying what to do."""
    assert r.status_code == 429, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == quota and quota in error["message"] and "the limit is" in error["message"], error


def scratch(store: Store) -> list[str]:
    """Everything in this process's temp folder: empty between requests, whatever they did."""
    return sorted(os.listdir(store._temp_area().dir))


# ---- HTTP: each quota ------------------------------------------------------------------------

def test_jobs_per_user_are_capped_and_free_up_when_jobs_finish(served):
    client, store, trainer, train, _ = served
    alice, bob = new_user(client), new_user(client)
    for key in (alice, bob):
        assert client.put("/v1/profile/history", json={"items": ["hello"]}, headers=key).status_code == 200
    train.gate.clear()
    try:
        jobs = [client.post("/v1/adapters/train", json={"steps": 1}, headers=alice) for _ in range(2)]
        assert [r.status_code for r in jobs] == [202, 202], [r.text for r in jobs]
        refused = client.post("/v1/adapters/train", json={"steps": 1}, headers=alice)
        assert_quota(refused, "max_jobs_per_user")
        assert "Wait until one of your queued or running jobs finishes" in refused.json()["error"]["message"]
        assert len(store.list_jobs(store.authenticate(alice["Authorization"][7:]))) == 2  # nothing recorded
        assert client.post("/v1/adapters/train", json={"steps": 1}, headers=bob).status_code == 202  # bob unaffected
    finally:
        train.gate.set()
    trainer.wait_idle()
    assert all(client.get(f"/v1/jobs/{r.json()['id']}", headers=alice).json()["status"] == "succeeded" for r in jobs)
    assert client.post("/v1/adapters/train", json={"steps": 1}, headers=alice).status_code == 202  # room again
    trainer.wait_idle()


def test_adapters_per_user_are_capped_counting_queued_jobs(served):
    client, store, trainer, train, archive = served
    alice, bob = new_user(client), new_user(client)
    ids = [upload(client, alice, archive) for _ in range(2)]
    assert [r.status_code for r in ids] == [201, 201], [r.text for r in ids]
    client.put("/v1/profile/history", json={"items": ["hello"]}, headers=alice)
    train.gate.clear()
    try:  # a queued job will store the third adapter: the slot is taken already
        assert client.post("/v1/adapters/train", json={"steps": 1}, headers=alice).status_code == 202
        before = sorted(os.listdir(store.adapters_dir))
        assert_quota(upload(client, alice, archive), "max_adapters_per_user")
        assert_quota(client.post("/v1/adapters/train", json={"steps": 1}, headers=alice), "max_adapters_per_user")
        assert sorted(os.listdir(store.adapters_dir)) == before  # nothing half-written...
        assert [d for d in scratch(store) if not d.startswith("train-")] == []  # (the gated job's folder aside)
        assert upload(client, bob, archive).status_code == 201  # bob unaffected
    finally:
        train.gate.set()
    trainer.wait_idle()
    listed = client.get("/v1/adapters", headers=alice).json()["data"]
    assert len(listed) == 3
    assert_quota(upload(client, alice, archive), "max_adapters_per_user")
    assert client.delete(f"/v1/adapters/{listed[0]['id']}", headers=alice).status_code == 200
    assert upload(client, alice, archive).status_code == 201  # deleting one makes room
    assert scratch(store) == []


def test_history_items_are_capped_all_or_nothing(served):
    client, store, _, _, _ = served
    alice, bob = new_user(client), new_user(client)
    assert client.put("/v1/profile/history", json={"items": ["a", "b", "c"]}, headers=alice).status_code == 200
    refused = client.put("/v1/profile/history", json={"items": ["d", "e", "f"]}, headers=alice)
    assert_quota(refused, "max_history_items")
    user = store.authenticate(alice["Authorization"][7:])
    assert [i["text"] for i in store.history(user)] == ["a", "b", "c"]  # none of the refused three
    assert client.put("/v1/profile/history", json={"items": ["d", "e"]}, headers=alice).status_code == 200
    assert_quota(client.put("/v1/profile/history", json={"items": ["f"]}, headers=alice), "max_history_items")
    assert client.put("/v1/profile/history", json={"items": ["x"] * 5}, headers=bob).status_code == 200


def test_history_bytes_are_capped_in_utf8(served):
    client, store, _, _, _ = served
    alice, bob = new_user(client), new_user(client)
    user = store.authenticate(alice["Authorization"][7:])
    assert client.put("/v1/profile/history", json={"items": ["é" * 60]}, headers=alice).status_code == 200  # 120 B
    assert store.usage(user)["history_bytes"] == 120
    refused = client.put("/v1/profile/history", json={"items": [{"text": "x" * 77, "kind": "note"}]}, headers=alice)
    assert_quota(refused, "max_history_bytes")
    assert store.usage(user) == {"jobs": 0, "adapters": 0, "history_items": 1, "history_bytes": 120}
    assert client.put("/v1/profile/history", json={"items": ["x" * 80]}, headers=alice).status_code == 200  # 200 B
    assert client.put("/v1/profile/history", json={"items": ["x" * 200]}, headers=bob).status_code == 200


# ---- the store: atomic under concurrent writers ----------------------------------------------

def hammer(n_threads: int, attempts: int, call) -> tuple[int, list[BaseException]]:
    """Run ``call`` ``attempts`` times on each of ``n_threads`` threads at once; (successes, errors)."""
    ok, errors, lock, start = [0], [], threading.Lock(), threading.Barrier(n_threads)

    def worker() -> None:
        start.wait()
        for _ in range(attempts):
            try:
                call()
                with lock:
                    ok[0] += 1
            except QuotaExceeded:
                pass
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return ok[0], errors


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store", quotas=Quotas(max_jobs_per_user=3, max_adapters_per_user=4,
                                                max_history_items=25, max_history_bytes=1000))
    yield s
    s.close()


def test_concurrent_writers_never_pass_a_quota(store, tmp_path):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    lora = peft_lora_dir(tmp_path / "lora", seed=1, r=2)

    assert hammer(8, 4, lambda: store.create_job(alice, "lora", {})) == (3, [])
    assert hammer(8, 10, lambda: store.add_history(alice, ["one item"])) == (25, [])
    assert hammer(6, 1, lambda: store.put_adapter(bob, lora, "lora", "x")) == (4, [])
    assert store.usage(alice) == {"jobs": 3, "adapters": 0, "history_items": 25, "history_bytes": 25 * 8}
    assert store.usage(bob)["adapters"] == 4 and len(os.listdir(store.adapters_dir)) == 4
    assert os.listdir(store._temp_area().dir) == []  # the refused copies left nothing


def test_quotas_are_validated():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="max_jobs_per_user"):
            Quotas(max_jobs_per_user=bad)
    assert Quotas() == Quotas(max_jobs_per_user=2, max_adapters_per_user=32, max_history_items=10_000,
                              max_history_bytes=16 << 20)


# ---- archive bombs ---------------------------------------------------------------------------

@pytest.fixture
def bytes_written(monkeypatch):
    """Counts every byte uploads.py writes to disk (its files are opened through this)."""
    written = [0]

    class Counting(io.FileIO):
        def write(self, b):
            written[0] += len(b)
            return super().write(b)

    def counting_open(path, mode="r", *args, **kwargs):
        assert mode == "xb", mode
        return Counting(path, "x")

    monkeypatch.setattr(uploads, "open", counting_open, raising=False)
    return written


def zip_bomb(size: int = 64 << 20) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("adapter_config.json", "{}")
        with z.open("adapter_model.safetensors", "w", force_zip64=False) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    return buf.getvalue()


def tar_bomb(size: int = 64 << 20) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as t:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = size
        t.addfile(info, io.BytesIO(bytes(size)))
    return buf.getvalue()


def pax_bomb(size: int = 32 << 20) -> bytes:
    """A tar.gz whose *header* (a pax record) expands to ``size`` bytes: tarfile would read it into memory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=9) as t:
        info = tarfile.TarInfo("adapter_config.json")
        info.pax_headers = {"comment": "x" * size}
        info.size = 2
        t.addfile(info, io.BytesIO(b"{}"))
    return buf.getvalue()


@pytest.mark.parametrize("make", [zip_bomb, tar_bomb, pax_bomb])
def test_archive_bombs_are_refused_before_writing_much(make, tmp_path, bytes_written):
    data = make()
    assert len(data) < UPLOAD_LIMIT  # small enough to pass the upload limit: the unpacking must refuse it
    with pytest.raises(ConfigError, match="unpacks to more than") as err:
        uploads.extract_archive(data, tmp_path, max_bytes=4 * UPLOAD_LIMIT)
    assert err.value.field == "file"
    assert bytes_written[0] <= 2 and sum(p.stat().st_size for p in tmp_path.iterdir()) <= 2  # at most the "{}"


def test_a_bomb_over_http_is_refused_and_leaves_nothing(served):
    client, store, _, _, _ = served
    key = new_user(client)
    before = sorted(os.listdir(store.adapters_dir))
    r = upload(client, key, zip_bomb())
    assert r.status_code == 400 and r.json()["error"]["param"] == "file", r.text
    assert "unpacks to more than" in r.json()["error"]["message"]
    assert sorted(os.listdir(store.adapters_dir)) == before and scratch(store) == []


def test_a_lying_member_size_is_caught_while_streaming(tmp_path, bytes_written):
    """A declared size can lie: the bytes are counted as they stream (a member reader that ignores it)."""
    members = iter([("adapter_model.safetensors", False, 10, io.BytesIO(bytes(5 << 20)))])
    with pytest.raises(ConfigError, match="unpacks to more than"):
        uploads._write_all(members, tmp_path, limit=1 << 20)
    assert bytes_written[0] <= (1 << 20)


def test_archives_with_too_many_members_or_a_large_json_are_refused(tmp_path):
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for i in range(uploads.MAX_MEMBERS + 1):
            z.writestr(f"f{i}.json", "{}")
    folders = io.BytesIO()
    with tarfile.open(fileobj=folders, mode="w") as t:  # folder entries count too
        for i in range(uploads.MAX_MEMBERS + 1):
            info = tarfile.TarInfo(f"d{i}")
            info.type = tarfile.DIRTYPE
            t.addfile(info)
    big_json = io.BytesIO()
    with zipfile.ZipFile(big_json, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("adapter_config.json", " " * (uploads.MAX_JSON_BYTES + 1))
    for data, words in [(many.getvalue(), "more than 16 members"), (folders.getvalue(), "more than 16 members"),
                        (big_json.getvalue(), "larger than")]:
        dest = tmp_path / str(len(list(tmp_path.iterdir())))
        dest.mkdir()
        with pytest.raises(ConfigError, match=words):
            uploads.extract_archive(data, dest, max_bytes=64 << 20)
        assert list(dest.iterdir()) == []


def test_a_real_lora_still_unpacks(served, tmp_path):
    archive = served[4]
    names = uploads.extract_archive(archive, tmp_path, max_bytes=4 * UPLOAD_LIMIT)
    assert sorted(names) == ["adapter_config.json", "adapter_model.safetensors"]
    assert uploads.unpacked_limit(len(archive), 4 * UPLOAD_LIMIT) >= sum(p.stat().st_size for p in tmp_path.iterdir())

