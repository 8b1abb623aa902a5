"""TensorRT: the runner, the engine builder and cache, version adapters, CUDA memory."""
