"""The dependency rule of DESIGN.md §2, read from the source with ``ast``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# parsona.simplex: the one simplex check, which both adapters and objectives need (its docstring says why)
FOUNDATION = {"parsona.io", "parsona.devices", "parsona.errors", "parsona.simplex"}
ALLOWED = {
    "adapters": FOUNDATION | {"parsona.adapters"},
    "objectives": FOUNDATION | {"parsona.objectives"},
    "persona": FOUNDATION | {"parsona.persona", "parsona.objectives"},
}
INSTALLED = {"parsona": "parsona", "adapters": "parsona.adapters", "objectives": "parsona.objectives",
             "persona": "parsona.persona"}   # source folder -> the package it installs as
# Only the command line may wire recipes in: the libraries and the host never import a recipe.
RECIPE_IMPORTERS = ("parsona/cli.py", "parsona/serve/cli.py", "parsona/recipes/")


def module_name(path: Path) -> str:
    """``adapters/lora/model.py`` -> ``parsona.adapters.lora.model`` (``__init__.py``: the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join((INSTALLED[parts[0]], *parts[1:]))
    return name.removesuffix(".__init__")


def parsona_imports(path: Path, resolve_relative: bool = False) -> set[str]:
    """Absolute ``parsona...`` modules imported by one file, lazy imports in functions included.

    ``from parsona import x`` counts as ``parsona`` and ``parsona.x``. Relative imports are skipped
    (they stay in the package), or with ``resolve_relative`` turned into absolute names (a relative
    import can still leave a subpackage: ``from ..recipes import x`` in ``parsona/serve/``).
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "parsona"}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                if not resolve_relative:
                    continue
                package = module_name(path).split(".")[: None if path.name == "__init__.py" else -1]
                base = package[: len(package) - (node.level - 1)]          # level 1: this package
                module = ".".join(base + ([module] if module else []))
            if module.split(".")[0] == "parsona":
                found.add(module)
                found |= {f"{module}.{a.name}" for a in node.names if module == "parsona" or not node.module}
    return found


def is_under(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_rule_allows(package):
    bad = [f"{path.relative_to(ROOT)} imports {module}"
           for path in sorted((ROOT / package).rglob("*.py")) for module in sorted(parsona_imports(path))
           if module != "parsona" and not is_under(module, ALLOWED[package])]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_libraries_never_import_the_parsona_package_itself(package):
    # `import parsona` / `from parsona import x` loads parsona/__init__.py, the host's package: a way
    # round the rule above (e.g. reading parsona.__version__; importlib.metadata.version does that)
    bad = [f"{path.relative_to(ROOT)} imports parsona" for path in sorted((ROOT / package).rglob("*.py"))
           if "parsona" in parsona_imports(path)]
    assert not bad, "\n".join(bad)


def test_foundation_imports_only_the_foundation():
    bad = [f"{module} imports {imported}" for module in sorted(FOUNDATION)
           for imported in sorted(parsona_imports(ROOT / (module.replace(".", "/") + ".py")))
           if not is_under(imported, FOUNDATION)]
    assert not bad, "\n".join(bad)


def test_only_the_command_line_imports_recipes():
    bad = [f"{path.relative_to(ROOT)} imports {module}"
           for path in sorted((ROOT / "parsona").rglob("*.py"))
           if not path.relative_to(ROOT).as_posix().startswith(RECIPE_IMPORTERS)
           for module in sorted(parsona_imports(path, resolve_relative=True)) if is_under(module, {"parsona.recipes"})]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from parsona.host import Host\nimport parsona.store\n")
    assert parsona_imports(bad) == {"parsona.host", "parsona.store"}


def test_the_checker_sees_recipe_and_bare_imports(monkeypatch, tmp_path):
    # a file placed as parsona/serve/x.py: a lazy, a relative and a bare import are all seen
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = tmp_path / "parsona" / "serve" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("def f():\n    from ..recipes.train_user_lora import run\n    import parsona\n")
    assert parsona_imports(bad, resolve_relative=True) == {"parsona.recipes.train_user_lora", "parsona"}
    assert parsona_imports(bad) == {"parsona"}
    (tmp_path / "from_parsona.py").write_text("from parsona import recipes\n")
    assert parsona_imports(tmp_path / "from_parsona.py") == {"parsona", "parsona.recipes"}


def test_import_parsona_is_lazy():
    code = "import sys, parsona; heavy = {'torch', 'transformers', 'fastapi'} & set(sys.modules); print(sorted(heavy))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
