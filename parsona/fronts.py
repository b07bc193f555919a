"""Keep and compare fronts: a FrontResult on disk and back, several methods scored on the same
data, and the mean ± sd of :func:`parsona.evaluate.compare` rows over seeds.

    save_front(result, "eval/pref.npz", settings=key)    # atomic; arrays and JSON, never pickle
    result = load_front("eval/pref.npz")                  # a bad file: ConfigError naming it
    results = evaluate_methods(model, tokenizer, {"pref": lambda: PreferenceLoRAPolicy(load_adapter(model, d)),
                                                  "soups": lambda: load_front_policy(model, soups_dir)},
                               pairs, ("helpful", "harmless"), simplex_grid(2, 10))
    by_seed = {s: {row["method"]: row for row in compare(fronts[s])} for s in seeds}
    stats = seed_means(by_seed, ["hypervolume"])           # {method: {"hypervolume": (mean, sd)}}

The file is one ``.npz``: each array field of the FrontResult under its own name (a ``None``
field is left out), ``method`` / ``objectives`` / ``n_labelled`` / ``seconds`` as small arrays,
``info`` as a JSON string and, optionally, the ``settings`` string the front was scored under. It
is the layout ``bench/front_quality.py`` has written since tracker issue 5, so its fronts still load.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from parsona.errors import ConfigError

# The FrontResult fields stored as arrays as they are; None ones are simply absent from the file.
ARRAY_FIELDS = ("preferences", "accuracy", "dpo_loss", "reference_point", "reward", "pair_correct", "prompt_reward")
OPTIONAL_FIELDS = ("reward", "pair_correct", "prompt_reward")


# -- one front on disk ------------------------------------------------------------------------

def save_front(result, path: str | Path, *, settings: str | None = None) -> Path:
    """Write ``result`` (a FrontResult) to ``path`` as .npz, atomically: a reader sees the old file or
    the new one. ``settings``: any string the caller keys the front by (see :func:`front_settings`)."""
    from parsona.io import atomic_file

    arrays = {name: _numeric(getattr(result, name), name) for name in ARRAY_FIELDS if getattr(result, name) is not None}
    arrays.update(method=np.asarray(result.method), objectives=np.asarray(result.objectives, dtype=str),
                  n_labelled=np.asarray(result.n_labelled, dtype=np.int64), seconds=np.asarray(float(result.seconds)),
                  info=np.asarray(json.dumps(result.info, default=_json_value)))
    if settings is not None:
        arrays["settings"] = np.asarray(settings)
    with atomic_file(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)
    return Path(path)


def load_front(path: str | Path):
    """The FrontResult saved at ``path``; a missing, truncated or foreign file is a ConfigError naming it."""
    from parsona.evaluate import FrontResult

    f = _read(path)
    try:
        return FrontResult(str(f["method"]), tuple(str(o) for o in f["objectives"]), f["preferences"], f["accuracy"],
                           f["dpo_loss"], [int(x) for x in f["n_labelled"]], f["reference_point"],
                           **{name: f.get(name) for name in OPTIONAL_FIELDS}, seconds=float(f["seconds"]),
                           info=json.loads(str(f["info"])) if "info" in f else {})   # files from before info was kept
    except (KeyError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def front_settings(path: str | Path) -> str | None:
    """The ``settings`` string ``path`` was saved with (None if it was saved without one)."""
    f = _read(path)
    return str(f["settings"]) if "settings" in f else None


def _numeric(value, name: str) -> np.ndarray:
    """An array np.load can read back without pickle: numbers, bools or strings, never objects."""
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise ConfigError(f"result.{name}", "Store numbers (NaN for missing values), not Python objects.",
                          problem=f"an object array of shape {array.shape} would need pickle")
    return array


def _json_value(value):
    """numpy scalars and arrays in ``info`` (a step count from a tensor, say) as plain JSON."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"info values must be JSON (numbers, strings, lists, dicts); got {type(value).__name__}")


def _read(path: str | Path) -> dict[str, np.ndarray]:
    """Every entry of the .npz at ``path``, read now, so that a damaged entry fails here with the path."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not a saved front")
        with archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError as exc:
        raise ConfigError(str(path), "Score the front first (save_front writes it).", problem="file is missing") from exc
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:   # truncated, bit rot, or another format
        raise _unreadable(path, exc) from exc


def _unreadable(path, exc: BaseException) -> ConfigError:
    return ConfigError(str(path), "Delete it and score the front again (save_front writes it atomically).",
                       problem=f"not a readable saved front ({type(exc).__name__}: {exc})")


# -- several methods on the same data ---------------------------------------------------------

def evaluate_methods(model, tokenizer, policies: Mapping[str, Callable[[], Any]], pairs, objectives: Sequence[str],
                     grid, *, grids: Mapping[str, Any] | None = None, max_length: int = 256, batch_size: int = 8,
                     reference_logps=None, on_result: Callable[[Any], None] | None = None, **kwargs) -> list:
    """Score each method's front on the same ``pairs``, in order, with one reference pass for all.

    ``policies`` maps a method's name to a function that builds its policy (attaching its adapter to
    ``model``). It is called when the method's turn comes and ``policy.adapter`` is detached as soon as
    it is scored, so only one adapter is ever attached: each front is the base model plus its own ΔW.
    π_ref is the base model for every method, so its log-probs are computed once (or pass
    ``reference_logps`` from :func:`parsona.evaluate.reference_logprobs`).

    ``grids`` gives a method its own grid instead of ``grid`` (a DPS grid policy is defined only at its
    grid points). ``on_result(result)`` runs after each method, e.g. to save it before the next starts.
    Other keywords (``beta``, ``reward_models``, ``reference_point``, ...) go to ``evaluate_front``.
    """
    from parsona.evaluate import evaluate_front, reference_logprobs

    results = []
    for method, build in policies.items():
        policy = build()
        try:
            if reference_logps is None:
                reference_logps = reference_logprobs(model, tokenizer, policy, pairs, max_length=max_length,
                                                     batch_size=batch_size)
            result = evaluate_front(model, tokenizer, policy, pairs, objectives, (grids or {}).get(method, grid),
                                    max_length=max_length, batch_size=batch_size, reference_logps=reference_logps,
                                    method=method, **kwargs)
        finally:
            policy.adapter.detach()
        if on_result is not None:
            on_result(result)
        results.append(result)
    return results


# -- several seeds ----------------------------------------------------------------------------

def seed_means(per_seed: Mapping[Any, Mapping[str, Mapping[str, Any]]],
               columns: Sequence[str]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{method: {column: (mean, sd)}}`` over seeds, from ``{seed: {method: row}}`` (a row: one of
    ``compare()``'s dicts, so ``{seed: {r["method"]: r for r in compare(results)}}``).

    Only methods present in every seed count, in the first seed's order. sd has ddof = 1 (the seeds
    are a sample of runs); with one seed it is NaN.
    """
    if not per_seed:
        raise ConfigError("per_seed", "Give each seed's rows, {seed: {method: row}}.", problem="no seeds")
    first, *_ = per_seed.values()
    methods = [m for m in first if all(m in rows for rows in per_seed.values())]
    out = {}
    for method in methods:
        out[method] = {}
        for column in columns:
            values = np.array([rows[method][column] for rows in per_seed.values()], dtype=float)
            sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            out[method][column] = (float(values.mean()), sd)
    return out
