"""ONNX Runtime: the session factory (session.py), the runner and the INT8 execution policy."""
