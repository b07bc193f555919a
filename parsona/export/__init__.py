"""Exports: ``parsona.export.onnx`` (the graph, with every runtime input live and a KV cache; needs torch)
and ``parsona.export.runtime`` (``OnnxGenerator``: generation from an export with onnxruntime and numpy,
no torch). Nothing heavy is imported here, so the runtime loads where torch does not exist."""

from pathlib import Path as _Path


def refuse_non_empty(out, overwrite: bool) -> None:
    """An export goes into a new or empty directory; a full one only with ``overwrite`` (the CLI's --overwrite)."""
    from parsona.errors import ConfigError

    out = _Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError("out", "Export into a new or empty directory, or pass --overwrite.", problem=f"{out} is not empty")
