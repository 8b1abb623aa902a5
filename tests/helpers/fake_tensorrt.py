"""A small fake of the ``tensorrt`` module per API generation, and fake CUDA bindings.

Real TensorRT cannot be installed on the build machines (docs/tensorrt.md, last section), so the
TensorRT code is tested against this fake. It mimics the *surface* each generation offers and, just
as important, what each one lacks or refuses (an attribute that is gone raises AttributeError, as in
the real bindings): 8.4 (bindings API only, EXPLICIT_BATCH required), 8.5 (bindings and tensor
names), 8.6 (both, plus the optimisation level), 10.3 (names only, no max_workspace_size,
EXPLICIT_BATCH ignored) and 11.4 (strongly typed: no FP16 / INT8 flags, no calibrator, no
EXPLICIT_BATCH). Its "engine" computes a simple, known function of its input, reading and writing
the device buffers it was bound to, so tests can check our buffer bookkeeping numerically. It
proves nothing about real engines.

Where the real module is strict, the fake is too (:data:`STRICTNESS` lists each rule); the tests
prove our code obeys these rules, not that the rules are complete.

:class:`FakeCudaRuntime` mimics cuda-python's runtime module (every call returns an error code
first). Its "device" memory is host memory from ctypes, so copies really move bytes; stream capture
records work and graph launches replay it, as CUDA does. :func:`make_fake_pycuda` is a pycuda driver
over the same memory.
"""

import ctypes
import enum
import json
import sys
import threading
import types
from pathlib import Path
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
    # trt.nptype builds its table with np.bool: AttributeError with numpy 1.24-1.26, the numpy a
    # JetPack 5 Python 3.8 gets (fixed in 8.5.3)
    "nptype_np_bool",
    # implicit calibration asks get_batch_size (8.x); 10.x ignores it and uses the network shape
    "calibration_batch_size",
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
            "nptype_np_bool",
            "calibration_batch_size",
        },
    ),
    "8.5": (
        "8.5.2.2",
        {
            "explicit_flag",
            "explicit_required",
            "max_workspace",
            "precision_flags",
            "calibrator",
            "names_api",
            "bindings_api",
            "legacy_build",
            "nptype_np_bool",
            "calibration_batch_size",
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
            "calibration_batch_size",
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
#: trt.DataType members by generation (UINT8 from 8.5, FP8 from 8.6, BF16 / INT64 / INT4 from 10)
_DTYPES = {
    "8.4": ("FLOAT", "HALF", "INT8", "INT32", "BOOL"),
    "8.5": ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8"),
    "8.6": ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8"),
    "10.3": ("FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4"),
    "11.4": (
        "FLOAT",
        "HALF",
        "INT8",
        "INT32",
        "BOOL",
        "UINT8",
        "FP8",
        "BF16",
        "INT64",
        "INT4",
        "FP4",
    ),
}
GENERATIONS = {
    generation: dict(version=version, dtypes=_DTYPES[generation], **{f: f in has for f in FEATURES})
    for generation, (version, has) in _HAS.items()
}
PLAN_MAGIC = b"FAKETRT\0"

#: where the fake refuses or misbehaves as the real module does (each has a test of our code)
STRICTNESS = (
    "8.4 / 8.5.2: trt.nptype raises AttributeError (its table uses np.bool, gone in numpy "
    "1.24-1.26)",
    "every version: trt.nptype raises TypeError for a type without a numpy equivalent (BF16, FP8)",
    "trt.DataType has only the members of its generation (no INT64 before 10, no BF16 before 10)",
    "10.x: implicit calibration never calls get_batch_size; it reads the network's (or the "
    "calibration profile's) batch from the pointers get_batch returns",
    "8.x: implicit calibration fails when get_batch_size differs from the network's batch",
    "platform_has_fast_fp16 is False on sm_50 / sm_52 / sm_61 (Pascal GTX 10xx); an FP16 build "
    "there logs TensorRT's Half2 warning and runs FP16 at a fraction of the FP32 rate",
    "the first enqueue after an input shape change (or on a new context) cannot be captured into a "
    "CUDA graph: it invalidates the capture",
    "a CUDA graph replayed after an input shape change runs the captured shape (counted as stale)",
    "set_timing_cache(cache, ignore_mismatch=False) refuses a cache made on another GPU or "
    "TensorRT version and returns False; with ignore_mismatch=True it uses the foreign timings",
    "no NVIDIA driver or one too old for the CUDA runtime: cudaErrorInsufficientDriver (35), "
    "cudaGetDeviceCount's count is None; no GPU: cudaErrorNoDevice (100); Builder() and Runtime() "
    "then log 'CUDA initialization failure with error: N' and raise TypeError (nullptr)",
    "deserialize_cuda_engine refuses bytes that do not start with the plan (a metadata header)",
    "a DLA build (default_device_type DLA) fails without the FP16 or INT8 flag (DLA has no FP32), "
    "with DLA_core outside 0..num_DLA_cores-1, or on a device without DLA",
    "a DLA engine deserializes only on a Runtime whose DLA_core names the core it was built for",
    "cudaSetDevice refuses an index outside 0..devices-1; TensorRT builds and runs on the thread's "
    "current device",
)


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
    """cuda-python's ``runtime`` module surface, over host memory.

    ``driver_version`` / ``runtime_version`` are CUDA versions as CUDA writes them (12060 = 12.6);
    a driver of 0 means no driver is loaded, and a driver of an older major version than the
    runtime is too old for it (CUDA's minor-version compatibility stops at the major version).
    """

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(
        self,
        devices: int = 1,
        name: str = "Orin (fake)",
        cc: Tuple[int, int] = (8, 7),
        driver_version: int = 12060,
        runtime_version: int = 12060,
        dla_cores: int = 0,
    ) -> None:
        self.devices = devices
        self.dla_cores = dla_cores
        self.current: Dict[int, int] = {}  # thread -> its current device (cudaSetDevice)
        self.name = name
        self.cc = cc
        self.driver_version = driver_version
        self.runtime_version = runtime_version
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

    def init_error(self) -> int:
        """The CUDA error code initialisation gives on this "machine" (0: none)."""
        if not self.driver_version or self.driver_version // 1000 < self.runtime_version // 1000:
            return int(cudaError_t.cudaErrorInsufficientDriver)
        if not self.devices:
            return int(cudaError_t.cudaErrorNoDevice)
        return 0

    # -- device queries ---------------------------------------------------------------------
    def cudaGetDeviceCount(self):  # noqa: N802 - cuda-python's names
        code = self.init_error()
        if code:
            return (cudaError_t(code), None)
        return (_OK, self.devices)

    def cudaDriverGetVersion(self):  # noqa: N802
        return (_OK, self.driver_version)

    def cudaRuntimeGetVersion(self):  # noqa: N802
        return (_OK, self.runtime_version)

    def cudaSetDevice(self, device):  # noqa: N802
        if not 0 <= device < self.devices:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.current[threading.get_ident()] = device
        return (_OK,)

    def current_device(self) -> int:
        """The calling thread's current device (0 until cudaSetDevice, as in CUDA)."""
        return self.current.get(threading.get_ident(), 0)

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
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.streams.pop(int(stream))
        return (_OK,)

    def enqueue(self, stream: int, work: Callable[[], None]) -> None:
        """Run ``work`` now, or record it while the stream is being captured."""
        state = self.streams.get(int(stream))
        if state is not None and state["capturing"]:
            state["recorded"].append(work)
        else:
            work()

    def capturing(self, stream: int) -> bool:
        state = self.streams.get(int(stream))
        return bool(state and state["capturing"])

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


# ================================================================ fake pycuda (same memory)


def make_fake_pycuda(rt: FakeCudaRuntime) -> types.ModuleType:
    """``pycuda.driver`` whose device memory lives in ``rt`` (so the fake TensorRT can read it).

    Contexts are current per thread, as in the CUDA driver: ``drv.stacks()`` gives each thread's
    context stack, so a test can check that every push was popped.
    """
    drv = types.ModuleType("pycuda.driver")
    drv.calls = []
    per_thread = threading.local()
    all_stacks: List[List[Any]] = []

    def stack() -> List[Any]:
        if not hasattr(per_thread, "stack"):
            per_thread.stack = []
            all_stacks.append(per_thread.stack)
        return per_thread.stack

    class Context:
        @staticmethod
        def get_current():
            current = stack()
            return current[-1] if current else None

        def push(self):
            drv.calls.append("push")
            stack().append(self)

        @staticmethod
        def pop():
            drv.calls.append("pop")
            stack().pop()  # IndexError on an empty stack, as pycuda raises LogicError

    primary = Context()

    class Device:
        @staticmethod
        def count():
            return rt.devices

        def __init__(self, index):
            self.index = index

        def name(self):
            return rt.name

        def compute_capability(self):
            return rt.cc

        def retain_primary_context(self):
            return primary

    class Allocation:
        def __init__(self, nbytes):
            _, self.ptr = rt._alloc(int(nbytes), "device")

        def __int__(self):
            return self.ptr

        def free(self):  # pycuda's free is idempotent; garbage collection frees again
            if self.ptr in rt.allocs:
                rt._free(self.ptr, "device")
                drv.calls.append("free")

    class Stream:
        _next = [0xABC]

        def __init__(self):
            Stream._next[0] += 1
            self.handle = Stream._next[0]

        def synchronize(self):
            drv.calls.append("sync")

    def init():
        if rt.init_error():
            raise RuntimeError(f"cuInit failed: error {rt.init_error()}")

    drv.init, drv.Device, drv.Stream, drv.Context = init, Device, Stream, Context
    drv.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    drv.mem_alloc = Allocation
    drv.memcpy_htod_async = lambda dst, src, stream: ctypes.memmove(
        int(dst), src.ctypes.data, src.nbytes
    )
    drv.memcpy_dtoh_async = lambda dst, src, stream: ctypes.memmove(
        dst.ctypes.data, int(src), dst.nbytes
    )
    drv.stacks = lambda: [list(s) for s in all_stacks]
    return drv


def install_fake_pycuda(monkeypatch, drv: types.ModuleType) -> None:
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    monkeypatch.setenv("GLIMMER_CUDA", "pycuda")


# ================================================================ fake tensorrt

#: ONNX elem_type -> trt.DataType member name
_ONNX_TYPES = {
    1: "FLOAT",
    2: "UINT8",
    3: "INT8",
    6: "INT32",
    7: "INT64",
    9: "BOOL",
    10: "HALF",
    16: "BF16",
}
#: what the fake engine computes in (and what a working trt.nptype gives)
_NUMPY = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}


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


class DeviceType(enum.Enum):
    GPU = 0
    DLA = 1


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class Tensor:
    def __init__(self, name: str, shape, dtype) -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class Layer:
    def __init__(self, kind: LayerType, outputs: List[Tensor]) -> None:
        self.type = kind
        self._outputs = outputs
        self.num_outputs = len(outputs)

    def get_output(self, j: int) -> Tensor:
        return self._outputs[j]


class Network:
    def __init__(self, flags: int, explicit_required: bool, data_type: Any, log: List[str]) -> None:
        self.flags = flags
        self.implicit_batch = explicit_required and not flags & 1
        self.data_type = data_type  # this generation's trt.DataType
        self.log = log
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

    def _dtype(self, elem_type: int):
        name = _ONNX_TYPES.get(elem_type, "FLOAT")
        members = self.network.data_type.__members__
        if name == "INT64" and name not in members:  # 8.x casts INT64 down, with a warning
            self.network.log.append(
                "Your ONNX model has been generated with INT64 weights, while TensorRT does not "
                "natively support INT64. Attempting to cast down to INT32."
            )
            name = "INT32"
        return members.get(name)

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
        kinds: Dict[str, Any] = {}
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            kind = self._dtype(vi.type.tensor_type.elem_type)
            if kind is None:
                self.errors.append(
                    ParserError(-1, vi.name, "UNSUPPORTED_NODE", "unsupported data type")
                )
                return False
            kinds[vi.name] = kind
        default = self.network.data_type.FLOAT
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
            outs = [Tensor(o, (), kinds.get(o, default)) for o in node.output]
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
    trt.stats = {
        "builds": 0,
        "calibration_batches": 0,
        "calibration_images": 0,
        "enqueues": 0,
        "timing_cache_hits": 0,
        "foreign_timing_hits": 0,
        "slow_fp16_builds": 0,
        "stale_graph_replays": 0,
        "nptype_calls": 0,
    }
    DataType = enum.Enum("DataType", {n: n.lower() for n in feat["dtypes"]})  # noqa: N806

    def nptype(dtype):
        trt.stats["nptype_calls"] += 1
        if feat["nptype_np_bool"]:
            # 8.4 / 8.5.2 build {..., bool: np.bool} on every call (fixed in 8.5.3).
            raise AttributeError(
                "module 'numpy' has no attribute 'bool'.\n`np.bool` was a deprecated alias for "
                "the builtin `bool`."
            )
        if dtype.name not in _NUMPY:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return _NUMPY[dtype.name]

    trt.DataType, trt.nptype, trt.LayerType = DataType, nptype, LayerType
    trt.DeviceType = DeviceType
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
    builder_flags = {"TF32": 10, "REFIT": 11, "GPU_FALLBACK": 3}
    if feat["precision_flags"]:
        builder_flags.update(FP16=0, INT8=1)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    if feat["names_api"]:
        trt.TensorIOMode = TensorIOMode

    def no_device(what):
        code = cuda.init_error()
        if code:
            trt.log.append(
                f"CUDA initialization failure with error: {code}. Please check your CUDA "
                "installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"
            )
            raise TypeError("pybind11::init(): factory function returned nullptr")

    def environment() -> Dict[str, Any]:
        """What a timing cache's verification header records."""
        return {"tensorrt": trt.__version__, "device": cuda.name, "cc": list(cuda.cc)}

    class TimingCache:
        def __init__(self, entries: Dict[str, int], header: Optional[Dict[str, Any]]) -> None:
            self.entries, self.header, self.foreign = dict(entries), header, False

        def serialize(self):
            header = self.header if self.foreign else environment()
            return memoryview(
                b"FTC" + json.dumps({"header": header, "entries": self.entries}).encode()
            )

    # -- calibrator base ---------------------------------------------------------------------
    if feat["calibrator"]:

        class IInt8EntropyCalibrator2:
            def __init__(self):
                self._base_initialised = True

        trt.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    # -- builder config: only the attributes this generation has can be set -----------------
    allowed = {
        "_flags",
        "_profiles",
        "_cache",
        "_pool",
        "_calib_profile",
        "default_device_type",
        "DLA_core",
    }
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
            self.default_device_type = DeviceType.GPU
            self.DLA_core = -1
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
                return TimingCache({}, None)
            try:
                assert data.startswith(b"FTC")
                record = json.loads(data[3:])
                return TimingCache(record["entries"], record["header"])
            except (AssertionError, ValueError, KeyError, TypeError):
                return None

        def set_timing_cache(self, cache, ignore_mismatch):
            foreign = cache.header is not None and cache.header != environment()
            if foreign and not ignore_mismatch:
                trt.log.append(
                    "Timing cache mismatch: the cache was created with a different CUDA device "
                    "property or TensorRT version"
                )
                return False
            cache.foreign = foreign
            self._cache = cache
            return True

        def get_timing_cache(self):
            return self._cache

    if feat["calibrator"]:

        def set_calibration_profile(self, profile):
            self._calib_profile = profile
            return True

        BuilderConfig.set_calibration_profile = set_calibration_profile

    # -- builder -----------------------------------------------------------------------------
    class Builder:
        def __init__(self, logger):
            no_device("Builder")
            self.device = cuda.current_device()  # TensorRT builds on the current device

        @property
        def num_DLA_cores(self):  # noqa: N802 - TensorRT's name
            return cuda.dla_cores

        def create_network(self, flags=0):
            return Network(flags, feat["explicit_required"], DataType, trt.log)

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
            dla = config.default_device_type == DeviceType.DLA
            if dla and not ({"FP16", "INT8"} & config._flags):
                trt.log.append("DLA supports only FP16 and INT8 precision: build with one of them")
                return None
            if dla and not 0 <= config.DLA_core < cuda.dla_cores:
                trt.log.append(f"Cannot create DLA engine, {cuda.dla_cores} DLA cores available")
                return None
            if "FP16" in config._flags and not fast_fp16():
                trt.log.append(
                    "Half2 support requested on hardware without native FP16 support, "
                    "performance will be negatively affected."
                )
                trt.stats["slow_fp16_builds"] += 1
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
            cache = config._cache
            if cache is not None:
                hit = int(key in cache.entries)
                trt.stats["foreign_timing_hits" if cache.foreign else "timing_cache_hits"] += hit
                cache.entries[key] = 1
            trt.stats["builds"] += 1
            plan = {
                "version": trt.__version__,
                "cc": list(cuda.cc),
                "inputs": [[t.name, list(t.shape), t.dtype.name] for t in network.inputs],
                "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network.outputs],
                "profile": {k: [list(s) for s in v] for k, v in shapes.items()},
                "flags": sorted(config._flags),
                "dla_core": config.DLA_core if dla else None,
                "device": self.device,
            }
            return memoryview(PLAN_MAGIC + json.dumps(plan).encode())

    def fast_fp16() -> bool:
        # What TensorRT reports: no fast FP16 on Maxwell desktop (5.0 / 5.2) nor on Pascal 6.1.
        return cuda.cc >= (5, 3) and cuda.cc != (6, 1)

    def _calibrate(calibrator, names, network_shapes):
        assert getattr(calibrator, "_base_initialised", False), (
            "IInt8EntropyCalibrator2.__init__ not called"
        )
        cached = calibrator.read_calibration_cache()
        if not cached:
            want = network_shapes[names[0]][0]
            if feat["calibration_batch_size"]:
                size = calibrator.get_batch_size()
                if want >= 0 and size != want:  # a static batch, or the calibration profile's OPT
                    trt.log.append(
                        f"Calibration batch {size} does not match the network's batch {want}."
                    )
                    return False
            else:
                size = want  # 10.x: get_batch_size is ignored, the network's shape rules
            shape = (size,) + tuple(network_shapes[names[0]][1:])
            while True:
                ptrs = calibrator.get_batch(names)
                if not ptrs:
                    break
                trt.stats["calibration_batches"] += 1
                trt.stats["calibration_images"] += size
                # Reads exactly the network's batch: a smaller buffer fails the device-memory check.
                trt.stats["calibration_sum"] = trt.stats.get("calibration_sum", 0.0) + float(
                    cuda.view(int(ptrs[0]), shape, np.float32).sum()
                )
            calibrator.write_calibration_cache(b"fake-calibration-table")
        return True

    if feat["legacy_build"]:
        Builder.build_engine = lambda self, network, config: None
    if feat["precision_flags"]:
        Builder.platform_has_fast_fp16 = property(lambda self: fast_fp16())
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
            # Deferred work (a new context, new shapes) runs in the next enqueue, uncapturable.
            self.needs_flush = True

        def _set_shape(self, name, shape):
            declared = dict((n, s) for n, s, _, _ in self.engine.io)[name]
            if -1 in declared:
                mn, _, mx = self.engine._profile(name)
                ok = len(shape) == len(mn) and all(a <= b <= c for a, b, c in zip(mn, shape, mx))
            else:
                ok = tuple(shape) == declared
            if ok:
                self.needs_flush = self.needs_flush or self.shapes.get(name) != tuple(shape)
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
            if cuda.capturing(stream) and (fail_under_capture or self.needs_flush):
                cuda.invalidate(stream)
                trt.log.append("enqueue: operation not permitted when stream is capturing")
                return False
            trt.stats["enqueues"] += 1
            out_specs = [(n, self._out_shape(n), d) for n, d in outputs]
            captured = dict(self.shapes)

            def kernel():
                if self.shapes != captured:  # a graph replayed after the shapes changed
                    trt.stats["stale_graph_replays"] += 1
                    trt.log.append("graph replay with the shapes it was captured for")
                x = cuda.view(self.addresses[name], shape, _NUMPY[dtype.name]).astype(np.float32)
                for out_name, out_shape, out_dtype in out_specs:
                    cuda.view(self.addresses[out_name], out_shape, _NUMPY[out_dtype.name])[...] = (
                        reference_output(x, out_shape)
                    )

            if not cuda.capturing(stream):
                self.needs_flush = False
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
            self.DLA_core = -1  # noqa: N815 - TensorRT's name
            self.device = cuda.current_device()

        def deserialize_cuda_engine(self, data):
            data = bytes(data)
            if not data.startswith(PLAN_MAGIC):
                trt.log.append(
                    "Error Code 1: Serialization (Serialization assertion magicTagRead failed)"
                )
                return None
            plan = json.loads(data[len(PLAN_MAGIC) :])
            if plan.get("dla_core") is not None and self.DLA_core != plan["dla_core"]:
                trt.log.append(
                    f"DLA engine for core {plan['dla_core']}, Runtime on {self.DLA_core}"
                )
                return None
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


def tensorrt_stubs_wheel() -> Optional[Path]:
    """TensorRT's real Python API stubs, a wheel kept in the virtualenv and never installed (its
    ``tensorrt/`` folder would import as an empty namespace package); None when absent."""
    folder = Path(__file__).resolve().parents[2] / ".venv" / "stubs"
    found = sorted(folder.glob("tensorrt_stubs-*.whl"))
    return found[-1] if found else None


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
