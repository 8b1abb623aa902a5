"""A small fake of the ``tensorrt`` module per API generation, and a fake CUDA runtime.

Real TensorRT cannot be installed on the build machines (docs/tensorrt.md, last section), so the
TensorRT code is tested against this fake. It mimics the *surface* each generation offers and, just
as important, what each one lacks (an attribute that is gone raises AttributeError, as in the real
bindings): 8.4 (bindings API only, EXPLICIT_BATCH required), 8.6 (bindings and tensor names),
10.3 (names only, no max_workspace_size, EXPLICIT_BATCH ignored) and 11.4 (strongly typed: no FP16 /
INT8 flags, no calibrator, no EXPLICIT_BATCH). Its "engine" computes a simple, known function of its
input, reading and writing the device buffers it was bound to, so tests can check our buffer
bookkeeping numerically. It proves nothing about real engines.

:class:`FakeCudaRuntime` mimics cuda-python's runtime module (every call returns an error code
first). Its "device" memory is host memory from ctypes, so copies really move bytes; stream capture
records work and graph launches replay it, as CUDA does.
"""

import ctypes
import enum
import json
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

#: the surface features a generation may have; each one below lists those it has, and lacks the rest
FEATURES = (
    "explicit_flag",
    "explicit_required",
    "max_workspace",
    "precision_flags",
    "calibrator",
    "names_api",
    "bindings_api",
    "legacy_build",
    "strongly_typed_flag",
    "opt_level",
)
_HAS = {
    "8.4": (
        "8.4.1.5",
        {
            "explicit_flag",
            "explicit_required",
            "max_workspace",
            "precision_flags",
            "calibrator",
            "bindings_api",
            "legacy_build",
        },
    ),
    "8.6": (
        "8.6.2.3",
        {
            "explicit_flag",
            "explicit_required",
            "max_workspace",
            "precision_flags",
            "calibrator",
            "names_api",
            "bindings_api",
            "legacy_build",
            "opt_level",
        },
    ),
    "10.3": (
        "10.3.0.30",
        {
            "explicit_flag",
            "precision_flags",
            "calibrator",
            "names_api",
            "strongly_typed_flag",
            "opt_level",
        },
    ),
    "11.4": ("11.4.1.2", {"names_api", "strongly_typed_flag", "opt_level"}),
}
GENERATIONS = {
    generation: dict(version=version, **{f: f in has for f in FEATURES})
    for generation, (version, has) in _HAS.items()
}
PLAN_MAGIC = b"FAKETRT\0"


# ================================================================ fake CUDA runtime (cuda-python)


class cudaError_t(enum.IntEnum):  # noqa: N801 - the name cuda-python uses
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


_OK = cudaError_t.cudaSuccess


class FakeCudaRuntime:
    """cuda-python's ``runtime`` module surface, over host memory."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(
        self, devices: int = 1, name: str = "Orin (fake)", cc: Tuple[int, int] = (8, 7)
    ) -> None:
        self.devices = devices
        self.name = name
        self.cc = cc
        self.allocs: Dict[int, Any] = {}  # ptr -> ctypes buffer (host and "device" alike)
        self.kinds: Dict[int, str] = {}
        self.streams: Dict[int, Dict[str, Any]] = {}
        self.graphs: Dict[int, List[Callable[[], None]]] = {}
        self.execs: Dict[int, List[Callable[[], None]]] = {}
        self.counts: Dict[str, int] = {}
        self._next = 0x1000

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _handle(self) -> int:
        self._next += 0x10
        return self._next

    # -- device queries ---------------------------------------------------------------------
    def cudaGetDeviceCount(self):  # noqa: N802 - cuda-python's names
        if not self.devices:
            return (cudaError_t.cudaErrorNoDevice, 0)
        return (_OK, self.devices)

    def cudaSetDevice(self, device):  # noqa: N802
        return (_OK,) if device < self.devices else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        props = types.SimpleNamespace(
            name=self.name.encode() + b"\0" * 8, major=self.cc[0], minor=self.cc[1]
        )
        return (_OK, props)

    def cudaGetErrorString(self, err):  # noqa: N802
        return (_OK, f"fake CUDA error {cudaError_t(err).name}".encode())

    # -- memory ------------------------------------------------------------------------------
    def _alloc(self, size: int, kind: str):
        buf = (ctypes.c_byte * size)()
        ptr = ctypes.addressof(buf)
        self.allocs[ptr] = buf
        self.kinds[ptr] = kind
        return (_OK, ptr)

    def cudaMallocHost(self, size):  # noqa: N802
        return self._alloc(size, "host")

    def cudaMalloc(self, size):  # noqa: N802
        return self._alloc(size, "device")

    def _free(self, ptr, kind):
        if self.kinds.get(int(ptr)) != kind:
            return (cudaError_t.cudaErrorInvalidValue,)
        del self.allocs[int(ptr)], self.kinds[int(ptr)]
        return (_OK,)

    def cudaFree(self, ptr):  # noqa: N802
        return self._free(ptr, "device")

    def cudaFreeHost(self, ptr):  # noqa: N802
        return self._free(ptr, "host")

    def region(self, ptr: int, nbytes: int, kind: Optional[str] = None) -> bool:
        """Is [ptr, ptr + nbytes) inside one live allocation (of ``kind``)?"""
        for base, buf in self.allocs.items():
            if base <= ptr and ptr + nbytes <= base + ctypes.sizeof(buf):
                return kind is None or self.kinds[base] == kind
        return False

    def view(self, ptr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        assert self.region(ptr, nbytes, "device"), f"{ptr:#x}+{nbytes} is not device memory"
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        return np.frombuffer(raw, np.uint8).view(dtype).reshape(shape)

    # -- streams, copies, graphs ---------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        handle = self._handle()
        self.streams[handle] = {"capturing": False, "recorded": [], "invalid": False}
        return (_OK, handle)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self.streams.pop(int(stream))
        return (_OK,)

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it while the stream is being captured."""
        state = self.streams[int(stream)]
        if state["capturing"]:
            state["recorded"].append(work)
        else:
            work()

    def capturing(self, stream: int) -> bool:
        return self.streams[int(stream)]["capturing"]

    def invalidate(self, stream: int) -> None:
        self.streams[int(stream)]["invalid"] = True

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        to_device = kind == cudaMemcpyKind.cudaMemcpyHostToDevice
        src_kind, dst_kind = ("host", "device") if to_device else ("device", "host")
        if not (self.region(src, count, src_kind) and self.region(dst, count, dst_kind)):
            return (cudaError_t.cudaErrorInvalidValue,)
        self._count("h2d" if to_device else "d2h")
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, count))
        return (_OK,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        if self.capturing(stream):
            return (cudaError_t.cudaErrorStreamCaptureInvalidated,)
        self._count("sync")
        return (_OK,)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.streams[int(stream)].update(capturing=True, recorded=[], invalid=False)
        return (_OK,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        state = self.streams[int(stream)]
        state["capturing"] = False
        if state["invalid"]:
            return (cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        handle = self._handle()
        self.graphs[handle] = list(state["recorded"])
        return (_OK, handle)

    def cudaGraphInstantiateWithFlags(self, graph, flags):  # noqa: N802
        handle = self._handle()
        self.execs[handle] = self.graphs[int(graph)]
        return (_OK, handle)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        self.graphs.pop(int(graph))
        return (_OK,)

    def cudaGraphExecDestroy(self, graph_exec):  # noqa: N802
        self.execs.pop(int(graph_exec))
        return (_OK,)

    def cudaGraphLaunch(self, graph_exec, stream):  # noqa: N802
        self._count("graph_launch")
        for work in self.execs[int(graph_exec)]:
            self.enqueue(stream, work)
        return (_OK,)


def install_fake_cuda(monkeypatch, rt: FakeCudaRuntime, layout: str = "bindings") -> None:
    """Make ``from cuda.bindings import runtime`` (or the older ``from cuda import cudart``) give
    ``rt``."""
    cuda_pkg = types.ModuleType("cuda")
    if layout == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = rt
        cuda_pkg.bindings = bindings
        modules = {"cuda": cuda_pkg, "cuda.bindings": bindings, "cuda.bindings.runtime": rt}
    else:
        cuda_pkg.cudart = rt
        modules = {
            "cuda": cuda_pkg,
            "cuda.bindings": None,
            "cuda.bindings.runtime": None,
            "cuda.cudart": rt,
        }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("GLIMMER_CUDA", "cuda-python")


# ================================================================ fake tensorrt


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"


_ONNX_TYPES = {
    1: DataType.FLOAT,
    10: DataType.HALF,
    3: DataType.INT8,
    6: DataType.INT32,
    7: DataType.INT64,
    9: DataType.BOOL,
}


def nptype(dtype: DataType):
    return np.dtype(dtype.value).type


class LayerType(enum.Enum):
    CONVOLUTION = 1
    POOLING = 2
    SHUFFLE = 3
    QUANTIZE = 4
    DEQUANTIZE = 5
    CAST = 6
    ELEMENTWISE = 7


_LAYER_TYPES = {
    "Conv": LayerType.CONVOLUTION,
    "GlobalAveragePool": LayerType.POOLING,
    "Flatten": LayerType.SHUFFLE,
    "QuantizeLinear": LayerType.QUANTIZE,
    "DequantizeLinear": LayerType.DEQUANTIZE,
    "Cast": LayerType.CAST,
}
SUPPORTED_OPS = set(_LAYER_TYPES) | {"Relu", "Add", "Mul", "Clip"}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Tensor:
    def __init__(self, name: str, shape, dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Layer:
    def __init__(self, kind: LayerType, outputs: List[Tensor]) -> None:
        self.type = kind
        self._outputs = outputs
        self.num_outputs = len(outputs)

    def get_output(self, j: int) -> Tensor:
        return self._outputs[j]


class Network:
    def __init__(self, flags: int, explicit_required: bool) -> None:
        self.flags = flags
        self.implicit_batch = explicit_required and not flags & 1
        self.inputs: List[Tensor] = []
        self.outputs: List[Tensor] = []
        self.layers: List[Layer] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]

    def get_layer(self, i):
        return self.layers[i]


class ParserError:
    def __init__(self, node: int, op: str, code: str, desc: str) -> None:
        self.node, self.op, self.code, self.text = node, op, code, desc

    def __str__(self) -> str:
        return f"In node {self.node} ({self.op}): {self.code}: {self.text}"


class OnnxParser:
    """Reads the ONNX with the onnx package (test-side only) into fake layers and tensors."""

    def __init__(self, network: Network, logger) -> None:
        self.network, self.errors = network, []

    num_errors = property(lambda self: len(self.errors))

    def get_error(self, i):
        return self.errors[i]

    def parse(self, data: bytes) -> bool:
        import onnx

        try:
            model = onnx.shape_inference.infer_shapes(onnx.load_from_string(bytes(data)))
        except Exception:  # noqa: BLE001 - the real parser reports, never raises
            self.errors.append(
                ParserError(-1, "parseGraph", "INVALID_GRAPH", "Failed to parse ONNX model")
            )
            return False
        if self.network.implicit_batch:
            self.errors.append(
                ParserError(
                    -1,
                    "parseGraph",
                    "INVALID_GRAPH",
                    "This version of the ONNX parser only supports TensorRT "
                    "INetworkDefinitions with an explicit batch dimension.",
                )
            )
            return False
        graph = model.graph
        kinds: Dict[str, DataType] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            kinds[vi.name] = _ONNX_TYPES.get(vi.type.tensor_type.elem_type, DataType.FLOAT)
        for i, node in enumerate(graph.node):
            if node.op_type not in SUPPORTED_OPS:
                self.errors.append(
                    ParserError(
                        i,
                        node.name or node.op_type,
                        "UNSUPPORTED_NODE",
                        f"No importer registered for op: {node.op_type}",
                    )
                )
                continue
            outs = [Tensor(o, (), kinds.get(o, DataType.FLOAT)) for o in node.output]
            self.network.layers.append(
                Layer(_LAYER_TYPES.get(node.op_type, LayerType.ELEMENTWISE), outs)
            )
        inits = {t.name for t in graph.initializer}

        def dims(vi):
            return tuple(
                d.dim_value if d.HasField("dim_value") else -1
                for d in vi.type.tensor_type.shape.dim
            )

        self.network.inputs = [
            Tensor(v.name, dims(v), kinds[v.name]) for v in graph.input if v.name not in inits
        ]
        self.network.outputs = [Tensor(v.name, dims(v), kinds[v.name]) for v in graph.output]
        return not self.errors


class TimingCache:
    def __init__(self, entries: Dict[str, int]) -> None:
        self.entries = dict(entries)

    def serialize(self) -> bytes:
        return b"FTC" + json.dumps(self.entries).encode()


class OptimizationProfile:
    def __init__(self) -> None:
        self.shapes: Dict[str, Tuple] = {}

    def set_shape(self, name, min, opt, max):  # noqa: A002 - the real keyword names
        if not all(a <= b <= c for a, b, c in zip(min, opt, max)):
            raise ValueError("min <= opt <= max violated")
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


def make_fake_tensorrt(
    generation: str, cuda: FakeCudaRuntime, fail_under_capture: bool = False
) -> types.ModuleType:
    """A fresh ``tensorrt`` module mimicking ``generation`` (a key of GENERATIONS)."""
    feat = GENERATIONS[generation]
    trt = types.ModuleType("tensorrt")
    trt.__version__ = feat["version"]
    trt.log = []
    trt.stats = {"builds": 0, "calibration_batches": 0, "enqueues": 0, "timing_cache_hits": 0}
    trt.DataType, trt.nptype, trt.LayerType = DataType, nptype, LayerType
    trt.OnnxParser, trt.MemoryPoolType = OnnxParser, types.SimpleNamespace(WORKSPACE=0)

    class Logger:
        VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

        def __init__(self, severity=2):
            self.severity = severity

    trt.Logger = Logger

    flag_members = {"EXPLICIT_BATCH": 0} if feat["explicit_flag"] else {}
    if feat["strongly_typed_flag"]:
        flag_members["STRONGLY_TYPED"] = 1
    trt.NetworkDefinitionCreationFlag = (
        enum.IntEnum("NetworkDefinitionCreationFlag", flag_members)
        if flag_members
        else types.SimpleNamespace()
    )
    builder_flags = {"TF32": 10, "REFIT": 11}
    if feat["precision_flags"]:
        builder_flags.update(FP16=0, INT8=1)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    if feat["names_api"]:
        trt.TensorIOMode = TensorIOMode

    def no_device(what):
        if not cuda.devices:
            trt.log.append("CUDA initialization failure with error: 35")
            raise TypeError("pybind11::init(): factory function returned nullptr")

    # -- calibrator base ---------------------------------------------------------------------
    if feat["calibrator"]:

        class IInt8EntropyCalibrator2:
            def __init__(self):
                self._base_initialised = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    # -- builder config: only the attributes this generation has can be set -----------------
    allowed = {"_flags", "_profiles", "_cache", "_pool", "_calib_profile"}
    if feat["max_workspace"]:
        allowed.add("max_workspace_size")
    if feat["calibrator"]:
        allowed.add("int8_calibrator")
    if feat["opt_level"]:
        allowed.add("builder_optimization_level")

    class BuilderConfig:
        def __setattr__(self, key, value):
            if key not in allowed:
                raise AttributeError(f"'IBuilderConfig' object has no attribute '{key}'")
            object.__setattr__(self, key, value)

        def __init__(self):
            self._flags, self._profiles, self._cache, self._pool = set(), [], None, {}
            self._calib_profile = None
            if feat["calibrator"]:
                self.int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            self._pool[pool] = size

        def set_flag(self, flag):
            self._flags.add(flag.name)

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, data):
            data = bytes(data)
            if not data:
                return TimingCache({})
            if not data.startswith(b"FTC"):
                return None
            return TimingCache(json.loads(data[3:]))

        def set_timing_cache(self, cache, ignore_mismatch):
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    if feat["calibrator"]:

        def set_calibration_profile(self, profile):
            self._calib_profile = profile

        BuilderConfig.set_calibration_profile = set_calibration_profile

    # -- builder -----------------------------------------------------------------------------
    class Builder:
        def __init__(self, logger):
            no_device("Builder")

        def create_network(self, flags=0):
            return Network(flags, feat["explicit_required"])

        def create_builder_config(self):
            return BuilderConfig()

        def create_optimization_profile(self):
            return OptimizationProfile()

        def build_serialized_network(self, network, config):
            dynamic = [t for t in network.inputs if -1 in t.shape]
            shapes = config._profiles[0].shapes if config._profiles else {}
            if any(t.name not in shapes for t in dynamic):
                trt.log.append(
                    "Network has dynamic or shape inputs, "
                    "but no optimization profile has been defined."
                )
                return None
            calibrator = getattr(config, "int8_calibrator", None)
            if "INT8" in config._flags and calibrator is not None:
                network_shapes = {t.name: t.shape for t in network.inputs}
                if dynamic:  # TensorRT calibrates at the calibration profile's OPT shape
                    if config._calib_profile is None:
                        trt.log.append(
                            "Calibration profile not set for a network with dynamic shapes."
                        )
                        return None
                    network_shapes = {
                        t.name: config._calib_profile.shapes[t.name][1] for t in dynamic
                    }
                if not _calibrate(calibrator, [t.name for t in network.inputs], network_shapes):
                    return None
            key = f"{[t.shape for t in network.inputs]}-{len(network.layers)}"
            if config._cache is not None:
                trt.stats["timing_cache_hits"] += int(key in config._cache.entries)
                config._cache.entries[key] = 1
            trt.stats["builds"] += 1
            plan = {
                "version": trt.__version__,
                "cc": list(cuda.cc),
                "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network.inputs],
                "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network.outputs],
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
                "flags": sorted(config._flags),
            }
            return memoryview(PLAN_MAGIC + json.dumps(plan).encode())

    def _calibrate(calibrator, names, network_shapes):
        assert getattr(calibrator, "_base_initialised", False), (
            "IInt8EntropyCalibrator2.__init__ not called"
        )
        cached = calibrator.read_calibration_cache()
        if not cached:
            size = calibrator.get_batch_size()
            want = network_shapes[names[0]][0]
            if want >= 0 and size != want:  # a static batch, or the calibration profile's OPT batch
                trt.log.append(
                    f"Calibration batch {size} does not match the network's batch {want}."
                )
                return False
            shape = (size,) + tuple(network_shapes[names[0]][1:])
            while True:
                ptrs = calibrator.get_batch(names)
                if not ptrs:
                    break
                trt.stats["calibration_batches"] += 1
                trt.stats["calibration_sum"] = trt.stats.get("calibration_sum", 0.0) + float(
                    cuda.view(int(ptrs[0]), shape, np.float32).sum()
                )
            calibrator.write_calibration_cache(b"fake-calibration-table")
        return True

    if feat["legacy_build"]:
        Builder.build_engine = lambda self, network, config: None
    if feat["precision_flags"]:
        Builder.platform_has_fast_fp16 = property(
            lambda self: cuda.cc >= (5, 3) and cuda.cc != (6, 1)
        )
    trt.Builder = Builder

    # -- runtime, engine, context ------------------------------------------------------------
    class Engine:
        def __init__(self, plan):
            self.plan = plan
            io = [(n, s, d, True) for n, s, d in plan["inputs"]] + [
                (n, s, d, False) for n, s, d in plan["outputs"]
            ]
            self.io = [(n, tuple(s), DataType[d], is_in) for n, s, d, is_in in io]

        def create_execution_context(self):
            return Context(self)

        def _profile(self, name):
            mn, opt, mx = self.plan["profile"][name]
            return [tuple(mn), tuple(opt), tuple(mx)]

    class Context:
        def __init__(self, engine):
            self.engine = engine
            self.shapes = {n: s for n, s, _, is_in in engine.io if is_in}
            self.addresses: Dict[str, int] = {}

        def _set_shape(self, name, shape):
            declared = dict((n, s) for n, s, _, _ in self.engine.io)[name]
            if -1 in declared:
                mn, _, mx = self.engine._profile(name)
                ok = len(shape) == len(mn) and all(a <= b <= c for a, b, c in zip(mn, shape, mx))
            else:
                ok = tuple(shape) == declared
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def _out_shape(self, name):
            batch = next(iter(self.shapes.values()))[0]
            shape = dict((n, s) for n, s, _, _ in self.engine.io)[name]
            return (batch,) + tuple(shape[1:]) if shape[0] == -1 else shape

        def _run(self, stream):
            inputs = [(n, d) for n, _, d, is_in in self.engine.io if is_in]
            outputs = [(n, d) for n, _, d, is_in in self.engine.io if not is_in]
            name, dtype = inputs[0]
            shape = self.shapes[name]
            if -1 in shape or any(n not in self.addresses for n, _, _, _ in self.engine.io):
                trt.log.append("enqueue: unbound tensor or unset input shape")
                return False
            if fail_under_capture and cuda.capturing(stream):
                cuda.invalidate(stream)
                trt.log.append("enqueue: operation not permitted when stream is capturing")
                return False
            trt.stats["enqueues"] += 1
            out_specs = [(n, self._out_shape(n), d) for n, d in outputs]

            def kernel():
                x = cuda.view(self.addresses[name], shape, nptype(dtype)).astype(np.float32)
                for out_name, out_shape, out_dtype in out_specs:
                    cuda.view(self.addresses[out_name], out_shape, nptype(out_dtype))[...] = (
                        reference_output(x, out_shape)
                    )

            cuda.enqueue(stream, kernel)
            return True

        def execute_v2(self, bindings):
            return self._run(None)

    if feat["names_api"]:
        Engine.num_io_tensors = property(lambda self: len(self.io))
        Engine.get_tensor_name = lambda self, i: self.io[i][0]
        Engine.get_tensor_mode = lambda self, name: (
            TensorIOMode.INPUT
            if dict((n, i) for n, _, _, i in self.io)[name]
            else TensorIOMode.OUTPUT
        )
        Engine.get_tensor_shape = lambda self, name: dict((n, s) for n, s, _, _ in self.io)[name]
        Engine.get_tensor_dtype = lambda self, name: dict((n, d) for n, _, d, _ in self.io)[name]
        Engine.get_tensor_profile_shape = lambda self, name, profile: self._profile(name)
        Context.set_input_shape = lambda self, name, shape: self._set_shape(name, shape)
        Context.get_tensor_shape = lambda self, name: self.shapes.get(name) or self._out_shape(name)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        Context.set_tensor_address = set_tensor_address
        Context.execute_async_v3 = lambda self, stream_handle: self._run(stream_handle)
    if feat["bindings_api"]:
        Engine.num_bindings = property(lambda self: len(self.io))
        Engine.get_binding_name = lambda self, i: self.io[i][0]
        Engine.binding_is_input = lambda self, i: self.io[i][3]
        Engine.get_binding_shape = lambda self, i: self.io[i][1]
        Engine.get_binding_dtype = lambda self, i: self.io[i][2]
        Engine.get_profile_shape = lambda self, profile, i: self._profile(self.io[i][0])
        Context.set_binding_shape = lambda self, i, shape: self._set_shape(
            self.engine.io[i][0], shape
        )
        Context.get_binding_shape = lambda self, i: (
            self.shapes.get(self.engine.io[i][0]) or self._out_shape(self.engine.io[i][0])
        )

        def execute_async_v2(self, bindings, stream_handle):
            for (name, _, _, _), ptr in zip(self.engine.io, bindings):
                if ptr:
                    self.addresses[name] = int(ptr)
            return self._run(stream_handle)

        Context.execute_async_v2 = execute_async_v2

    class Runtime:
        def __init__(self, logger):
            no_device("Runtime")

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(PLAN_MAGIC):
                trt.log.append(
                    "Error Code 1: Serialization (Serialization assertion magicTagRead failed)"
                )
                return None
            plan = json.loads(data[len(PLAN_MAGIC) :])
            if plan["version"] != trt.__version__ or tuple(plan["cc"]) != cuda.cc:
                trt.log.append(
                    "The engine plan file is not compatible with this version of TensorRT"
                )
                return None
            return Engine(plan)

    trt.Runtime = Runtime
    return trt


def reference_output(x: np.ndarray, out_shape) -> np.ndarray:
    """What the fake engine computes: out[b].flat[j] = mean(x[b, j % C]) * (j + 1)."""
    batch, channels = x.shape[0], x.shape[1]
    per = int(np.prod(out_shape[1:]))
    means = x.reshape(batch, channels, -1).mean(axis=2)
    j = np.arange(per)
    return (means[:, j % channels] * (j + 1)).reshape(out_shape)


def install_fake_tensorrt(
    monkeypatch, generation: str, cuda: FakeCudaRuntime, **kwargs
) -> types.ModuleType:
    trt = make_fake_tensorrt(generation, cuda, **kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


# ================================================================ test models

CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]


def tiny_meta(batch: Optional[int] = 1):
    from glimmer.runtime.core.metadata import ModelMeta

    return ModelMeta(
        task="classify", name="tiny", class_names=CLASSES, input_size=(8, 8), batch=batch
    )


def write_tiny_onnx(path, batch: Optional[int] = 1, variant: str = "plain", meta: bool = True):
    """A real ONNX classifier [N,3,8,8] -> [N,4] carrying our metadata.

    variant: ``plain`` (FP32), ``qdq`` (Q/DQ on the input), ``fp16`` (FP16 inside, FP32 I/O),
    ``unsupported`` (a custom op no TensorRT parser knows).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = batch if batch is not None else "batch"
    x = "images"
    nodes, inits = [], [numpy_helper.from_array(np.full((4, 3, 1, 1), 0.5, np.float32), "w")]
    if variant == "qdq":
        inits += [
            numpy_helper.from_array(np.array(0.02, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"]),
        ]
        x = "xdq"
    if variant == "fp16":
        nodes += [
            helper.make_node("Cast", [x], ["xh"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["xh"], ["xf"], to=TensorProto.FLOAT),
        ]
        x = "xf"
    if variant == "unsupported":
        nodes.append(helper.make_node("FancyOp", [x], ["xc"], domain="com.example"))
        x = "xc"
    nodes += [
        helper.make_node("Conv", [x, "w"], ["c"]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, 4])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)]
    if variant == "unsupported":
        opsets.append(helper.make_opsetid("com.example", 1))
    model = helper.make_model(graph, opset_imports=opsets)
    if meta:
        helper.set_model_props(model, {"glimmer": tiny_meta(batch).to_json()})
    onnx.save(model, str(path))
    return path
