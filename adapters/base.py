"""The adapter contract: configs, the ``Adapter`` base class, and ``attach`` / ``save`` / ``load``.

An adapter never replaces a module of the base model. It adds one child module (named after its
type, e.g. ``q_proj.preference_lora``) to every adapted ``nn.Linear`` and one forward hook that
passes the child the Linear's input and output; the child returns output + its delta (the add
fused into its last GEMM). So the base model's parameter names never change, and when several
types adapt the same Linear their per-row deltas simply add up:

    h = W0 x + Σ_types Δ_type(x, row)

A type adapts ``nn.Linear`` layers by default (``target_modules``); it may target other modules
instead, such as the input embeddings (override ``_targets``, e.g. with :func:`input_embedding`):
the hook is the same, the layer gets the module's input and output.

Runtime inputs (a preference vector per row, a user's LoRA per row) are batch values set with
``with adapter.inputs(...)``; the hooks read them at call time, which also lets ``torch.onnx``
trace them as graph inputs. Each type declares them at registration (``RuntimeInput``), checks one
row's value (``check_row``) and stacks a batch of rows (``stack_rows``), so the host, the HTTP API
and the exporter handle every type the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from parsona.errors import ConfigError
from parsona.simplex import exporting

from .registry import RuntimeInput, get, names

FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter.safetensors"

# All attention and MLP projections of Llama-family models (SmolLM2, Llama, Qwen2, Mistral).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class AdapterConfig:
    """Base of every adapter config: a dataclass whose fields all have defaults.

    Subclasses validate in ``__post_init__`` and raise :class:`ConfigError` naming the field.
    """

    adapter_type: ClassVar[str] = ""

    @staticmethod
    def checked_targets(targets: Any) -> tuple[str, ...]:
        """``target_modules`` as a sorted tuple of names (their order means nothing)."""
        targets = (targets,) if isinstance(targets, str) else tuple(targets or ())
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError("target_modules", "List Linear layer names, e.g. ['q_proj', 'v_proj'].",
                              problem=f"got {targets!r}")
        return tuple(sorted(set(targets)))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, fields: dict[str, Any], source: str = "config") -> "AdapterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        for key in sorted(set(fields) - known):
            warnings.warn(f"{source}: ignoring unknown {cls.__name__} field {key!r}", stacklevel=2)
        return cls(**{k: v for k, v in fields.items() if k in known})


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class Adapter:
    """One attached adapter of one type. Subclasses supply the per-Linear layer and the math.

    Subclass hooks:
      ``_make_layer(name, module) -> nn.Module``   one adapted module's layer: ``layer(x, out, **inputs)``
                                                   returns ``out + Δ(x)`` per row
      ``_targets(model)``                          the (path, module) pairs to adapt (default: Linears
                                                   named by ``config.target_modules``)
      ``_prepare_inputs(**values) -> dict``        validate runtime inputs (B is the first dim)
      ``check_row(name, value)``, ``stack_rows(name, rows)``  one row's value; a batch from rows
      ``_merge_inputs(**single)``, ``_delta_weight(layer, **checked) -> Tensor``  check once, then ΔW
                                                   (d_out, d_in) per layer for ``merge``
      ``example_inputs(batch_size, generator)``    valid per-row inputs (tests, ONNX export)
      ``prompt_prefix(name, value) -> list[int]``  token ids the host puts before the prompt of a row
                                                   that gives input ``name`` (default none: a soft-token
                                                   type marks where its tokens go, as VLMs mark images)
      ``reserved_ids() -> set[int]``               ids such a row's own prompt may not carry (default none)
      ``example_input_ids(input_ids, config)``     (classmethod) ids as the host would send them for rows
                                                   with every input given (tests; default: unchanged)

    ``mergeable = False`` says a type cannot fold into the weights (``merge`` is then an error and
    the conformance suite skips its merge test).

    A layer may keep values derived from one ``inputs()`` block (e.g. each row's weights for a
    whole ``generate``); it then defines ``release_cache()``, called when the outermost block ends.
    """

    adapter_type: ClassVar[str] = ""
    runtime_inputs: ClassVar[tuple[RuntimeInput, ...]] = ()
    mergeable: ClassVar[bool] = True

    def __init__(self, model: nn.Module, config: AdapterConfig):
        self.model = model
        self.config = config
        self.layers: dict[str, nn.Module] = {}  # module path -> delta module
        self._inputs: dict[str, Any] | None = None
        self._handles: list[Any] = []
        self._merged: dict[str, Any] | None = None
        self._disabled = False
        self.base_model: str | None = None  # the base it was trained on, as recorded in its saved config
        for path, module in self._targets(model):
            layer = self._make_layer(path, module).to(device=next(module.parameters()).device)
            module.add_module(self.adapter_type, layer)
            self.layers[path] = layer
        self._install_hooks()

    def _targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return find_linears(model, self.config.target_modules, field="target_modules")

    # -- one row's conditioning ---------------------------------------------------------------
    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.runtime_inputs)

    def check_row(self, name: str, value: Any) -> Any:
        """One row's value of runtime input ``name`` (never None), checked and in the form
        :meth:`stack_rows` takes; a bad value is a ConfigError naming ``name``."""
        return value

    def stack_rows(self, name: str, rows: list[Any]) -> Any:
        """The batch value of runtime input ``name`` from its rows' checked values (None: a row this
        type does not condition). Tensors stack to (B, ...); anything else stays a list of rows."""
        if rows and all(isinstance(r, torch.Tensor) for r in rows):
            return torch.stack(rows)
        return list(rows)

    def prompt_prefix(self, name: str, value: Any) -> list[int]:
        """Token ids to put before the prompt of a row whose input ``name`` is ``value`` (checked)."""
        return []

    def reserved_ids(self) -> set[int]:
        """Token ids the prompt of a row this type conditions may not carry itself (its placeholders)."""
        return set()

    @classmethod
    def example_input_ids(cls, input_ids: torch.Tensor, config: AdapterConfig) -> torch.Tensor:
        """(B, T) ``input_ids`` as the host sends them for rows that give every input of this type."""
        return input_ids

    # -- runtime inputs ---------------------------------------------------------------------
    @contextlib.contextmanager
    def inputs(self, **values: Any) -> Iterator["Adapter"]:
        """Set per-row runtime inputs for the forward passes inside the block (nests)."""
        if self._merged is not None:
            raise RuntimeError(f"{self.adapter_type} is merged; call unmerge() before passing per-row inputs")
        previous, self._inputs = self._inputs, self._prepare_inputs(**values)
        try:
            yield self
        finally:
            self._inputs = previous
            if previous is None:  # the outermost block ended: its batch's cached values are garbage now
                for layer in self.layers.values():
                    if hasattr(layer, "release_cache"):
                        layer.release_cache()

    @contextlib.contextmanager
    def disabled(self) -> Iterator["Adapter"]:
        """Run the base model inside the block (e.g. DPO's reference pass: same weights, no copy)."""
        if self._merged is not None:
            raise RuntimeError(f"{self.adapter_type} is merged; call unmerge() before disabling it")
        previous, self._disabled = self._disabled, True
        try:
            yield self
        finally:
            self._disabled = previous

    def _install_hooks(self) -> None:
        for path, layer in self.layers.items():
            self._handles.append(self.model.get_submodule(path).register_forward_hook(self._hook(layer)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, layer: nn.Module):
        def add_delta(linear: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if self._merged is not None or self._disabled:
                return output
            if self._inputs is None:
                raise RuntimeError(
                    f"{self.adapter_type} adapter needs runtime inputs: call the model inside "
                    f"`with adapter.inputs({', '.join(f'{n}=...' for n in self.input_names)}):`"
                )
            return layer(args[0], output, **self._inputs)

        return add_delta

    # -- merge ------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, **single: Any) -> None:
        """Write ΔW for one fixed runtime input into the base weights (forward = unmerged forward)."""
        if not self.mergeable:
            raise ConfigError("merge", "Pass its runtime inputs per row with adapter.inputs(...) instead.",
                              problem=f"a {self.adapter_type} adapter cannot be folded into the weights")
        if self._merged is not None:
            raise RuntimeError(f"{self.adapter_type} is already merged; call unmerge() first")
        single = self._merge_inputs(**single)  # checked once here, not once per layer
        for path, layer in self.layers.items():
            linear = self.model.get_submodule(path)
            linear.weight += self._delta_weight(layer, **single).to(linear.weight.dtype)
        self._merged = single
        self._remove_hooks()  # a merged model runs exactly the base model's code: no hook calls at all

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract what :meth:`merge` added."""
        if self._merged is None:
            return
        for path, layer in self.layers.items():
            linear = self.model.get_submodule(path)
            linear.weight -= self._delta_weight(layer, **self._merged).to(linear.weight.dtype)
        self._merged = None
        self._install_hooks()

    def _merge_inputs(self, **single: Any) -> dict[str, Any]:
        """``merge``'s one value per runtime input, checked (subclasses); ``_delta_weight`` trusts it."""
        return single

    @property
    def device(self) -> torch.device:
        """Where the base model's weights live (runtime inputs are moved there once per ``inputs``)."""
        return next(self.model.parameters()).device

    @property
    def merged(self) -> bool:
        return self._merged is not None

    # -- state ------------------------------------------------------------------------------
    def parameters(self) -> Iterator[nn.Parameter]:
        for layer in self.layers.values():
            yield from layer.parameters()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapter tensors only, named as in ``model.state_dict()`` (``<path>.<adapter_type>.<name>``)."""
        return {
            f"{path}.{self.adapter_type}.{name}": tensor
            for path, layer in self.layers.items()
            for name, tensor in layer.state_dict().items()
        }

    def load_state_dict(self, tensors: dict[str, torch.Tensor], source: str = "state dict") -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ConfigError(source, "Save the adapter again with save_adapter().", problem=f"missing tensors {missing[:3]}")
        for key in sorted(set(tensors) - set(expected)):
            warnings.warn(f"{source}: ignoring unexpected tensor {key!r}", stacklevel=2)
        with torch.no_grad():
            for key, target in expected.items():
                value = tensors[key]
                if value.shape != target.shape:
                    raise ConfigError(source, "Attach the adapter to the model it was trained on.",
                                      problem=f"{key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
                target.copy_(value)

    def detach(self) -> nn.Module:
        """Remove every hook and delta module: the model is the base model again."""
        self.unmerge()
        self._remove_hooks()
        for path in self.layers:
            delattr(self.model.get_submodule(path), self.adapter_type)
        self.layers = {}
        if not attached_types(self.model):
            unfreeze_base(self.model)  # the last adapter is gone: the base trains as it did before attach
        return self.model

    # -- files ------------------------------------------------------------------------------
    def _write(self, directory: Path) -> None:
        """Write the Parsona format: ``adapter_config.json`` and ``adapter.safetensors``."""
        from safetensors.torch import save_file

        header = {"adapter_type": self.adapter_type, "format_version": FORMAT_VERSION,
                  "parsona_version": _parsona_version()}
        base = self.base_model or base_model_name(self.model)
        if base:  # PEFT's key, so every tool finds the base model the same way
            header["base_model_name_or_path"] = base
        header["base_model_shape"] = model_shape(self.model)
        (directory / CONFIG_FILE).write_text(json.dumps({**header, **self.config.to_dict()}, indent=2) + "\n")
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"adapter_type": self.adapter_type})

    @classmethod
    def _read(cls, model: nn.Module, directory: Path, fields: dict[str, Any]) -> "Adapter":
        from safetensors.torch import load_file

        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ConfigError(str(weights), "Save the adapter again with save_adapter().", problem="file is missing")
        config = get(cls.adapter_type).config_cls.from_dict(fields, source=str(directory / CONFIG_FILE))
        adapter = attach(model, config)
        adapter.load_state_dict(load_file(str(weights)), source=str(weights))
        return adapter


def _parsona_version() -> str:
    try:
        return importlib.metadata.version("parsona")
    except importlib.metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def base_model_name(model: nn.Module) -> str | None:
    """The base model's public name (a hub id or the directory it was loaded from), or None.

    ``load_base_model`` sets it (never to a private cache path); a model built in memory has none.
    """
    return getattr(model, "name_or_path", None) or None


def input_embedding(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(path, module)]`` of the model's input embedding, for a type that adapts the input tokens'
    vectors (its layer gets input_ids and the embeddings (B, T, d))."""
    embedding = model.get_input_embeddings()
    return [next((p, m) for p, m in model.named_modules() if m is embedding)]


def plain_inference() -> bool:
    """No autograd recording and no tracing. Only then may a layer reuse per-batch values across
    forwards (one ``inputs()`` block's decode steps) and write into the Linear's output in place:
    gradients must reach the parameters, and a traced graph (ONNX export) must keep the runtime
    inputs as graph inputs rather than constants."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def add_product(out: torch.Tensor, z: torch.Tensor, weight_t: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """``out + alpha · z @ weight_t`` over the last dim: the LoRA up-projection and the add to the
    Linear's output in one GEMM (in place at plain inference). out (..., d_out), z (..., r), weight_t (r, d_out)."""
    if exporting():   # torch.export (ONNX): a MatMul and an Add, the scale folded into the constant weight;
        return out + z @ (weight_t * alpha if alpha != 1 else weight_t)   # the 2-D GEMM costs 3 Reshapes more
    z2 = z.reshape(-1, z.shape[-1])
    if plain_inference() and out.is_contiguous():
        out.view(-1, out.shape[-1]).addmm_(z2, weight_t, alpha=alpha)
        return out
    return torch.addmm(out.reshape(-1, out.shape[-1]), z2, weight_t, alpha=alpha).view(out.shape)


def find_linears(model: nn.Module, targets: tuple[str, ...] | list[str], field: str) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` modules whose name is a target or ends with ``.<target>`` (PEFT's rule)."""
    found, matched = [], set()
    for path, module in model.named_modules():
        hit = next((t for t in targets if path == t or path.endswith("." + t)), None)
        if hit is None:
            continue
        if not isinstance(module, nn.Linear):
            raise ConfigError(field, "Target only nn.Linear modules.", problem=f"{path} is a {type(module).__name__}")
        found.append((path, module))
        matched.add(hit)
    if not found or len(matched) < len(set(targets)):
        linear_names = sorted({p.rsplit(".", 1)[-1] for p, m in model.named_modules() if isinstance(m, nn.Linear)})
        unmatched = sorted(set(targets) - matched)
        raise ConfigError(field, f"Choose from this model's Linear layers: {linear_names}.",
                          problem=f"no Linear module matches {unmatched}")
    return found


def attach(model: nn.Module, config: AdapterConfig) -> Adapter:
    """Attach a new adapter described by ``config`` to ``model`` (in place) and return it."""
    if not isinstance(config, AdapterConfig):
        raise ConfigError("config", "Pass an adapter config such as PreferenceLoRAConfig().",
                          problem=f"got {type(config).__name__}")
    kind = get(config.adapter_type)
    for module in model.modules():
        if hasattr(module, kind.name) and isinstance(getattr(module, kind.name), nn.Module):
            raise ConfigError("model", "Detach the existing adapter first (adapter.detach()).",
                              problem=f"a {kind.name} adapter is already attached")
    adapter = kind.adapter_cls(model, config)
    freeze_base(model)
    return adapter


def adapter_parameters(model: nn.Module) -> set[int]:
    """ids of every parameter that belongs to an attached adapter (the children named after a type)."""
    return {id(p) for layer in _adapter_layers(model) for p in layer.parameters()}


def _adapter_layers(model: nn.Module) -> list[nn.Module]:
    types = names()
    return [child for module in model.modules() for t in types
            if isinstance(child := getattr(module, t, None), nn.Module) and t in module._modules]


def attached_types(model: nn.Module) -> set[str]:
    return {t for module in model.modules() for t in names() if isinstance(module._modules.get(t), nn.Module)}


def freeze_base(model: nn.Module) -> None:
    """PEFT's rule: once an adapter is attached only adapter parameters train, so an optimizer over
    the ``requires_grad`` parameters never updates the base model. What each base parameter was is
    kept, so that detaching the last adapter gives the model back as it was."""
    ours = adapter_parameters(model)
    saved = model.__dict__.setdefault("_parsona_requires_grad", {})
    for name, param in model.named_parameters():
        if id(param) not in ours:
            saved.setdefault(name, param.requires_grad)
            param.requires_grad_(False)


def unfreeze_base(model: nn.Module) -> None:
    saved = model.__dict__.pop("_parsona_requires_grad", {})
    for name, param in model.named_parameters():
        if name in saved:
            param.requires_grad_(saved[name])


def model_shape(model: nn.Module) -> dict[str, Any]:
    """What must match for an adapter to fit a base model (names may differ for the same model)."""
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    return {k: getattr(config, k) for k in keys if isinstance(getattr(config, k, None), (int, str))}
