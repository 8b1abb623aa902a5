"""CUDA memory, streams and graphs behind one small interface: cuda-python or pycuda.

TensorRT needs device buffers, pinned host buffers, one non-default stream and async copies (the
pattern of NVIDIA's TensorRT samples, see docs/tensorrt.md, "CUDA memory and streams").
Two Python bindings provide them: cuda-python (``cuda.bindings.runtime``, or ``from cuda import
cudart`` before 12.6), which NVIDIA's own samples use from TensorRT 8.6 on, and pycuda, which has no
aarch64 wheels and must be built from source on a Jetson. The runtime uses whichever is installed
(``GLIMMER_CUDA=cuda-python|pycuda`` picks one); the rest of the code sees only :class:`CudaMem`.

CUDA graphs (capture -> instantiate -> launch) are offered where the binding exposes stream capture
(cuda-python always; pycuda releases do not), so callers check :attr:`CudaMem.supports_graphs`.
"""

import abc
import ctypes
import os
import threading
from typing import Any, List, Optional, Sequence, Set, Tuple

import numpy as np

from glimmer.runtime.core.errors import GlimmerError

ENV_BINDING = "GLIMMER_CUDA"
BINDINGS = ("cuda-python", "pycuda")

_INSTALL_HINT = (
    "install cuda-python (`pip install cuda-python` matching the CUDA of the device; "
    "on JetPack 6: cuda-python 12.x) or pycuda (built from source on a Jetson)"
)


class HostBuffer:
    """Page-locked host memory with a numpy view (``array``) over it."""

    def __init__(self, array: np.ndarray, ptr: int, owner: Any = None) -> None:
        self.array = array
        self.ptr = int(ptr)
        self.nbytes = int(array.nbytes)
        self._owner = owner  # keeps pycuda's allocation alive as long as the view


class DeviceBuffer:
    """Device memory: an address TensorRT binds and a size the copies check against."""

    def __init__(self, ptr: int, nbytes: int, owner: Any = None) -> None:
        self.ptr = int(ptr)
        self.nbytes = int(nbytes)
        self._owner = owner


class CudaMem(abc.ABC):
    """The CUDA calls TensorRT execution needs, independent of the Python binding."""

    name = "cuda"
    supports_graphs = False

    @abc.abstractmethod
    def device_name(self) -> str:
        """Marketing name of device 0 (part of an engine's cache key)."""

    @abc.abstractmethod
    def compute_capability(self) -> Tuple[int, int]:
        """(major, minor): engines are only valid on the SM they were built for."""

    @abc.abstractmethod
    def pinned(self, shape: Sequence[int], dtype: Any) -> HostBuffer:
        """Page-locked host array: async copies need it, and it halves copy time."""

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> DeviceBuffer:
        """Device buffer of ``nbytes``."""

    @abc.abstractmethod
    def stream(self) -> int:
        """Create a non-default stream; returns its handle (what TensorRT takes)."""

    @abc.abstractmethod
    def h2d_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: int) -> None:
        """Queue a host-to-device copy of the first ``nbytes``."""

    @abc.abstractmethod
    def d2h_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: int) -> None:
        """Queue a device-to-host copy of the first ``nbytes``."""

    @abc.abstractmethod
    def synchronize(self, stream: int) -> None:
        """Wait for everything queued on ``stream``."""

    def destroy_stream(self, stream: int) -> None:  # noqa: B027 - pycuda frees streams by GC
        """Release one stream now: a borrowed CudaMem is not closed by the borrower."""

    def make_current(self) -> None:  # noqa: B027 - a binding without per-thread state
        """Make this device current on the calling thread (CUDA's current device is per thread,
        and the pipeline may infer on another thread than the one that opened the device)."""

    # CUDA graphs: optional, see supports_graphs.
    def begin_capture(self, stream: int) -> None:
        raise GlimmerError(f"CUDA graphs are not available through {self.name}")

    def end_capture(self, stream: int) -> Any:
        """End capture and instantiate; returns an executable graph, or None if capture broke."""
        raise GlimmerError(f"CUDA graphs are not available through {self.name}")

    def launch_graph(self, graph_exec: Any, stream: int) -> None:
        raise GlimmerError(f"CUDA graphs are not available through {self.name}")

    def destroy_graph(self, graph_exec: Any) -> None:  # noqa: B027 - nothing to free without graphs
        """Free an executable graph."""

    def free(self, buffer: Any) -> None:  # noqa: B027 - bindings that free by GC need nothing
        """Release a host or device buffer now rather than at garbage collection."""

    def close(self) -> None:  # noqa: B027
        """Release streams and contexts."""


def _pointer_view(ptr: int, shape: Sequence[int], dtype: Any) -> np.ndarray:
    """A numpy array over raw host memory at ``ptr`` (no copy, no ownership)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = (ctypes.c_byte * max(nbytes, 1)).from_address(int(ptr))
    return np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(tuple(shape))


class CudaPython(CudaMem):
    """cuda-python's runtime API: every call returns ``(error, *results)``."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, cudart: Any, device: int = 0) -> None:
        self._rt = cudart
        self._device = device
        self._streams: List[Any] = []
        self._threads: Set[int] = set()  # threads on which self._device has been made current
        problem = _cudart_problem(cudart)
        if problem:
            raise GlimmerError(problem)
        _check_index(device, int(self._call("cudaGetDeviceCount")))
        self.make_current()
        self._props = self._call("cudaGetDeviceProperties", device)

    def make_current(self) -> None:
        thread = threading.get_ident()
        if thread not in self._threads:
            self._call("cudaSetDevice", self._device)
            self._threads.add(thread)

    def _call(self, fn: str, *args: Any) -> Any:
        out = getattr(self._rt, fn)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if _code(err) != 0:
            raise GlimmerError(f"CUDA error in {fn}: {self._error_text(err)}")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def _error_text(self, err: Any) -> str:
        try:
            out = self._rt.cudaGetErrorString(err)
            text = out[1] if isinstance(out, tuple) else out
            return text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # noqa: BLE001 - the original error matters more than its text
            return str(err)

    def device_name(self) -> str:
        name = self._props.name
        if isinstance(name, bytes):
            name = name.split(b"\0", 1)[0].decode(errors="replace")
        return str(name)

    def compute_capability(self) -> Tuple[int, int]:
        return int(self._props.major), int(self._props.minor)

    def pinned(self, shape: Sequence[int], dtype: Any) -> HostBuffer:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        ptr = int(self._call("cudaMallocHost", max(nbytes, 1)))
        return HostBuffer(_pointer_view(ptr, shape, dtype), ptr)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        return DeviceBuffer(int(self._call("cudaMalloc", max(int(nbytes), 1))), nbytes)

    def stream(self) -> int:
        flag = getattr(self._rt, "cudaStreamNonBlocking", 1)
        handle = self._call("cudaStreamCreateWithFlags", int(flag))
        self._streams.append(handle)
        return int(handle)

    def _copy(self, dst: int, src: int, nbytes: int, kind: str, stream: int) -> None:
        self._call(
            "cudaMemcpyAsync", dst, src, int(nbytes), getattr(self._rt.cudaMemcpyKind, kind), stream
        )

    def h2d_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: int) -> None:
        _check_size(nbytes, src.nbytes, dst.nbytes)
        self._copy(dst.ptr, src.ptr, nbytes, "cudaMemcpyHostToDevice", stream)

    def d2h_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: int) -> None:
        _check_size(nbytes, src.nbytes, dst.nbytes)
        self._copy(dst.ptr, src.ptr, nbytes, "cudaMemcpyDeviceToHost", stream)

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", stream)

    def begin_capture(self, stream: int) -> None:
        # Thread-local mode: another thread's unrelated CUDA calls cannot invalidate our capture.
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: int) -> Any:
        try:
            graph = self._call("cudaStreamEndCapture", stream)
        except GlimmerError:
            return None  # invalidated capture: the caller falls back to plain enqueue
        if graph is None or not int(graph):
            return None
        # cudaGraphInstantiateWithFlags has kept one signature from CUDA 11.4 to 13, while
        # cudaGraphInstantiate changed its arguments between 11 and 12.
        instantiate = (
            "cudaGraphInstantiateWithFlags"
            if hasattr(self._rt, "cudaGraphInstantiateWithFlags")
            else "cudaGraphInstantiate"
        )
        graph_exec = self._call(instantiate, graph, 0)
        self._call("cudaGraphDestroy", graph)
        return graph_exec

    def launch_graph(self, graph_exec: Any, stream: int) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def destroy_graph(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", graph_exec)

    def free(self, buffer: Any) -> None:
        if isinstance(buffer, HostBuffer):
            self._call("cudaFreeHost", buffer.ptr)
        elif isinstance(buffer, DeviceBuffer):
            self._call("cudaFree", buffer.ptr)

    def destroy_stream(self, stream: int) -> None:
        for handle in list(self._streams):
            if int(handle) == int(stream):
                self._streams.remove(handle)
                self._call("cudaStreamDestroy", handle)

    def close(self) -> None:
        while self._streams:
            self._call("cudaStreamDestroy", self._streams.pop())


class PyCuda(CudaMem):
    """pycuda's driver API, on the device's primary context (the one TensorRT also uses)."""

    name = "pycuda"

    def __init__(self, driver: Any, device: int = 0) -> None:
        self._drv = driver
        try:
            driver.init()
            count = driver.Device.count()
        except Exception as exc:  # noqa: BLE001 - pycuda raises its own LogicError/RuntimeError
            if "insufficient" in str(exc).lower():
                raise GlimmerError(
                    f"the NVIDIA driver is too old for pycuda's CUDA ({exc}); update the driver "
                    "(on a Jetson: JetPack), or rebuild pycuda against the CUDA the driver supports"
                ) from None
            raise GlimmerError(f"no CUDA device: pycuda cannot initialise CUDA ({exc})") from None
        if not count:
            raise GlimmerError("no CUDA device: pycuda finds no GPU")
        _check_index(device, int(count))
        self._dev = driver.Device(device)
        # The primary context, not pycuda.autoinit's private one: TensorRT and any other library
        # in the process then share one context and its memory.
        self._ctx = self._dev.retain_primary_context()
        self._ctx.push()
        self._streams: List[Any] = []

    def _current(self) -> None:
        # Driver contexts are per thread: the pipeline may infer on a thread other than the one
        # that activated the backend, so make ours current there first.
        if self._drv.Context.get_current() != self._ctx:
            self._ctx.push()

    def make_current(self) -> None:
        self._current()

    def device_name(self) -> str:
        return str(self._dev.name())

    def compute_capability(self) -> Tuple[int, int]:
        major, minor = self._dev.compute_capability()
        return int(major), int(minor)

    def pinned(self, shape: Sequence[int], dtype: Any) -> HostBuffer:
        self._current()
        array = self._drv.pagelocked_empty(tuple(shape), dtype)
        return HostBuffer(array, array.ctypes.data, owner=array)

    def alloc(self, nbytes: int) -> DeviceBuffer:
        self._current()
        allocation = self._drv.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(int(allocation), nbytes, owner=allocation)

    def stream(self) -> int:
        self._current()
        stream = self._drv.Stream()
        self._streams.append(stream)
        return int(stream.handle)

    def _stream(self, handle: int) -> Any:
        self._current()
        for stream in self._streams:
            if int(stream.handle) == handle:
                return stream
        raise GlimmerError(f"unknown CUDA stream handle {handle:#x}")

    def h2d_async(self, dst: DeviceBuffer, src: HostBuffer, nbytes: int, stream: int) -> None:
        _check_size(nbytes, src.nbytes, dst.nbytes)
        view = src.array.reshape(-1).view(np.uint8)[:nbytes]
        self._drv.memcpy_htod_async(dst.ptr, view, self._stream(stream))

    def d2h_async(self, dst: HostBuffer, src: DeviceBuffer, nbytes: int, stream: int) -> None:
        _check_size(nbytes, src.nbytes, dst.nbytes)
        view = dst.array.reshape(-1).view(np.uint8)[:nbytes]
        self._drv.memcpy_dtoh_async(view, src.ptr, self._stream(stream))

    def synchronize(self, stream: int) -> None:
        self._stream(stream).synchronize()

    def free(self, buffer: Any) -> None:
        owner = getattr(buffer, "_owner", None)
        if owner is not None and hasattr(owner, "free"):
            owner.free()

    def destroy_stream(self, stream: int) -> None:
        self._streams = [s for s in self._streams if int(s.handle) != int(stream)]

    def close(self) -> None:
        self._streams.clear()
        # Pop the context pushed in __init__, and only if it is still ours on top: popping another
        # library's context would leave it without one.
        if self._ctx is not None and self._drv.Context.get_current() == self._ctx:
            self._ctx.pop()
        self._ctx = None


_INSUFFICIENT_DRIVER = 35  # cudaErrorInsufficientDriver; also what a machine without a driver says
_NO_DEVICE = 100  # cudaErrorNoDevice


def _code(err: Any) -> int:
    return int(getattr(err, "value", err))


def _cuda_version(encoded: int) -> str:
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def _cudart_problem(cudart: Any, user: str = "cuda-python") -> Optional[str]:
    """Why the CUDA runtime offers no device (one line), or None when it offers one.

    cudaGetDeviceCount says cudaErrorInsufficientDriver both when no driver is loaded and when the
    driver is older than the runtime; the driver's version (0 when absent) tells them apart, and
    they need different fixes. ``user`` names what needs the newer CUDA.
    """
    out = cudart.cudaGetDeviceCount()
    err, count = (out[0], out[1]) if isinstance(out, tuple) else (out, None)
    code = _code(err)
    if code == _INSUFFICIENT_DRIVER:
        driver = _version_of(cudart, "cudaDriverGetVersion")
        if driver:
            runtime = _version_of(cudart, "cudaRuntimeGetVersion")
            built = f"CUDA {_cuda_version(runtime)}" if runtime else "a newer CUDA"
            return (
                "the NVIDIA driver is too old for this CUDA runtime (cudaErrorInsufficientDriver): "
                f"the driver supports CUDA {_cuda_version(driver)}, {user} was built for {built}; "
                f"install {user} for CUDA {driver // 1000}.x (cuda-python: pip install "
                f"'cuda-python=={driver // 1000}.*'), or update the driver (on a Jetson: JetPack)"
            )
        return (
            "no CUDA device: no NVIDIA driver is loaded (is this a machine with an NVIDIA GPU "
            "and driver, or a container run without --runtime nvidia?)"
        )
    if code == _NO_DEVICE or (code == 0 and not count):
        return (
            "no CUDA device: the CUDA runtime finds no GPU (is this a machine "
            "with an NVIDIA GPU and driver, or a container run without "
            "--runtime nvidia?)"
        )
    if code != 0:
        return f"no CUDA device: cudaGetDeviceCount failed with CUDA error {code}"
    return None


def _version_of(cudart: Any, fn: str) -> int:
    try:
        out = getattr(cudart, fn)()
        err, value = (out[0], out[1]) if isinstance(out, tuple) else (0, out)
        return int(value or 0) if _code(err) == 0 else 0
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return 0


def driver_problem() -> Optional[str]:
    """Why TensorRT cannot start CUDA when it is not a missing GPU, else None (never raises).

    TensorRT fails the same way for a missing GPU and an old driver, so its callers ask cuda-python.
    With a GPU visible to cuda-python, TensorRT's own CUDA may still want a newer driver; the line
    then says so, with the driver's version.
    """
    try:
        cudart = _import_cudart()
    except ImportError:
        return None
    try:
        problem = _cudart_problem(cudart, "TensorRT (and cuda-python)")
        driver = _version_of(cudart, "cudaDriverGetVersion")
    except Exception:  # noqa: BLE001 - a diagnosis must not raise
        return None
    if problem is None and driver:
        return (
            f"cuda-python sees a GPU with a driver for CUDA {_cuda_version(driver)}, so TensorRT's "
            "own CUDA may need a newer driver ('CUDA initialization failure with error: 35' in "
            f"TensorRT's log); install the TensorRT build for CUDA {driver // 1000}.x, or update "
            "the driver (on a Jetson: JetPack)"
        )
    if problem is None or problem.startswith("no CUDA device"):
        return None
    return problem


def _check_index(device: int, count: int) -> None:
    if not 0 <= device < count:
        raise GlimmerError(
            f"--device {device}: no such CUDA device (this machine has {count}: "
            f"{', '.join(str(i) for i in range(count))})"
        )


def _check_size(nbytes: int, host: int, device: int) -> None:
    if nbytes > host or nbytes > device:
        raise GlimmerError(
            f"copy of {nbytes} bytes overruns a buffer (host {host}, device {device})"
        )


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime  # cuda-python >= 12.6 layout

        return runtime
    except ImportError:
        pass
    from cuda import cudart  # older cuda-python layout; ImportError propagates

    return cudart


def _import_pycuda() -> Any:
    import pycuda.driver as driver

    return driver


_LOADERS = {"cuda-python": (_import_cudart, CudaPython), "pycuda": (_import_pycuda, PyCuda)}


def open_cuda(binding: Optional[str] = None, device: int = 0) -> CudaMem:
    """Open device ``device`` through ``binding`` (or ``$GLIMMER_CUDA``, or the first installed).

    Raises GlimmerError when no binding is installed, or when there is no CUDA device.
    """
    binding = binding or os.environ.get(ENV_BINDING) or None
    if binding is not None and binding not in BINDINGS:
        raise GlimmerError(f"{ENV_BINDING}={binding!r}: expected one of {', '.join(BINDINGS)}")
    order = [binding] if binding else list(BINDINGS)
    missing = []
    for name in order:
        importer, cls = _LOADERS[name]
        try:
            module = importer()
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
            continue
        return cls(module, device)
    raise GlimmerError(
        "no CUDA Python binding: {} not importable; {}".format(" and ".join(missing), _INSTALL_HINT)
    )


def probe(binding: Optional[str] = None, device: int = 0) -> Tuple[bool, str]:
    """(usable, reason) without raising: for status lines and ``tensorrt_status``."""
    try:
        cuda = open_cuda(binding, device)
    except GlimmerError as exc:
        return False, str(exc)
    try:
        major, minor = cuda.compute_capability()
        return True, f"{cuda.device_name()} (sm_{major}{minor}) via {cuda.name}"
    finally:
        cuda.close()
