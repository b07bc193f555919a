"""Smaller variants of an ONNX export, written beside ``model.onnx``: same inputs, outputs and metadata.

    fp16   every float32 weight and activation as float16 (onnxruntime.transformers' converter), graph inputs
           and outputs kept float32 (``keep_io_types``), so the runtime feeds it exactly as the float32 one
    int8   dynamic quantization (onnxruntime.quantization): MatMul/Gemm weights as int8, activations quantized
           per run; inputs, outputs and the cache stay float32

The preference and every other runtime input stay live inputs in both (tested). Their parity with the
float32 graph is measured, not assumed: ``bench/onnx_export.py --variants fp16,int8`` prints it on SmolLM2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from parsona.errors import ConfigError


def _fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _int8(src: Path, dst: Path) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the quantizer logs a "run pre-processing" hint on the root logger on every call: shape inference
    # gains nothing on a graph torch.export already typed. Quiet for the call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)


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
