"""Torch-free batch scoring runtime: ONNX Runtime sessions and model inputs from Arrow tables.

Imports only numpy, pyarrow, polars, onnxruntime and ``recsys_moe.features`` (no torch)."""
