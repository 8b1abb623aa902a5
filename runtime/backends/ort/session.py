"""The one place ONNX Runtime sessions are made, so every figure (glimmer-run, glimmer-bench, the
export's checks and latency, the compression report) comes from a session set up the same way.

The settings are deployment's: all graph optimisations, sequential execution, one inter-op thread,
``threads`` intra-op threads (ONNX Runtime's default, one per physical core, when None), idle
worker threads that sleep instead of spinning (the pipeline's other stages need those cores while
inference waits; irrelevant at one thread, where there are no workers), and errors-only logging
(provider fallback notices are ours to report). ``simulate_qdq`` leaves Q/DQ unfused, evaluated in
float: what TensorRT computes up to rounding, and what ``int8_kernels = simulated`` selects
(backends/ort/int8.py).
"""

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from glimmer.runtime.backends.ort.int8 import DISABLE_QDQ
from glimmer.runtime.core.errors import GlimmerError

ProviderArg = Union[str, Tuple[str, Dict[str, Any]]]
ModelArg = Union[str, Path, bytes]
CPU = ("CPUExecutionProvider",)


def import_onnxruntime():
    """The onnxruntime module, or a GlimmerError that says how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise GlimmerError(
            "ONNX Runtime is not installed: pip install 'glimmer-edge[ort]' (CPU) or "
            "'glimmer-edge[ort-gpu]' (CUDA, not on a Jetson: there NVIDIA's onnxruntime-gpu "
            "wheel, see docs/install.md); or run an .engine with --backend tensorrt"
        ) from None
    return onnxruntime


def session_options(
    threads: Optional[int] = None,
    spin: bool = False,
    simulate_qdq: bool = False,
    optimized_model_path: Optional[Path] = None,
):
    """ONNX Runtime ``SessionOptions`` with deployment's settings (see the module's docstring);
    ``optimized_model_path`` makes ONNX Runtime write the graph it optimised there."""
    if threads is not None and threads < 1:
        raise GlimmerError(f"threads must be at least 1, got {threads}")
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if simulate_qdq:
        opts.add_session_config_entry(DISABLE_QDQ, "1")
    if optimized_model_path is not None:
        opts.optimized_model_filepath = str(optimized_model_path)
    opts.log_severity_level = 3
    return opts


def open_session(
    model: ModelArg, options, providers: Sequence[ProviderArg] = CPU, origin: Optional[str] = None
):
    """An ``InferenceSession`` of ``model`` (a path or serialized bytes) with ``options``; a model
    ONNX Runtime refuses is a GlimmerError naming ``origin`` (default: the path)."""
    ort = import_onnxruntime()
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers))
    except GlimmerError:
        raise
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        where = origin or ("the ONNX model" if isinstance(model, bytes) else str(model))
        raise GlimmerError(
            f"{where}: ONNX Runtime cannot load the model: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
        ) from None


def make_session(
    model: ModelArg,
    threads: Optional[int] = None,
    simulate_qdq: bool = False,
    providers: Sequence[ProviderArg] = CPU,
    spin: bool = False,
    optimized_model_path: Optional[Path] = None,
    origin: Optional[str] = None,
):
    """A session of ``model`` (path or bytes) set up as deployment sets it: :func:`session_options`
    then :func:`open_session`; the CPU execution provider unless ``providers`` says otherwise."""
    options = session_options(threads, spin, simulate_qdq, optimized_model_path)
    return open_session(model, options, providers, origin)
