"""ONNX Runtime: the runner (one session factory) and the INT8 execution policy."""
