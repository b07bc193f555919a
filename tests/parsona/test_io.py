"""Atomic writes: a reader never sees half a file or half a directory."""

from __future__ import annotations

import pytest

from parsona.io import atomic_dir, atomic_file, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "one"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_file_keeps_the_old_content_on_failure(tmp_path):
    target = tmp_path / "f.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        with atomic_file(target) as f:
            f.write("{half")
            raise ValueError("boom")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_what_lands_has_the_permissions_open_and_mkdir_give(tmp_path):
    import os
    import stat

    old = os.umask(0o027)                  # not the default, so a hard-coded mode would show
    try:
        with open(tmp_path / "plain", "w"):
            pass
        (tmp_path / "plain_dir").mkdir()
        with atomic_file(tmp_path / "f") as f:
            f.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "inner").write_text("y")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)   # noqa: E731
    assert mode(tmp_path / "f") == mode(tmp_path / "plain") == 0o640
    assert mode(tmp_path / "d") == mode(tmp_path / "plain_dir") == 0o750
