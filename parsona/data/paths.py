"""Where the shared evaluation data lives, and the stable train/eval split used with it.

The data is never copied into the repo: readers open files under :func:`data_dir` read-only.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from parsona.errors import ConfigError

ENV_VAR = "PARSONA_DATA"
SPLITS = ("train", "eval")


def _candidates() -> list[Path]:
    """Default places to look, most likely first."""
    repo_root = Path(__file__).resolve().parents[2]  # parsona/data/paths.py -> repo root
    return [
        repo_root.parent / "shared" / "data",  # the usual layout: <work>/main beside <work>/shared
        repo_root / "shared" / "data",  # a checkout that carries shared/ inside it
    ]


def data_dir() -> Path:
    """The data root: ``$PARSONA_DATA`` if set, else ``shared/data`` beside the repo checkout.

    Raises ConfigError saying where it looked when no directory is found.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_dir():
            raise ConfigError(
                ENV_VAR,
                f"point {ENV_VAR} at the folder that holds hh-rlhf/, opinionqa-groups/, ...",
                problem=f"{path} is not a directory",
            )
        return path
    for path in _candidates():
        if path.is_dir():
            return path
    looked = ", ".join(str(p) for p in _candidates())
    raise ConfigError(
        ENV_VAR,
        f"set {ENV_VAR}=/path/to/shared/data (the folder that holds hh-rlhf/, opinionqa-groups/, ...)",
        problem=f"no data directory found (looked in {looked})",
    )


def data_file(*parts: str) -> Path:
    """A file under :func:`data_dir`; a missing file is a ConfigError naming it."""
    path = data_dir().joinpath(*parts)
    if not path.is_file():
        raise ConfigError(
            str(path),
            f"check that {ENV_VAR} (or the default shared/data) holds the full data set",
            problem="file not found",
        )
    return path


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank line of a .jsonl or .jsonl.gz file.

    A line that is not a JSON object raises ConfigError naming the file and line number.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # read-only: never touches shared data
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise row_error(path, lineno, f"invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise row_error(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def row_error(path: Path, lineno: int, problem: str) -> ConfigError:
    """The error for one bad row: names the file and line so it can be found and fixed."""
    return ConfigError(f"{path}:{lineno}", "fix or remove that row, or point PARSONA_DATA at a clean copy", problem=problem)


def require(row: dict[str, Any], types: dict[str, type | tuple[type, ...]], path: Path, lineno: int) -> None:
    """Check that ``row`` has each key with a value of the given type, else raise :func:`row_error`."""
    for key, typ in types.items():
        if key not in row:
            raise row_error(path, lineno, f"missing key {key!r}")
        if not isinstance(row[key], typ) or (typ is int and isinstance(row[key], bool)):
            raise row_error(path, lineno, f"{key!r} has type {type(row[key]).__name__}")


def split_of(key: str, eval_fraction: float = 0.1) -> str:
    """``"eval"`` or ``"train"`` for ``key`` (usually a prompt), the same on every run and machine.

    The first 8 bytes of sha256(key as UTF-8), read big-endian and divided by 2**64, give a
    number u in [0, 1); the key is in eval when u < eval_fraction. Python's ``hash()`` is salted
    per process, so it is not used. Pairs that share a prompt land on the same side, which keeps
    a prompt from leaking from train into eval.
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ConfigError("eval_fraction", "pass a fraction between 0 and 1", problem=f"got {eval_fraction}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "eval" if u < eval_fraction else "train"
