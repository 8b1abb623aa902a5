"""The one place TensorRT API generations 8.4 -> 11 are told apart, by feature detection.

Implements the version table in docs/tensorrt.md ("Builder API by version", "Execution API by
version"). Every branch asks ``hasattr`` what the installed bindings offer and
never parses ``trt.__version__``: JetPack 5 ships 8.4/8.5, JetPack 6.0 ships 8.6, JetPack 6.1+ 10.3,
desktops may have 11.x, and point releases move APIs. What changes between generations:

- network creation: the EXPLICIT_BATCH flag is required in 8.x, ignored in 10, gone in 11;
- workspace: ``set_memory_pool_limit`` (8.4+) instead of ``max_workspace_size`` (removed in 10);
- precision: FP16/INT8 builder flags in 8.x-10.x; 11.x is strongly typed (precision comes from the
  ONNX tensor types and Q/DQ nodes) and the flags and the implicit INT8 calibrator are gone;
- execution: the bindings API (``num_bindings``, ``execute_async_v2``) before 8.5, tensor names
  (``num_io_tensors``, ``set_tensor_address``, ``execute_async_v3``) from 8.5, only names from 10.

``import tensorrt`` happens lazily here, with an actionable message, so that the ONNX Runtime path
of the runtime never needs TensorRT installed. ``trt.nptype`` is never called: on 8.4 / 8.5.2 it
raises AttributeError with numpy 1.24-1.26 (its table names ``np.bool``; 1.24 is the newest numpy on
JetPack 5's Python 3.8), so TensorRT types are mapped to numpy by name here. Every ``trt.<name>``
and TensorRT attribute used in this package is checked against TensorRT 10.13's API stubs by
tests/runtime/backends/test_trt_api_conformance.py.
"""

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError

_INSTALL_HINT = (
    "on a Jetson TensorRT comes with JetPack (`sudo apt install python3-libnvinfer`, "
    "or the l4t-jetpack / l4t-tensorrt container); on x86 install NVIDIA's TensorRT "
    "wheels from pypi.nvidia.com; or run with --backend onnxruntime"
)


def import_tensorrt() -> Any:
    """Import the ``tensorrt`` bindings or raise GlimmerError saying how to get them."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise GlimmerError(f"TensorRT is not installed ({exc}); {_INSTALL_HINT}") from None
    except OSError as exc:  # bindings present but libnvinfer missing or mismatched
        raise GlimmerError(
            f"TensorRT's libraries cannot be loaded ({exc}); {_INSTALL_HINT}"
        ) from None
    if not (hasattr(trt, "Builder") and hasattr(trt, "Runtime")):
        # A folder named tensorrt without bindings (type stubs, a half-removed install) imports as
        # an empty namespace package; failing here beats an AttributeError at the first build.
        raise GlimmerError(
            f"TensorRT is not installed (found only {_describe_module(trt)}, without TensorRT's "
            f"bindings: type stubs or a broken install); {_INSTALL_HINT}"
        )
    return trt


def _describe_module(module: Any) -> str:
    where = list(getattr(module, "__path__", None) or [])
    if getattr(module, "__file__", None):
        where = [module.__file__]
    return "the package at " + ", ".join(str(w) for w in where) if where else repr(module)


def version(trt: Any) -> str:
    return str(getattr(trt, "__version__", "unknown"))


def make_logger(trt: Any, verbose: bool = False) -> Any:
    severity = trt.Logger.VERBOSE if verbose else trt.Logger.WARNING
    return trt.Logger(severity)


def _no_cuda(exc: BaseException, what: str) -> GlimmerError:
    """Why TensorRT could not start: a driver too old for CUDA, or no GPU at all.

    TensorRT logs the CUDA error but raises the same TypeError for both, so the CUDA binding is
    asked which one it is; a driver problem needs another fix (update it) than a missing GPU.
    """
    from glimmer.runtime.backends.trt import cuda as cuda_mem

    problem = cuda_mem.driver_problem()
    if problem:
        return GlimmerError(f"TensorRT could not create its {what} ({exc}): {problem}")
    return GlimmerError(
        f"no CUDA device: TensorRT could not create its {what} ({exc}); TensorRT needs "
        "an NVIDIA GPU and driver (in Docker: --runtime nvidia). Build engines on "
        "the target, or use --backend onnxruntime here"
    )


def _create(factory: Callable[[], Any], what: str) -> Any:
    # Without a usable GPU the bindings log "CUDA initialization failure with error: N" and
    # pybind11 raises "TypeError: pybind11::init(): factory function returned nullptr".
    try:
        obj = factory()
    except TypeError as exc:
        if "nullptr" in str(exc) or "CUDA" in str(exc):
            raise _no_cuda(exc, what) from None
        raise
    except RuntimeError as exc:
        raise _no_cuda(exc, what) from None
    if obj is None:
        raise _no_cuda(RuntimeError("factory returned None"), what)
    return obj


def create_builder(trt: Any, logger: Any) -> Any:
    return _create(lambda: trt.Builder(logger), "Builder")


def create_runtime(trt: Any, logger: Any) -> Any:
    return _create(lambda: trt.Runtime(logger), "Runtime")


# -- building -------------------------------------------------------------------------------------


def create_network(trt: Any, builder: Any) -> Tuple[Any, Dict[str, Any]]:
    """An explicit-batch network definition in every generation; returns it and what was set."""
    flag_enum = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if flag_enum is not None and hasattr(flag_enum, "EXPLICIT_BATCH"):
        # Required in 8.x (implicit batch is the default there); accepted and ignored in 10.x.
        flags = 1 << int(flag_enum.EXPLICIT_BATCH)
        return builder.create_network(flags), {"explicit_batch_flag": True}
    return builder.create_network(0), {"explicit_batch_flag": False}


def parse_onnx(trt: Any, network: Any, logger: Any, data: bytes, origin: str) -> Any:
    """Parse ONNX bytes into ``network``; every parser error is reported verbatim."""
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(data)
    errors = [str(parser.get_error(i)) for i in range(int(parser.num_errors))]
    if not ok or errors:
        detail = "; ".join(errors) if errors else "no error recorded"
        raise GlimmerError(f"{origin}: TensorRT's ONNX parser failed: {detail}")
    return parser


def set_workspace(trt: Any, config: Any, nbytes: int) -> str:
    """Cap the builder's scratch memory (a Jetson shares it with the CPU); returns the API used."""
    if hasattr(config, "set_memory_pool_limit") and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(nbytes))
        return "set_memory_pool_limit"
    config.max_workspace_size = int(nbytes)  # TensorRT < 8.4
    return "max_workspace_size"


def has_precision_flags(trt: Any) -> bool:
    """False on TensorRT 11+: strongly typed only, precision comes from the ONNX."""
    return hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")


def fast_fp16(builder: Any) -> bool:
    """TensorRT's own answer (False on Pascal GTX 10xx, sm_61, where FP16 runs at 1/64 rate)."""
    return bool(getattr(builder, "platform_has_fast_fp16", True))


def effective_precision(trt: Any, builder: Any, precision: str) -> Tuple[str, Optional[str]]:
    """(what the engine will really be, why it differs from ``precision`` or None).

    Where FP16 is set by a builder flag, a GPU without fast FP16 gets no flag (FP16 there only
    slows the engine down), so an ``fp16`` request builds FP32; the engine's name, key and sidecar
    must then say fp32. Strongly typed TensorRT (11+) takes the types from the ONNX as they are.
    """
    if precision == "fp16" and has_precision_flags(trt) and not fast_fp16(builder):
        return "fp32", (
            "this GPU has no fast FP16 (TensorRT's platform_has_fast_fp16 is False), so the "
            "engine is built FP32"
        )
    return precision, None


#: Jetsons with DLA cores, for the line said where there are none
_DLA_DEVICES = "Jetson AGX Xavier, Xavier NX, Orin NX and AGX Orin have DLA cores; Orin Nano and "
_DLA_DEVICES += "desktop GPUs have none"


def apply_dla(trt: Any, builder: Any, config: Any, core: int, precision: str) -> Dict[str, Any]:
    """Put the network on DLA core ``core``; layers the DLA cannot run fall back to the GPU.

    DLA runs FP16 and INT8 only, so an FP32 build is refused rather than left to fail inside
    TensorRT; a device without DLA (``num_DLA_cores`` 0) is said as such.
    """
    if not hasattr(trt, "DeviceType") or not hasattr(trt.BuilderFlag, "GPU_FALLBACK"):
        raise GlimmerError(f"--dla-core {core}: TensorRT {version(trt)} has no DLA support")
    cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
    if cores == 0:
        raise GlimmerError(
            f"--dla-core {core}: this device has no DLA (TensorRT's num_DLA_cores is 0; "
            f"{_DLA_DEVICES}); drop --dla-core"
        )
    if not 0 <= core < cores:
        raise GlimmerError(
            f"--dla-core {core}: this device has {cores} DLA core{'s' if cores > 1 else ''} "
            f"({', '.join(str(i) for i in range(cores))})"
        )
    if precision == "fp32":
        raise GlimmerError(
            f"--dla-core {core}: the DLA runs FP16 or INT8 only, not FP32; add --half, or use an "
            "INT8 model (NAME.int8.onnx)"
        )
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return {"dla_core": int(core), "dla_cores": cores, "gpu_fallback": True}


def set_runtime_dla_core(runtime: Any, core: int) -> None:
    """The DLA core a DLA engine runs on, set on the Runtime before it deserializes the engine."""
    runtime.DLA_core = int(core)


def supports_implicit_int8(trt: Any) -> bool:
    """The legacy calibrator path: 8.x-10.x only (removed in 11)."""
    return hasattr(trt, "IInt8EntropyCalibrator2") and has_precision_flags(trt)


def network_tensor_types(trt: Any, network: Any) -> Dict[str, bool]:
    """What the parsed network carries: FP16 tensors? Q/DQ layers? (decides strongly typed
    builds)."""
    half = getattr(trt.DataType, "HALF", None)
    qdq = {getattr(trt.LayerType, "QUANTIZE", None), getattr(trt.LayerType, "DEQUANTIZE", None)}
    qdq.discard(None)
    has_half = has_qdq = False
    for i in range(int(network.num_layers)):
        layer = network.get_layer(i)
        has_qdq = has_qdq or layer.type in qdq
        for j in range(int(layer.num_outputs)):
            has_half = has_half or layer.get_output(j).dtype == half
    return {"fp16_tensors": has_half, "qdq": has_qdq}


def apply_precision(
    trt: Any,
    builder: Any,
    config: Any,
    network: Any,
    precision: str,
    calibrator: Optional[Any],
    origin: str,
) -> Dict[str, Any]:
    """Set precision the way this generation wants it; returns the options for the sidecar."""
    types = network_tensor_types(trt, network)
    if not has_precision_flags(trt):
        if calibrator is not None:
            raise GlimmerError(
                f"TensorRT {version(trt)} removed implicit INT8 calibration: build the Q/DQ ONNX "
                "instead (glimmer-export CHECKPOINT --int8 --calib DIR writes "
                "NAME.int8.onnx)"
            )
        if precision == "fp16" and not types["fp16_tensors"]:
            raise GlimmerError(
                f"{origin}: TensorRT {version(trt)} is strongly typed, so FP16 must come "
                "from the ONNX's own types and this ONNX has no FP16 tensors; convert "
                "it (e.g. ModelOpt AutoCast) or build --precision fp32"
            )
        if precision == "int8" and not types["qdq"]:
            raise GlimmerError(
                f"{origin}: TensorRT {version(trt)} is strongly typed, so INT8 needs "
                "Q/DQ nodes in the ONNX; build NAME.int8.onnx from glimmer-export --int8"
            )
        return {"flags": [], "typing": "strong", **types}
    flags: List[str] = []
    if precision == "fp16" and not fast_fp16(builder):
        # build_engine asks effective_precision first; an FP32 engine must never be labelled fp16.
        raise GlimmerError(
            f"{origin}: this GPU has no fast FP16 (TensorRT's platform_has_fast_fp16 is False); "
            "build --precision fp32 (or int8)"
        )
    if precision in ("fp16", "int8") and fast_fp16(builder):
        # Pascal (GTX 1080) runs FP16 at 1/64 rate: INT8 there falls back to FP32, not FP16.
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if precision == "int8":
        if calibrator is None and not types["qdq"]:
            raise GlimmerError(
                f"{origin}: INT8 needs either Q/DQ nodes in the ONNX (glimmer-export "
                "--int8 writes NAME.int8.onnx) or a calibrator (--calib DIR)"
            )
        config.set_flag(trt.BuilderFlag.INT8)
        flags.append("INT8")
        if calibrator is not None:
            config.int8_calibrator = calibrator
    return {"flags": flags, "typing": "weak", "calibrator": calibrator is not None, **types}


def add_batch_profile(
    trt: Any,
    builder: Any,
    config: Any,
    network: Any,
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    calib_batch: Optional[int] = None,
) -> Dict[str, Dict[str, List[int]]]:
    """One optimisation profile over the batch dimension of every dynamic input.

    With an implicit INT8 calibrator, a second profile fixed at ``calib_batch`` becomes the
    calibration profile: TensorRT calibrates at a profile's OPT shape, and one large batch gives
    better entropy histograms than the runtime profile's batch of 1.
    """
    shapes: Dict[str, Dict[str, List[int]]] = {}
    profile = None
    for i in range(int(network.num_inputs)):
        tensor = network.get_input(i)
        dims = [int(d) for d in tensor.shape]
        if any(d < 0 for d in dims[1:]):
            raise GlimmerError(
                f"input {tensor.name!r} has dynamic non-batch dimensions {dims}; "
                "export with a fixed image size"
            )
        if dims[0] >= 0:
            shapes[tensor.name] = {k: dims for k in ("min", "opt", "max")}
            continue
        profile = profile or builder.create_optimization_profile()
        triple = [[b] + dims[1:] for b in (min_batch, opt_batch, max_batch)]
        profile.set_shape(tensor.name, *triple)
        shapes[tensor.name] = dict(zip(("min", "opt", "max"), triple))
    if profile is not None:
        config.add_optimization_profile(profile)
        # Implicit calibration of a dynamic network needs a profile of its own (8.x-10.x).
        if getattr(config, "int8_calibrator", None) is not None and hasattr(
            config, "set_calibration_profile"
        ):
            calibration = profile
            if calib_batch:
                calibration = builder.create_optimization_profile()
                for name, triple in shapes.items():
                    if triple["min"] != triple["max"]:  # a dynamic input
                        calibration.set_shape(name, *([[calib_batch] + triple["opt"][1:]] * 3))
                shapes["calibration"] = {"batch": [calib_batch]}
            config.set_calibration_profile(calibration)
    return shapes


def load_timing_cache(config: Any, data: bytes) -> bool:
    """Attach a timing cache (``data`` may be empty); False when the bytes were not used.

    ``ignore_mismatch=False``: TensorRT then refuses a cache whose header names another GPU, which
    would otherwise feed that GPU's timings into this build; we start an empty one instead.
    """
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(bytes(data))
        except (RuntimeError, TypeError, ValueError):
            cache = None
        if cache is not None and config.set_timing_cache(cache, False) is not False:
            return True
    config.set_timing_cache(config.create_timing_cache(b""), False)
    return False


def timing_cache_bytes(config: Any) -> bytes:
    cache = config.get_timing_cache()
    return bytes(memoryview(cache.serialize())) if cache is not None else b""


def build_serialized(builder: Any, network: Any, config: Any, origin: str) -> bytes:
    """``build_serialized_network`` (8.0+; ``build_engine`` is gone in 10) -> plan bytes."""
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise GlimmerError(
            f"{origin}: TensorRT could not build an engine (see its log lines above)"
        )
    return bytes(memoryview(plan))


def describe_network_io(trt: Any, network: Any) -> Dict[str, List[Dict[str, Any]]]:
    def spec(tensor: Any) -> Dict[str, Any]:
        return {
            "name": tensor.name,
            "shape": [int(d) for d in tensor.shape],
            "dtype": numpy_dtype(trt, tensor.dtype).name,
        }

    return {
        "inputs": [spec(network.get_input(i)) for i in range(int(network.num_inputs))],
        "outputs": [spec(network.get_output(i)) for i in range(int(network.num_outputs))],
    }


# -- execution ------------------------------------------------------------------------------------

#: trt.DataType member name -> numpy; BF16, FP8, INT4, FP4 have no numpy type
_DTYPE_NAMES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


def numpy_dtype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a ``trt.DataType``, by member name.

    Not ``trt.nptype``: on 8.4 / 8.5.2 it raises AttributeError with numpy 1.24-1.26 (``np.bool``)
    and elsewhere TypeError for types numpy lacks.
    """
    name = str(getattr(dtype, "name", dtype)).split(".")[-1].upper()
    if name not in _DTYPE_NAMES:
        raise GlimmerError(
            f"TensorRT tensor type {name} has no numpy equivalent; build the engine with "
            "float32, float16, int8, int32, int64, bool or uint8 inputs and outputs"
        )
    return np.dtype(_DTYPE_NAMES[name])


@dataclass
class IOTensor:
    """An engine input or output; ``shape`` has -1 for dynamic dimensions."""

    name: str
    is_input: bool
    shape: Tuple[int, ...]
    dtype: np.dtype
    index: int
    max_shape: Tuple[int, ...]


def deserialize(trt: Any, runtime: Any, plan: bytes, origin: str) -> Any:
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise GlimmerError(
            f"{origin}: TensorRT {version(trt)} could not deserialize this engine (built by "
            "another TensorRT version or for another GPU, or damaged); rebuild it on "
            "this device from its ONNX"
        )
    return engine


def uses_tensor_names(engine: Any) -> bool:
    """The name-based API (8.5+); the bindings API before."""
    return hasattr(engine, "num_io_tensors")


def io_tensors(trt: Any, engine: Any) -> List[IOTensor]:
    """Inputs and outputs of profile 0 in engine order, from whichever API this version has."""
    tensors = []
    if uses_tensor_names(engine):
        for i in range(int(engine.num_io_tensors)):
            name = engine.get_tensor_name(i)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            max_shape = shape
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[2])
            tensors.append(
                IOTensor(
                    name,
                    is_input,
                    shape,
                    numpy_dtype(trt, engine.get_tensor_dtype(name)),
                    i,
                    max_shape,
                )
            )
    else:
        for i in range(int(engine.num_bindings)):
            is_input = bool(engine.binding_is_input(i))
            shape = tuple(int(d) for d in engine.get_binding_shape(i))
            max_shape = shape
            if is_input and any(d < 0 for d in shape):
                max_shape = tuple(int(d) for d in engine.get_profile_shape(0, i)[2])
            tensors.append(
                IOTensor(
                    engine.get_binding_name(i),
                    is_input,
                    shape,
                    numpy_dtype(trt, engine.get_binding_dtype(i)),
                    i,
                    max_shape,
                )
            )
    return tensors


class Execution:
    """Binds buffers and enqueues one inference on an execution context, per API generation."""

    api = "?"

    def __init__(self, context: Any, tensors: Sequence[IOTensor]) -> None:
        self.context = context
        self.tensors = list(tensors)

    def set_input_shape(self, tensor: IOTensor, shape: Sequence[int]) -> None:
        raise NotImplementedError

    def output_shape(self, tensor: IOTensor) -> Tuple[int, ...]:
        raise NotImplementedError

    def bind(self, tensor: IOTensor, ptr: int) -> None:
        raise NotImplementedError

    def enqueue(self, stream: int) -> bool:
        """Queue one inference on ``stream``; False when TensorRT refuses."""
        raise NotImplementedError


class NamedExecution(Execution):
    """TensorRT 8.5+: tensors addressed by name, ``execute_async_v3``."""

    api = "tensor names (execute_async_v3)"

    def set_input_shape(self, tensor: IOTensor, shape: Sequence[int]) -> None:
        if not self.context.set_input_shape(tensor.name, tuple(int(d) for d in shape)):
            raise GlimmerError(f"engine rejects input shape {list(shape)} for {tensor.name!r}")

    def output_shape(self, tensor: IOTensor) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.context.get_tensor_shape(tensor.name))

    def bind(self, tensor: IOTensor, ptr: int) -> None:
        if self.context.set_tensor_address(tensor.name, int(ptr)) is False:
            raise GlimmerError(f"engine rejects the buffer address for {tensor.name!r}")

    def enqueue(self, stream: int) -> bool:
        return bool(self.context.execute_async_v3(stream))


class BindingsExecution(Execution):
    """TensorRT 8.0-8.4: a list of device pointers by binding index, ``execute_async_v2``."""

    api = "bindings (execute_async_v2)"

    def __init__(self, context: Any, tensors: Sequence[IOTensor]) -> None:
        super().__init__(context, tensors)
        self._bindings = [0] * (max(t.index for t in self.tensors) + 1)

    def set_input_shape(self, tensor: IOTensor, shape: Sequence[int]) -> None:
        if not self.context.set_binding_shape(tensor.index, tuple(int(d) for d in shape)):
            raise GlimmerError(f"engine rejects input shape {list(shape)} for {tensor.name!r}")

    def output_shape(self, tensor: IOTensor) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.context.get_binding_shape(tensor.index))

    def bind(self, tensor: IOTensor, ptr: int) -> None:
        self._bindings[tensor.index] = int(ptr)

    def enqueue(self, stream: int) -> bool:
        return bool(self.context.execute_async_v2(bindings=self._bindings, stream_handle=stream))


def make_execution(engine: Any, context: Any, tensors: Sequence[IOTensor]) -> Execution:
    cls = NamedExecution if uses_tensor_names(engine) else BindingsExecution
    return cls(context, tensors)
