"""Smaller variants of an ONNX export, written beside ``model.onnx``: same inputs, outputs and metadata.

    fp16   every float32 weight and activation as float16 (onnxruntime.transformers' converter), graph inputs
           and outputs kept float32 (``keep_io_types``), so the runtime feeds it exactly as the float32 one
    int8   weight-only quantization (onnxruntime.quantization's MatMulNBits, 8 bits, blocks of 32): the base's
           MatMul weights as int8; the adapters' factors, activations, inputs, outputs and the cache float32

The preference and every other runtime input stay live inputs in both (tested). Their parity with the
float32 graph is measured, not assumed: ``bench/onnx_export.py --variants fp16,int8`` prints it on SmolLM2.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Callable, Sequence

from parsona.errors import ConfigError

SCOPES = "pkg.torch.onnx.name_scopes"


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def adapter_nodes(model) -> list[str]:
    """Names of the nodes traced inside an adapter's layer. ``attach`` adds each layer to the module it adapts
    under its type's registered name, so a node whose module scopes (the exporter's ``pkg.torch.onnx.name_scopes``)
    pass through a module of that name is adapter math, whatever the type. A graph without the scopes
    (another exporter) has none found, and says so."""
    from parsona.adapters import names as adapter_types

    types, names, scoped = set(adapter_types()), [], False
    for node in model.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        if SCOPES not in meta:
            continue
        scoped = True
        if any(scope.rsplit(".", 1)[-1] in types for scope in ast.literal_eval(meta[SCOPES])[:-1]):   # [-1]: the op
            names.append(node.name)
    if not scoped:
        warnings.warn("the graph has no module scopes: every MatMul weight is quantized, adapters' too", stacklevel=2)
    return names


def _int8(src: Path, dst: Path) -> None:
    """Weight-only: the base's MatMul weights as symmetric int8 in blocks of 32 (MatMulNBits), the
    graph's activations float32. Adapter factors stay float32, as QLoRA keeps its LoRA in 16 bits over a
    4-bit base: they are a few percent of the bytes, and quantizing them moved the tiny model's argmax
    at 3 % of the tokens. Dynamic int8 (activations quantized too) broke SmolLM2: max |Δlogit| 15.4 and no
    greedy decode kept, per channel or not, an outlier-activation model's known failure; this keeps 0.5."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")   # one INFO line per MatMul
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        # accuracy_level 4: the CPU kernel multiplies in int8 (0.61× fp32's decode step on SmolLM2, where the
        # default float path took 5×), at max |Δlogit| 1.2 instead of 0.5
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8, accuracy_level=4)
        model = onnx.load(str(src))
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4,
                                         nodes_to_exclude=adapter_nodes(model), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        quiet.setLevel(level)


VARIANTS: dict[str, Callable[[Path, Path], None]] = {"fp16": _fp16, "int8": _int8}


def file_name(variant: str) -> str:
    return f"model.{variant}.onnx"


def check_variants(variants: Sequence[str]) -> list[str]:
    """``variants`` as a list of known names (each once), or a ConfigError naming ``variants``."""
    unknown = [] if isinstance(variants, str) else [v for v in variants if v not in VARIANTS]
    if unknown or isinstance(variants, str):
        raise ConfigError("variants", f"Choose from {sorted(VARIANTS)}, e.g. --variants fp16,int8.",
                          problem=f"got {unknown[0] if unknown else variants!r}")
    return list(dict.fromkeys(variants))


def write_variants(directory: Path, variants: Sequence[str], source: str = "model.onnx") -> dict[str, str]:
    """Write each variant of ``directory / source`` beside it; return {variant: file name}."""
    written = {}
    for v in check_variants(variants):
        VARIANTS[v](directory / source, directory / file_name(v))
        written[v] = file_name(v)
    return written
