"""Store: hashed keys, per-user isolation, safe adapter files, concurrent writes, persistence."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import parsona.store_checks as store_checks
from parsona.errors import ConfigError
from parsona.store import NotFound, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def write_safetensors(path: Path, header: dict | None = None, data: bytes = b"\0" * 16) -> None:
    """A minimal valid safetensors file, written by hand (the store reads the header itself)."""
    header = header or {"lora.a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def make_adapter_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"adapter_type": "lora", "rank": 2}))
    write_safetensors(path / "adapter.safetensors")
    return path


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: compare before/after to see 'untouched'."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if "parsona.sqlite3" not in p.name}


def adapter_dirs(store: Store) -> list[str]:
    return sorted(os.listdir(store.adapters_dir))


def adapter_rows(store: Store) -> int:
    with sqlite3.connect(store.db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM adapters").fetchone()[0]


# ---- keys -----------------------------------------------------------------------------------

def test_api_key_is_stored_hashed_only(store):
    user_id, key = store.create_user()
    store.close()
    raw = b"".join(p.read_bytes() for p in store.root.glob("parsona.sqlite3*"))
    assert key.encode() not in raw
    assert key.split("_", 1)[1].encode() not in raw  # not even the secret part
    assert user_id.encode() in raw  # sanity: the bytes we searched are the database's


def test_authenticate_right_and_wrong_keys(store):
    alice, key_a = store.create_user()
    bob, key_b = store.create_user()
    assert store.authenticate(key_a) == alice
    assert store.authenticate(key_b) == bob
    assert key_a != key_b
    for bad in [key_a[:-1], key_a + "x", "", "psk_", None, 123, key_a.upper(), alice]:
        assert store.authenticate(bad) is None


# ---- isolation ------------------------------------------------------------------------------

def test_foreign_ids_look_exactly_like_missing_ones(store, tmp_path):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    adapter = store.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "mine")
    job = store.create_job(alice, "lora", {"rank": 4})
    store.add_history(alice, ["alice likes tea"])
    missing_adapter, missing_job = "adp_" + "0" * 32, "job_" + "0" * 32

    for call, foreign, missing in [
        (store.adapter_path, adapter, missing_adapter),
        (store.get_adapter, adapter, missing_adapter),
        (store.delete_adapter, adapter, missing_adapter),
        (store.get_job, job, missing_job),
    ]:
        with pytest.raises(NotFound) as foreign_err:
            call(bob, foreign)
        with pytest.raises(NotFound) as missing_err:
            call(bob, missing)
        assert str(foreign_err.value) == str(missing_err.value)
        assert type(foreign_err.value) is type(missing_err.value)

    assert store.list_adapters(bob) == [] and store.list_jobs(bob) == []
    assert store.history(bob) == []
    # Bob's failed delete left Alice's adapter in place.
    assert store.adapter_path(alice, adapter).is_dir()
    assert [a["adapter_id"] for a in store.list_adapters(alice)] == [adapter]
    assert store.get_job(alice, job)["params"] == {"rank": 4}


def test_job_result_must_be_an_adapter_of_the_jobs_user(store, tmp_path):
    alice, _ = store.create_user()
    bob, _ = store.create_user()
    bobs_adapter = store.put_adapter(bob, make_adapter_dir(tmp_path / "src"), "lora", "b")
    job = store.create_job(alice, "lora", {})
    with pytest.raises(NotFound):
        store.update_job(job, status="succeeded", adapter_id=bobs_adapter)
    assert store.get_job(alice, job)["status"] == "queued"  # rolled back as a whole


@pytest.mark.parametrize("bad_id", [
    "../../etc/passwd", "adp_../../x", "/etc/passwd", "/tmp", "adp_" + "0" * 31 + "\0",
    "adp_" + "0" * 32 + "\0", "adp_" + "0" * 32 + "\n", "adp_" + "0" * 32 + "/..", "..", ".",
    "", "ADP_" + "0" * 32, "usr_" + "0" * 32, None, 7, b"adp_" + b"0" * 32,
])
def test_malformed_ids_are_not_found_and_touch_nothing(store, tmp_path, bad_id):
    alice, _ = store.create_user()
    store.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "a")
    (tmp_path / "store" / "victim").write_text("keep me")
    before = tree(tmp_path)
    for call in (store.adapter_path, store.get_adapter, store.delete_adapter, store.get_job):
        with pytest.raises(NotFound):
            call(alice, bad_id)
        with pytest.raises(NotFound):
            call(bad_id, bad_id)
    for call in (store.history, store.list_adapters, store.list_jobs):
        with pytest.raises(NotFound):
            call(bad_id)
    with pytest.raises(NotFound):
        store.update_job(bad_id, progress=0.5)
    with pytest.raises(NotFound):
        store.put_adapter(bad_id, tmp_path / "src", "lora", "x")
    assert tree(tmp_path) == before


def test_unknown_but_well_formed_user_is_not_found(store):
    ghost = "usr_" + "a" * 32
    with pytest.raises(NotFound):
        store.add_history(ghost, ["x"])
    with pytest.raises(NotFound):
        store.create_job(ghost, "lora", {})
    for read in (store.history, store.list_adapters, store.list_jobs):
        with pytest.raises(NotFound):
            read(ghost)


# ---- adapter files --------------------------------------------------------------------------

def test_put_adapter_copies_files_and_records_them(store, tmp_path):
    alice, _ = store.create_user()
    src = make_adapter_dir(tmp_path / "src")
    adapter = store.put_adapter(alice, src, "lora", "my tone")
    path = store.adapter_path(alice, adapter)
    assert path == store.adapters_dir / adapter
    assert sorted(os.listdir(path)) == ["adapter.safetensors", "adapter_config.json"]
    assert (path / "adapter.safetensors").read_bytes() == (src / "adapter.safetensors").read_bytes()
    record = store.get_adapter(alice, adapter)
    assert record["adapter_type"] == "lora" and record["name"] == "my tone"
    assert record["status"] == "ready" and len(record["sha256"]) == 64
    assert record["size_bytes"] == sum(p.stat().st_size for p in src.iterdir())
    store.delete_adapter(alice, adapter)
    assert not path.exists() and store.list_adapters(alice) == []


def _symlink(src: Path) -> None:
    (src / "link.json").symlink_to(src / "adapter_config.json")


def _subdir(src: Path) -> None:
    (src / "nested").mkdir()


def _pickle(src: Path) -> None:
    (src / "weights.bin").write_bytes(b"\x80\x04K\x01.")


def _fake_safetensors(src: Path) -> None:
    (src / "adapter.safetensors").write_bytes(b"\x80\x04K\x01." * 10)  # a pickle, renamed


def _bad_json(src: Path) -> None:
    (src / "adapter_config.json").write_text("{not json")


def _hidden(src: Path) -> None:
    (src / ".secret.json").write_text("{}")


@pytest.mark.parametrize("spoil, words", [
    (_symlink, "symlink"), (_subdir, "subdirector"), (_pickle, "weights.bin"),
    (_fake_safetensors, "not valid safetensors"), (_bad_json, "not valid json"),
    (_hidden, ".secret.json"),
])
def test_put_adapter_rejects_unsafe_dirs_and_leaves_nothing(store, tmp_path, spoil, words):
    alice, _ = store.create_user()
    src = make_adapter_dir(tmp_path / "src")
    spoil(src)
    with pytest.raises(ConfigError) as err:
        store.put_adapter(alice, src, "lora", "x")
    assert err.value.field == "src_dir" and words in str(err.value)
    assert adapter_dirs(store) == [] and adapter_rows(store) == 0


def test_put_adapter_rejects_symlinked_or_empty_source_dir(store, tmp_path):
    alice, _ = store.create_user()
    real = make_adapter_dir(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "empty").mkdir()
    for src in (tmp_path / "link", tmp_path / "empty", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match="src_dir"):
            store.put_adapter(alice, src, "lora", "x")
    with pytest.raises(ConfigError, match="adapter_type"):
        store.put_adapter(alice, real, "../lora", "x")
    assert adapter_dirs(store) == [] and adapter_rows(store) == 0


def test_failure_during_copy_leaves_no_record_and_no_directory(store, tmp_path, monkeypatch):
    alice, _ = store.create_user()
    src = make_adapter_dir(tmp_path / "src")
    real_copy, calls = store_checks.copy_file, []

    def copy_then_fail(a, b):
        calls.append(a)
        if len(calls) == 2:  # the first file is already written: a genuinely half-done copy
            raise OSError("disk full")
        return real_copy(a, b)

    monkeypatch.setattr(store_checks, "copy_file", copy_then_fail)
    with pytest.raises(OSError, match="disk full"):
        store.put_adapter(alice, src, "lora", "x")
    assert len(calls) == 2
    assert adapter_dirs(store) == [] and adapter_rows(store) == 0


def test_failed_insert_removes_the_copied_files(store, tmp_path, monkeypatch):
    alice, _ = store.create_user()
    kept = store.put_adapter(alice, make_adapter_dir(tmp_path / "a"), "lora", "kept")

    def fail(*args):
        raise sqlite3.OperationalError("simulated")

    monkeypatch.setattr(store, "_insert_adapter", fail)
    with pytest.raises(sqlite3.OperationalError):
        store.put_adapter(alice, make_adapter_dir(tmp_path / "b"), "lora", "lost")
    assert adapter_dirs(store) == [kept] and adapter_rows(store) == 1


# ---- history and jobs -----------------------------------------------------------------------

def test_history_order_limit_and_validation(store):
    alice, _ = store.create_user()
    ids = store.add_history(alice, ["one", {"text": "two", "kind": "chat", "metadata": {"a": 1}}])
    ids += store.add_history(alice, ["three"])
    items = store.history(alice)
    assert [i["item_id"] for i in items] == ids
    assert [i["text"] for i in store.history(alice, limit=2)] == ["two", "three"]
    assert items[1]["kind"] == "chat" and items[1]["metadata"] == {"a": 1}
    for bad in (["ok", ""], [{"txt": "x"}], [{"text": "x", "extra": 1}], "not a list"):
        with pytest.raises(ConfigError, match="items"):
            store.add_history(alice, bad)
    assert len(store.history(alice)) == 3  # a bad batch adds nothing


def test_job_lifecycle(store):
    alice, _ = store.create_user()
    job = store.create_job(alice, "lora", {"steps": 10})
    assert store.get_job(alice, job)["status"] == "queued"
    store.update_job(job, status="running", progress=0.5, message="half way")
    done = store.update_job(job, status="succeeded")
    assert done["progress"] == 1.0 and done["message"] == "half way"
    with pytest.raises(ConfigError, match="status"):
        store.update_job(job, status="running")  # finished jobs are final
    for bad in ({"status": "done"}, {"progress": 1.5}, {"progress": float("nan")}):
        with pytest.raises(ConfigError):
            store.update_job(store.create_job(alice, "lora", {}), **bad)
    with pytest.raises(ConfigError, match="params"):
        store.create_job(alice, "lora", {"x": object()})


# ---- concurrency and persistence ------------------------------------------------------------

def test_concurrent_writes_lose_nothing(store):
    users = [store.create_user()[0] for _ in range(4)]
    jobs = [store.create_job(u, "lora", {}) for u in users]
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(50):
                if i % 2:
                    store.update_job(jobs[t % 4], progress=i / 50, message=f"{t}:{i}")
                else:
                    store.add_history(users[t % 4], [f"{t}:{i}"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    texts = sorted(i["text"] for u in users for i in store.history(u))
    assert texts == sorted(f"{t}:{i}" for t in range(8) for i in range(0, 50, 2))
    for u, j in zip(users, jobs):
        assert store.get_job(u, j)["message"].endswith(":49")  # every writer's last update landed


def test_reopening_sees_the_data_and_wal_is_on(tmp_path):
    root = tmp_path / "store"
    with Store(root) as s:
        alice, key = s.create_user()
        adapter = s.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "x")
        s.add_history(alice, ["remember me"])
        job = s.create_job(alice, "lora", {"rank": 8})
    with Store(root) as s:
        assert s.authenticate(key) == alice
        assert s.adapter_path(alice, adapter).is_dir()
        assert [i["text"] for i in s.history(alice)] == ["remember me"]
        assert s.get_job(alice, job)["params"] == {"rank": 8}
        assert s._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn().execute("PRAGMA busy_timeout").fetchone()[0] == 5000
        assert s._conn().execute("SELECT version FROM schema_version").fetchone()[0] == 1


def test_closed_store_refuses_use(tmp_path):
    s = Store(tmp_path / "store")
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.create_user()


def test_import_stays_light():
    code = "import sys, parsona.store; print('torch' in sys.modules, 'safetensors' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
