"""Exports: ``parsona.export.onnx`` (the graph, with every runtime input live and a KV cache; needs torch)
and ``parsona.export.runtime`` (``OnnxGenerator``: generation from an export with onnxruntime and numpy,
no torch). Nothing is imported here, so the runtime loads where torch does not exist."""
