"""Packages are found, not listed: every folder with an ``__init__.py`` under the four roots.

``pyproject.toml`` holds everything else. This file exists only because the three library folders
install under ``parsona.`` (``adapters/`` is ``parsona.adapters``), a renaming that
``[tool.setuptools.packages.find]`` cannot express; ``tests/test_packaging.py`` checks the wheel.
"""

from setuptools import find_packages, setup

ROOTS = {"parsona": "parsona", "parsona.adapters": "adapters", "parsona.persona": "persona",
         "parsona.objectives": "objectives"}


def packages() -> list[str]:
    return [f"{name}.{sub}".rstrip(".") for name, folder in ROOTS.items() for sub in ["", *find_packages(folder)]]


setup(packages=packages(), package_dir=ROOTS)
