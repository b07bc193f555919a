"""Store: hashed keys, per-user isolation, safe adapter files, concurrent writes, persistence."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import secrets
import threading
from pathlib import Path

import pytest

import parsona.store_checks as store_checks
from parsona.errors import ConfigError
from parsona.store import INTERRUPTED, SCHEMA_VERSION, CorruptAdapter, NotFound, Store


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


def test_verified_adapter_path_checks_the_stored_sha256(store, tmp_path, monkeypatch):
    alice, _ = store.create_user()
    adapter = store.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "x")
    weights = store.adapters_dir / adapter / "adapter.safetensors"
    assert store.verified_adapter_path(alice, adapter) == store.adapter_path(alice, adapter)
    original = weights.read_bytes()
    flipped = bytearray(original)
    flipped[-1] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CorruptAdapter) as err:
        store.verified_adapter_path(alice, adapter)
    assert err.value.field == "adapter" and adapter in str(err.value) and "Upload the adapter again" in str(err.value)
    assert isinstance(err.value, ConfigError)
    weights.write_bytes(original)
    assert store.verified_adapter_path(alice, adapter).is_dir()  # back as it was: accepted again
    (store.adapters_dir / adapter / "extra.json").write_text("{}")  # an added file is a change too
    with pytest.raises(CorruptAdapter):
        store.verified_adapter_path(alice, adapter)
    (store.adapters_dir / adapter / "extra.json").unlink()
    weights.unlink()
    with pytest.raises(CorruptAdapter, match="no longer match"):
        store.verified_adapter_path(alice, adapter)
    bob, _ = store.create_user()
    with pytest.raises(NotFound):  # scoped like adapter_path
        store.verified_adapter_path(bob, adapter)


def test_verification_is_cached_until_a_file_changes(store, tmp_path, monkeypatch):
    alice, _ = store.create_user()
    adapter = store.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "x")
    real, calls = store_checks.adapter_digest, []
    monkeypatch.setattr("parsona.store.adapter_digest", lambda path: calls.append(path) or real(path))
    for _ in range(5):
        store.verified_adapter_path(alice, adapter)
    assert len(calls) == 1  # a resident LoRA is not rehashed on every request
    os.utime(store.adapters_dir / adapter / "adapter_config.json", ns=(1, 1))
    store.verified_adapter_path(alice, adapter)
    assert len(calls) == 2
    store.delete_adapter(alice, adapter)
    with pytest.raises(NotFound):
        store.verified_adapter_path(alice, adapter)


# ---- crash recovery -------------------------------------------------------------------------

DEAD_PROCESS = """
import sys, time
from parsona.store import Store
s = Store(sys.argv[1])
job = s.create_job(sys.argv[2], "lora", {})
assert s.claim_job(job)
with s.temp_dir("upload-") as tmp:
    (tmp / "half.safetensors").write_bytes(b"x" * 1000)
    print(job, flush=True)
    time.sleep(60)
"""


def run_and_kill(root: Path, user: str) -> str:
    """A process that claims a job and is writing a temp file when it is killed -9; returns the job id."""
    proc = subprocess.Popen([sys.executable, "-c", DEAD_PROCESS, str(root), user], stdout=subprocess.PIPE, text=True)
    try:
        job = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert job.startswith("job_"), job
    return job


def test_recover_sweeps_and_fails_only_what_dead_processes_left(store, tmp_path):
    alice, _ = store.create_user()
    kept = store.put_adapter(alice, make_adapter_dir(tmp_path / "src"), "lora", "kept")
    dead_job = run_and_kill(store.root, alice)
    legacy = store.adapters_dir / f".{kept}.tmp-abc123"  # what atomic_dir left when killed mid-copy
    legacy.mkdir()
    (legacy / "adapter.safetensors").write_bytes(b"partial")
    queued = store.create_job(alice, "lora", {"n": 1})
    dead_token = next(e for e in os.listdir(store.tmp_root) if e != store._temp_area().token and "." not in e)
    assert (store.tmp_root / dead_token / os.listdir(store.tmp_root / dead_token)[0] / "half.safetensors").exists()
    live = Store(store.root)  # another live server on the same store: its job and temp files stay
    try:
        live_job = live.create_job(store.create_user()[0], "lora", {})
        assert live.claim_job(live_job)
        with live.temp_dir("upload-") as live_tmp:
            done = store.recover()
            assert live_tmp.is_dir()
            assert sorted(done["swept"]) == sorted([f"tmp/{dead_token}", f"adapters/{legacy.name}"])
            assert live.get_job(_owner(live, live_job), live_job)["status"] == "running"
        assert dead_job in done["failed_jobs"] and live_job not in done["failed_jobs"]
        assert f"adapters/{legacy.name}" in done["swept"] and not legacy.exists()
        job = store.get_job(alice, dead_job)
        assert job["status"] == "failed" and job["message"] == INTERRUPTED and "restarted" in job["message"]
        assert store.get_job(alice, queued)["status"] == "queued"  # the trainer requeues it
        assert [j["job_id"] for j in store.queued_jobs()] == [queued]
        leftovers = sorted(os.listdir(store.tmp_root))
        assert leftovers == sorted([store._temp_area().token, f"{store._temp_area().token}.lock",
                                    live._temp_area().token, f"{live._temp_area().token}.lock"])
        assert adapter_dirs(store) == [kept] and store.verified_adapter_path(alice, kept).is_dir()
    finally:
        live.close()
    # closed cleanly: no temp files left, but the job it was running is now interrupted too
    assert store.recover() == {"swept": [], "failed_jobs": [live_job]}
    assert sorted(os.listdir(store.tmp_root)) == sorted([store._temp_area().token, f"{store._temp_area().token}.lock"])


def _owner(store: Store, job_id: str) -> str:
    return store._conn().execute("SELECT user_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0]


def test_claim_job_runs_a_job_once(store):
    alice, _ = store.create_user()
    job = store.create_job(alice, "lora", {})
    assert store.claim_job(job, message="go") is True
    assert store.claim_job(job) is False  # queued twice, or taken by another server
    assert store.get_job(alice, job)["status"] == "running" and store.get_job(alice, job)["message"] == "go"
    assert "worker" not in store.get_job(alice, job)
    store.update_job(job, status="succeeded")
    assert store.claim_job(job) is False


def test_release_temp_keeps_the_folder_while_it_is_in_use(store):
    alice, _ = store.create_user()
    job = store.create_job(alice, "lora", {})
    assert store.claim_job(job)
    assert store.release_temp() is False  # a job claimed here still runs: its owner must stay alive
    store.update_job(job, status="succeeded")
    with store.temp_dir() as tmp:
        assert store.release_temp() is False and tmp.is_dir()
    assert store.release_temp() is True and os.listdir(store.tmp_root) == []
    with store.temp_dir() as tmp:  # a new folder on the next use
        assert tmp.is_dir()


def test_a_version_1_store_is_migrated(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    user, item, job = (f"{p}_{secrets.token_hex(16)}" for p in ("usr", "itm", "job"))
    with sqlite3.connect(root / "parsona.sqlite3") as conn:
        conn.executescript(_V1_SCHEMA)
        conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("INSERT INTO users VALUES (?, 0)", (user,))
        conn.execute("INSERT INTO history (item_id, user_id, text, kind, metadata, created_at)"
                     " VALUES (?, ?, 'héllo', 'note', '{\"a\": 1}', 0)", (item, user))
        conn.execute("INSERT INTO jobs VALUES (?, ?, 'lora', '{}', 'running', 0.5, '', 0, 0, NULL)", (job, user))
    with Store(root) as s:
        assert s._conn().execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert s.usage(user) == {"jobs": 1, "adapters": 0, "history_items": 1,
                                 "history_bytes": len("héllo".encode()) + len("note") + len('{"a": 1}')}
        assert s.recover()["failed_jobs"] == [job]  # a version-1 job records no owner: nobody is running it
        s.add_history(user, ["more"])
        assert s.usage(user)["history_items"] == 2


_V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE users (user_id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    created_at REAL NOT NULL);
CREATE TABLE history (seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    text TEXT NOT NULL, kind TEXT, metadata TEXT, created_at REAL NOT NULL);
CREATE INDEX history_user ON history(user_id, seq);
CREATE TABLE adapters (adapter_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    adapter_type TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL,
    size_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, status TEXT NOT NULL);
CREATE INDEX adapters_user ON adapters(user_id, created_at);
CREATE TABLE jobs (job_id TEXT PRIMARY KEY, user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    kind TEXT NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL, progress REAL NOT NULL, message TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    adapter_id TEXT REFERENCES adapters(adapter_id) ON DELETE SET NULL);
CREATE INDEX jobs_user ON jobs(user_id, created_at);
"""


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
        other = store.create_job(alice, "lora", {})
        with pytest.raises(ConfigError, match=next(iter(bad))):
            store.update_job(other, **bad)
        store.update_job(other, status="failed")  # under the jobs quota for the next round
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
        assert s._conn().execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_closed_store_refuses_use(tmp_path):
    s = Store(tmp_path / "store")
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.create_user()


def test_import_stays_light():
    code = "import sys, parsona.store; print('torch' in sys.modules, 'safetensors' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_rules_are_kept_per_user_replaced_whole_and_checked(tmp_path):
    with Store(tmp_path / "s") as store:
        alice, _ = store.create_user()
        bob, _ = store.create_user()
        assert store.get_rules(alice) is None
        store.put_rules(alice, ["Keep it short.", "  Sign off with 'Thanks,'.  "])
        assert store.get_rules(alice)["rules"] == ["Keep it short.", "Sign off with 'Thanks,'."]
        assert store.get_rules(alice)["source"] == "user" and store.get_rules(bob) is None
        store.put_rules(alice, ["Be brief."], source="mined")
        assert store.get_rules(alice)["rules"] == ["Be brief."] and store.get_rules(alice)["source"] == "mined"
        for bad, field in ((["x"] * 21, "rules"), (["a\nb"], "rules[0]"), ([""], "rules[0]"), ("text", "rules")):
            with pytest.raises(ConfigError) as err:
                store.put_rules(alice, bad)
            assert err.value.field == field
        assert store.get_rules(alice)["rules"] == ["Be brief."]
        with pytest.raises(NotFound):
            store.put_rules("usr_" + "0" * 32, ["x"])
    with Store(tmp_path / "s") as again:
        assert again.get_rules(alice)["rules"] == ["Be brief."]
