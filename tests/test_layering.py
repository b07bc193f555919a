"""The dependency rule of DESIGN.md §2, read from the source with ``ast``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = {"parsona.io", "parsona.devices", "parsona.errors", "parsona"}
ALLOWED = {
    "adapters": FOUNDATION | {"parsona.adapters"},
    "objectives": FOUNDATION | {"parsona.objectives"},
    "persona": FOUNDATION | {"parsona.persona", "parsona.objectives"},
}


def parsona_imports(path: Path) -> set[str]:
    """Absolute ``parsona...`` modules imported by one file (relative imports stay in the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "parsona"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "parsona":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if node.module == "parsona"}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_rule_allows(package):
    allowed = ALLOWED[package]
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in parsona_imports(path):
            if not any(module == a or module.startswith(a + ".") for a in allowed - {"parsona"}) and module != "parsona":
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from parsona.host import Host\nimport parsona.store\n")
    assert parsona_imports(bad) == {"parsona.host", "parsona.store"}


def test_import_parsona_is_lazy():
    code = "import sys, parsona; heavy = {'torch', 'transformers', 'fastapi'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
