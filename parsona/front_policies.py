"""Front policies: "a model conditioned on λ", whatever method produced it.

Every method compared on a trade-off front turns a preference λ (m,) into weights of one base
model. The simplest common path, exact for all of them, is to merge ΔW(λ) into W0:

    with policy.at(λ):          # W = W0 + ΔW(λ) in every adapted Linear
        model(...)              # any batch size, generate() included
    with policy.reference():    # W = W0 (the adapter disabled): DPO's reference model
        model(...)

Where the method's adapter takes the preference per row, ``policy.row_inputs(grid)`` gives the
adapter inputs that make row k of one batch the policy at λ_k (None where only merging can), so a
whole grid is scored in one forward (``parsona.evaluate``).

Implementations:

* :class:`PreferenceLoRAPolicy`: Panacea, ΔW(λ) = scaling · U diag(σ, s·λ) Vᵀ (one adapter).
* :class:`RewardedSoupsPolicy`: one LoRA per objective in a LoRA bank (Ramé et al. 2023,
  arXiv 2306.04488), combined per λ by ``mode``:
    "linear"  interpolate the LoRA parameters, θ(λ) = Σ λ_i θ_i (the paper's weight soup):
              A = Σ λ_i A_i, B = Σ λ_i s_i B_i (equal ranks needed). ΔW is NOT Σ λ_i ΔW_i: the
              cross terms λ_i λ_j s_i B_i A_j remain, which is what makes it a soup. (PEFT's
              add_weighted_adapter "linear" differs again: it puts √(λ_i s_i) on both factors,
              so two equal LoRAs at λ = (½, ½) give 2 ΔW, not ΔW.)
    "cat"     the exact mixture of updates ΔW(λ) = Σ λ_i s_i B_i A_i: A = [A_1; A_2; ...],
              B = [λ_1 s_1 B_1, λ_2 s_2 B_2, ...] (PEFT's "cat").
* :class:`GridPolicy`: one LoRA per grid preference (DPS / MODPO-style); defined only there.

:func:`load_front_policy` reads the policy a baselines run wrote (``front.json`` + its LoRAs).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from parsona.errors import ConfigError

SOUP = "rewarded-soup"          # name of the temporary combined LoRA inside the bank
GRID_ATOL = 1e-6                # "exact" match of a grid preference, after float round-trips
MODES = ("linear", "cat")
FRONT_FILE = "front.json"       # what a baselines run writes beside its LoRAs: which LoRA is which


@runtime_checkable
class FrontPolicy(Protocol):
    """A model conditioned on λ: ``at(λ)`` makes the base model behave as the policy at λ."""

    n_objectives: int

    def at(self, preference: Sequence[float]) -> contextlib.AbstractContextManager: ...

    def reference(self) -> contextlib.AbstractContextManager: ...

    def row_inputs(self, grid: np.ndarray) -> dict | None: ...


def check_preference(preference, m: int) -> tuple[float, ...]:
    """λ as a tuple of m floats on the simplex, or a ConfigError (field ``preference``)."""
    from parsona.objectives import PreferenceVector

    lam = preference.detach().cpu().tolist() if isinstance(preference, torch.Tensor) else preference
    return PreferenceVector(np.asarray(lam, dtype=np.float64), n_objectives=m).values


class MergingPolicy:
    """Shared plumbing: ``at`` = ``merge`` then ``unmerge``; subclasses write the two."""

    n_objectives: int

    def merge(self, preference) -> None:
        raise NotImplementedError

    def unmerge(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def at(self, preference) -> Iterator[None]:
        self.merge(preference)
        try:
            yield
        finally:
            self.unmerge()

    def reference(self) -> contextlib.AbstractContextManager:
        return self.adapter.disabled()  # type: ignore[attr-defined]

    def row_inputs(self, grid: np.ndarray) -> dict | None:
        """The adapter's runtime inputs for K rows, row k at grid[k] (K, m); None: merge per λ instead."""
        return None


class PreferenceLoRAPolicy(MergingPolicy):
    """Panacea: one preference LoRA; at λ its ΔW(λ) is merged into the base weights."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.n_objectives = adapter.config.n_objectives

    def merge(self, preference) -> None:
        self.adapter.merge(preference=list(check_preference(preference, self.n_objectives)))

    def unmerge(self) -> None:
        self.adapter.unmerge()

    def row_inputs(self, grid: np.ndarray) -> dict:
        rows = [check_preference(lam, self.n_objectives) for lam in grid]
        return {"preference": torch.tensor(rows, dtype=torch.float32, device=self.adapter.device)}   # (K, m)


class RewardedSoupsPolicy(MergingPolicy):
    """Rewarded Soups over the bank's LoRAs ``names`` (one per objective, in objective order)."""

    def __init__(self, bank, names: Sequence[str], mode: str = "linear"):
        if mode not in MODES:
            raise ConfigError("mode", f"Use one of {MODES}.", problem=f"got {mode!r}")
        names = tuple(names)
        if len(names) < 2:
            raise ConfigError("names", "Give one LoRA per objective (2 or more).", problem=f"got {names}")
        for name in names:
            if name not in bank.names:
                raise ConfigError("names", f"Add it to the bank first (bank.add); it holds {bank.names}.",
                                  problem=f"unknown LoRA {name!r}")
        ranks = [bank.weights(n).rank for n in names]
        if mode == "linear" and len(set(ranks)) > 1:
            raise ConfigError("mode", 'Interpolating A and B needs equal ranks; use mode="cat".',
                              problem=f"ranks {ranks}")
        self.adapter, self.names, self.mode = bank, names, mode
        self.n_objectives = len(names)

    def combined(self, preference):
        """The soup at λ as one LoRAWeights with scale 1 (alpha = rank), ΔW = B A per path."""
        from parsona.adapters.peft_format import LoRAWeights

        lam = check_preference(preference, self.n_objectives)
        loras = [self.adapter.weights(n) for n in self.names]
        factors = {}
        for path in sorted(set().union(*(w.factors for w in loras))):
            parts = [self._factors(w, path) for w in loras]                     # [(A_i (r_i, d_in), s_i B_i (d_out, r_i))]
            if self.mode == "linear":
                A = sum(l * a for l, (a, _) in zip(lam, parts))                  # (r, d_in)
                B = sum(l * b for l, (_, b) in zip(lam, parts))                  # (d_out, r)
            else:
                A = torch.cat([a for a, _ in parts], dim=0)                      # (Σr, d_in)
                B = torch.cat([l * b for l, (_, b) in zip(lam, parts)], dim=1)   # (d_out, Σr)
            factors[path] = (A.detach(), B.detach())
        rank = next(iter(factors.values()))[0].shape[0]
        return LoRAWeights(rank=rank, alpha=float(rank), factors=factors)

    def _factors(self, w, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        if path in w.factors:
            A, B = w.factors[path]
            return A.float(), B.float() * w.scale
        # A LoRA that leaves this Linear alone contributes zeros of its own rank.
        layer = self.adapter.layers[path]
        return torch.zeros(w.rank, layer.d_in), torch.zeros(layer.d_out, w.rank)

    def merge(self, preference) -> None:
        weights = self.combined(preference)
        self.adapter.add(SOUP, weights)
        try:
            self.adapter.merge(adapter=SOUP)
        except BaseException:
            self.adapter.remove(SOUP)
            raise

    def unmerge(self) -> None:
        if SOUP in self.adapter.names:
            self.adapter.unmerge()
            self.adapter.remove(SOUP)


class GridPolicy(MergingPolicy):
    """One LoRA per grid preference, ``{λ tuple: LoRA name}``; asking for another λ is an error."""

    def __init__(self, bank, grid: Mapping[tuple[float, ...], str]):
        if not grid:
            raise ConfigError("grid", "Map each grid preference to the LoRA trained for it.", problem="empty")
        keys = [tuple(float(x) for x in k) for k in grid]
        m = len(keys[0])
        for key, name in zip(keys, grid.values()):
            check_preference(key, m)
            if name not in bank.names:
                raise ConfigError("grid", f"Add it to the bank first (bank.add); it holds {bank.names}.",
                                  problem=f"unknown LoRA {name!r}")
        self.adapter, self.grid, self.n_objectives = bank, dict(zip(keys, grid.values())), m

    def name_at(self, preference) -> str:
        lam = np.asarray(check_preference(preference, self.n_objectives))
        for key, name in self.grid.items():
            if np.abs(np.asarray(key) - lam).max() <= GRID_ATOL:
                return name
        raise ConfigError("preference", f"Evaluate a grid policy only at its grid points {sorted(self.grid)}.",
                          problem=f"no LoRA was trained for {tuple(round(x, 6) for x in lam)}")

    def merge(self, preference) -> None:
        self.adapter.merge(adapter=self.name_at(preference))

    def row_inputs(self, grid: np.ndarray) -> dict:
        return {"adapter": [self.name_at(lam) for lam in grid]}            # the bank picks a LoRA per row

    def unmerge(self) -> None:
        self.adapter.unmerge()


def load_front_policy(model, directory: str | Path, mode: str = "linear"):
    """The policy a baseline run wrote: RewardedSoupsPolicy(mode) or GridPolicy, on a fresh LoRA bank."""
    from parsona.adapters import LoRAConfig, attach

    directory = Path(directory)
    if not (directory / FRONT_FILE).is_file():
        raise ConfigError(str(directory / FRONT_FILE), "Point to output_dir/<method> of a finished baselines run.",
                          problem="file is missing")
    front = json.loads((directory / FRONT_FILE).read_text())
    bank = attach(model, LoRAConfig(**{k: front["config"][k] for k in ("rank", "alpha")}))
    bank.remove("default")
    for lora in front["loras"]:
        bank.add(lora["name"], directory / lora["name"])
    if front["method"] == "rewarded_soups":
        return RewardedSoupsPolicy(bank, [lora["name"] for lora in front["loras"]], mode=mode)
    return GridPolicy(bank, {tuple(lora["preference"]): lora["name"] for lora in front["loras"]})
