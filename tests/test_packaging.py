"""The built wheel holds every subpackage and imports without the source checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    return next(out.glob("parsona-*.whl"))


def source_packages() -> set[str]:
    """Every folder with an __init__.py, named as it installs."""
    names = set()
    for top, installed in [("parsona", "parsona"), ("adapters", "parsona/adapters"),
                           ("persona", "parsona/persona"), ("objectives", "parsona/objectives")]:
        for init in (ROOT / top).rglob("__init__.py"):
            names.add(f"{installed}/{init.parent.relative_to(ROOT / top).as_posix()}".rstrip("/."))
    return names


def test_wheel_contains_every_subpackage(wheel):
    inside = {Path(n).parent.as_posix() for n in zipfile.ZipFile(wheel).namelist() if n.endswith("/__init__.py")}
    assert source_packages() <= inside, sorted(source_packages() - inside)
    assert not any(n.startswith(("adapters/", "objectives/", "persona/")) for n in zipfile.ZipFile(wheel).namelist())


def test_installed_wheel_imports_without_the_checkout(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    # -S skips site.py, so the editable install's finder is not loaded; dependencies come from
    # this interpreter's site-packages, the package itself only from the unpacked wheel.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), sysconfig.get_paths()["purelib"]])}
    code = ("import parsona.adapters.preference_lora as p, parsona.objectives, parsona.persona; "
            "from parsona.adapters import names; print(p.__file__); print(names())")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(str(tmp_path / "site"))
    assert "preference_lora" in out.stdout
