"""ONNX export: a twin of the trained model built from plain ops, and a parity gate."""
