"""The Backend interface and its implementations (ONNX Runtime, TensorRT), and the factory that
picks one."""
