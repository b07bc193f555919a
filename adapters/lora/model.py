"""A bank of per-user LoRAs on one base model; every row of a batch picks its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.io import atomic_dir

from ..base import Adapter, base_model_name
from ..peft_format import PEFT_CONFIG, LoRAWeights, read_peft_lora, write_peft_lora
from .config import LoRAConfig
from .layer import LoRABankLayer

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no ".": torch parameter names cannot hold it
DEFAULT = "default"
INPUT = "adapter"  # the runtime input: one LoRA name (or None) per row


class LoRA(Adapter):
    """Many LoRAs resident at once; ``adapter`` picks one per row (``None``: no LoRA).

    >>> bank = attach(model, LoRAConfig(rank=8))        # holds one trainable LoRA, "default"
    >>> bank.add("alice", "/path/to/peft_lora_dir")     # any standard PEFT LoRA directory
    >>> with bank.inputs(adapter=["alice", "default", None]):
    ...     logits = model(input_ids).logits

    ``adapter_names=`` (PEFT's keyword for the same thing) is accepted as well.
    """

    config: LoRAConfig
    layers: dict[str, LoRABankLayer]

    def __init__(self, model: nn.Module, config: LoRAConfig):
        super().__init__(model, config)
        self.weights_meta: dict[str, tuple[int, float, bool]] = {}  # name -> (rank, alpha, use_rslora)
        self.add(DEFAULT)

    def _make_layer(self, path: str, linear: nn.Linear) -> nn.Module:
        return LoRABankLayer(linear.in_features, linear.out_features, self.config.dropout)

    # -- the bank ---------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.weights_meta)

    def add(self, name: str, source: str | Path | LoRAWeights | None = None) -> None:
        """Add LoRA ``name``: fresh (trainable, ΔW = 0) if ``source`` is None, else from a PEFT dir."""
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError("name", "Use 1-64 letters, digits, '_' or '-', starting with a letter or digit.",
                              problem=f"got {name!r}")
        if name in self.weights_meta:
            raise ConfigError("name", "Remove it first, or pick another name.", problem=f"LoRA {name!r} is already loaded")
        if source is None:
            c = self.config
            for layer in self.layers.values():
                layer.add(name, c.rank, c.alpha / c.rank)
            self.weights_meta[name] = (c.rank, c.alpha, False)
        else:
            weights = source if isinstance(source, LoRAWeights) else read_peft_lora(source)
            unknown = sorted(set(weights.factors) - set(self.layers))
            if unknown:
                raise ConfigError("target_modules", f"Attach the bank with target_modules covering {unknown[0]}.",
                                  problem=f"the LoRA adapts {len(unknown)} module(s) this bank does not")
            for path, (A, B) in weights.factors.items():
                self._check_shape(path, A, B)
                self.layers[path].set(name, A.float(), B.float(), weights.scale)
            self.weights_meta[name] = (weights.rank, weights.alpha, weights.use_rslora)
        self._sync_names()

    def remove(self, name: str) -> None:
        self._require(name, "name")
        for layer in self.layers.values():
            layer.remove(name)
        del self.weights_meta[name]
        self._sync_names()

    def weights(self, name: str) -> LoRAWeights:
        self._require(name, "name")
        rank, alpha, rslora = self.weights_meta[name]
        factors = {p: (l.A[name], l.B[name]) for p, l in self.layers.items() if name in l.A}
        return LoRAWeights(rank, alpha, factors, rslora)

    def save_peft(self, name: str, out_dir: str | Path) -> Path:
        """Write LoRA ``name`` as a standard PEFT LoRA directory."""
        return write_peft_lora(self.weights(name), out_dir, list(self.layers), self.base_model or base_model_name(self.model))

    def _sync_names(self) -> None:
        for layer in self.layers.values():
            layer.names = self.names

    def _require(self, name: Any, field: str) -> None:
        if name not in self.weights_meta:
            raise ConfigError(field, "Load it first with adapter.add(name, peft_dir).", problem=f"unknown LoRA {name!r}")

    def _check_shape(self, path: str, A: torch.Tensor, B: torch.Tensor) -> None:
        layer = self.layers[path]
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != layer.d_in or B.shape[0] != layer.d_out or A.shape[0] != B.shape[1]:
            raise ConfigError(f"{path}: lora_A/lora_B", "Load a LoRA trained for this base model.",
                              problem=f"shapes {tuple(A.shape)}, {tuple(B.shape)} do not fit ({layer.d_out}, {layer.d_in})")

    # -- runtime inputs ---------------------------------------------------------------------
    def check_row(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            raise ConfigError(INPUT, "Name a LoRA: 1-64 letters, digits, '_' or '-'.", problem=f"got {value!r:.80}")
        return value

    def _prepare_inputs(self, adapter: Any = None, adapter_names: Any = None, **unknown: Any) -> dict[str, Any]:
        if unknown:
            raise ConfigError(", ".join(unknown), f"A LoRA bank takes only `{INPUT}`.", problem="unknown runtime input")
        if adapter is not None and adapter_names is not None:
            raise ConfigError(INPUT, f"Pass `{INPUT}` only (adapter_names is PEFT's name for the same thing).",
                              problem="got both adapter and adapter_names")
        given = adapter if adapter_names is None else adapter_names
        if isinstance(given, str):
            rows: tuple = (given,)  # one name for every row
        elif isinstance(given, Sequence) and len(given) > 0:
            rows = tuple(given)
        else:
            raise ConfigError(INPUT, "Pass one LoRA name per row (None for no LoRA), or one name for all rows.",
                              problem=f"got {given!r}")
        for name in rows:
            if name is not None:
                self._require(name, INPUT)
        slot = {n: i for i, n in enumerate(self.names, start=1)}
        index = torch.tensor([slot.get(n, 0) for n in rows], dtype=torch.long, device=self.device)
        present = tuple(n for n in dict.fromkeys(rows) if n is not None)
        uniform = present[0] if len(present) == 1 and None not in rows else None
        # worked out once per block here, not per Linear per decode step in the layers
        return {"lora_index": index, "lora_rows": rows, "lora_present": present, "lora_uniform": uniform}

    def _merge_inputs(self, adapter: Any = None, adapter_names: Any = None) -> dict[str, str]:
        if adapter is not None and adapter_names is not None:
            raise ConfigError(INPUT, f"Pass `{INPUT}` only.", problem="got both adapter and adapter_names")
        name = adapter if adapter_names is None else adapter_names
        self._require(name, INPUT)
        return {INPUT: name}

    def _delta_weight(self, layer: nn.Module, adapter: str) -> torch.Tensor:
        if adapter not in layer.A:
            return torch.zeros(layer.d_out, layer.d_in, device=layer._device())
        return (layer.B[adapter] @ layer.A[adapter]) * layer.scale[adapter]

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Rows cycle through every LoRA in the bank and "no LoRA"."""
        choices = [*self.names, None]
        return {INPUT: [choices[i % len(choices)] for i in range(batch_size)]}

    # -- files: PEFT's layout ("default" at the root, other LoRAs in sub-folders) -----------------
    def _write(self, directory: Path) -> None:
        if DEFAULT not in self.weights_meta:
            raise ConfigError("adapter", "PEFT's layout keeps the 'default' LoRA at the root; save each LoRA with "
                              "adapter.save_peft(name, dir) instead.", problem="the bank has no 'default' LoRA")
        for name in self.names:
            target = directory if name == DEFAULT else directory / name
            write_peft_lora(self.weights(name), target, list(self.layers), self.base_model or base_model_name(self.model))

    @classmethod
    def _read(cls, model: nn.Module, directory: Path, fields: dict[str, Any]) -> "LoRA":
        from .. import attach

        root = read_peft_lora(directory)
        suffixes = tuple(sorted({p.rsplit(".", 1)[-1] for p in root.factors}))
        bank = attach(model, LoRAConfig(rank=root.rank, alpha=root.alpha, target_modules=suffixes))
        bank.remove(DEFAULT)
        bank.add(DEFAULT, root)
        for sub in sorted(p for p in directory.iterdir() if (p / PEFT_CONFIG).is_file()):
            bank.add(sub.name, sub)
        return bank
