"""The CUDA memory interface: binding selection, error mapping, copies and graph capture.

The cuda-python adapter is exercised against the fake runtime of tests/helpers/fake_tensorrt.py
(whose "device" memory is host memory, so copies really move bytes) and, for the no-GPU error,
against the real cuda-python when it is installed; the pycuda adapter against a small fake driver
module.
"""

import ctypes
import sys
import threading
import types

import numpy as np
import pytest
from fake_tensorrt import FakeCudaRuntime, install_fake_cuda

from glimmer.runtime.backends.trt import cuda as cuda_mem
from glimmer.runtime.core.errors import GlimmerError


def test_real_cuda_python_without_a_gpu_says_no_cuda_device(monkeypatch):
    runtime = pytest.importorskip("cuda.bindings.runtime")
    if runtime.cudaGetDeviceCount()[0] == runtime.cudaError_t.cudaSuccess:
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(GlimmerError, match="^no CUDA device"):
        cuda_mem.open_cuda("cuda-python")
    ok, reason = cuda_mem.probe("cuda-python")
    assert not ok and reason.startswith("no CUDA device")


def test_binding_choice_errors(monkeypatch):
    monkeypatch.setenv("GLIMMER_CUDA", "cupy")
    with pytest.raises(
        GlimmerError, match="GLIMMER_CUDA='cupy': expected one of cuda-python, pycuda"
    ):
        cuda_mem.open_cuda()
    monkeypatch.delenv("GLIMMER_CUDA")
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(GlimmerError) as err:
        cuda_mem.open_cuda()
    assert str(err.value).startswith("no CUDA Python binding: cuda-python (")
    assert "pip install cuda-python" in str(err.value) and "pycuda (" in str(err.value)


def test_copies_round_trip_through_device_memory(fake_cuda):
    cuda = cuda_mem.open_cuda()
    assert (cuda.name, cuda.device_name(), cuda.compute_capability()) == (
        "cuda-python",
        "Orin (fake)",
        (8, 7),
    )
    stream = cuda.stream()
    src, dst = cuda.pinned((2, 3), np.float32), cuda.pinned((2, 3), np.float32)
    dev = cuda.alloc(src.nbytes)
    src.array[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    # The numpy view is the pinned allocation itself, not a copy of it.
    assert ctypes.c_float.from_address(src.ptr + 4).value == 1.0
    cuda.h2d_async(dev, src, src.nbytes, stream)
    cuda.d2h_async(dst, dev, dst.nbytes, stream)
    cuda.synchronize(stream)
    np.testing.assert_array_equal(dst.array, src.array)
    with pytest.raises(GlimmerError, match="overruns a buffer"):
        cuda.h2d_async(dev, src, src.nbytes + 4, stream)
    cuda.free(dev)
    with pytest.raises(
        GlimmerError, match="CUDA error in cudaMemcpyAsync: fake CUDA error cudaErrorInvalidValue"
    ):
        cuda.h2d_async(dev, src, src.nbytes, stream)
    for buf in (src, dst):
        cuda.free(buf)
    cuda.close()
    assert fake_cuda.allocs == {} and fake_cuda.streams == {}


def test_graph_capture_replays_with_current_buffer_contents(fake_cuda):
    cuda = cuda_mem.open_cuda()
    assert cuda.supports_graphs
    stream = cuda.stream()
    src, dst = cuda.pinned((4,), np.float32), cuda.pinned((4,), np.float32)
    dev = cuda.alloc(16)
    cuda.begin_capture(stream)
    cuda.h2d_async(dev, src, 16, stream)
    cuda.d2h_async(dst, dev, 16, stream)
    graph = cuda.end_capture(stream)
    assert graph is not None and not dst.array.any()  # captured, not executed
    for value in (3.0, 7.0):
        src.array[:] = value
        cuda.launch_graph(graph, stream)
        cuda.synchronize(stream)
        assert (dst.array == value).all()
    cuda.destroy_graph(graph)
    fake_cuda.cudaStreamBeginCapture(stream, 0)
    fake_cuda.invalidate(stream)
    assert cuda.end_capture(stream) is None  # an invalidated capture means: no graph
    cuda.close()


def test_no_device_and_probe(monkeypatch):
    rt = FakeCudaRuntime(devices=0)
    install_fake_cuda(monkeypatch, rt)
    ok, reason = cuda_mem.probe()
    assert not ok and reason.startswith("no CUDA device: the CUDA runtime finds no GPU")
    rt.devices = 1
    assert cuda_mem.probe() == (True, "Orin (fake) (sm_87) via cuda-python")


def test_old_driver_is_not_reported_as_no_gpu(monkeypatch):
    """cudaErrorInsufficientDriver with a driver loaded: too old for the runtime, say so."""
    rt = FakeCudaRuntime(driver_version=11040, runtime_version=12060)
    install_fake_cuda(monkeypatch, rt)
    with pytest.raises(GlimmerError) as err:
        cuda_mem.open_cuda()
    message = str(err.value)
    assert message.startswith("the NVIDIA driver is too old for this CUDA runtime")
    assert "driver supports CUDA 11.4, cuda-python was built for CUDA 12.6" in message
    assert "pip install 'cuda-python==11.*'" in message and "\n" not in message
    ok, reason = cuda_mem.probe()
    assert not ok and reason == message
    assert "TensorRT (and cuda-python)" in cuda_mem.driver_problem()
    rt.driver_version = 0  # no driver at all gives the same error code
    assert cuda_mem.probe()[1].startswith("no CUDA device: no NVIDIA driver is loaded")
    assert cuda_mem.driver_problem() is None


def test_driver_problem_with_a_visible_gpu_points_at_tensorrts_cuda(fake_cuda):
    assert "TensorRT's own CUDA may need a newer driver" in cuda_mem.driver_problem()


def test_destroy_stream_frees_only_that_stream(fake_cuda):
    cuda = cuda_mem.open_cuda()
    first, second = cuda.stream(), cuda.stream()
    cuda.destroy_stream(first)
    assert list(fake_cuda.streams) == [second]
    cuda.close()
    assert fake_cuda.streams == {}


def fake_pycuda():
    """Just enough of ``pycuda.driver`` for the adapter: host-memory "device" allocations."""
    drv = types.ModuleType("pycuda.driver")
    drv.calls = []

    class Allocation:
        def __init__(self, n):
            self.buf = (ctypes.c_byte * n)()

        def __int__(self):
            return ctypes.addressof(self.buf)

        def free(self):
            drv.calls.append("free")

    class Stream:
        def __init__(self):
            self.handle = 0xABC + len(drv.calls)

        def synchronize(self):
            drv.calls.append("sync")

    per_thread = threading.local()  # CUDA driver contexts are current per thread

    class Context:
        get_current = staticmethod(lambda: getattr(per_thread, "ctx", None))

        def push(self):
            drv.calls.append("push")
            per_thread.ctx = self

        def pop(self):
            drv.calls.append("pop")
            per_thread.ctx = None

    class Device:
        count = staticmethod(lambda: 1)

        def __init__(self, i):
            pass

        name = staticmethod(lambda: "Xavier (fake)")
        compute_capability = staticmethod(lambda: (7, 2))
        retain_primary_context = staticmethod(Context)

    drv.init, drv.Device, drv.Stream, drv.Context = (lambda: None), Device, Stream, Context
    drv.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    drv.mem_alloc = Allocation
    drv.memcpy_htod_async = lambda dst, src, stream: ctypes.memmove(
        int(dst), src.ctypes.data, src.nbytes
    )
    drv.memcpy_dtoh_async = lambda dst, src, stream: ctypes.memmove(
        dst.ctypes.data, int(src), dst.nbytes
    )
    return drv


def test_pycuda_adapter_round_trip(monkeypatch):
    drv = fake_pycuda()
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    monkeypatch.setitem(sys.modules, "pycuda", pkg)
    monkeypatch.setitem(sys.modules, "pycuda.driver", drv)
    cuda = cuda_mem.open_cuda("pycuda")
    assert (cuda.device_name(), cuda.compute_capability(), cuda.supports_graphs) == (
        "Xavier (fake)",
        (7, 2),
        False,
    )
    stream = cuda.stream()
    src, dst = cuda.pinned((5,), np.int32), cuda.pinned((5,), np.int32)
    dev = cuda.alloc(src.nbytes)
    src.array[:] = [1, 2, 3, 4, 5]
    cuda.h2d_async(dev, src, 12, stream)  # only the first three values
    cuda.d2h_async(dst, dev, 12, stream)
    cuda.synchronize(stream)
    assert dst.array.tolist() == [1, 2, 3, 0, 0]
    with pytest.raises(GlimmerError, match="CUDA graphs are not available through pycuda"):
        cuda.begin_capture(stream)
    # Another thread (the pipeline's inference worker) gets the context pushed before it copies.
    worker = threading.Thread(target=cuda.synchronize, args=(stream,))
    worker.start()
    worker.join()
    cuda.free(dev)
    cuda.close()
    assert drv.calls == ["push", "sync", "push", "sync", "free", "pop"]


def test_pycuda_close_pops_only_its_own_context(monkeypatch, fake_cuda):
    from fake_tensorrt import install_fake_pycuda, make_fake_pycuda

    drv = make_fake_pycuda(fake_cuda)
    install_fake_pycuda(monkeypatch, drv)
    cuda = cuda_mem.open_cuda()
    other = drv.Context()
    other.push()  # another library's context on top of ours
    cuda.close()
    assert drv.stacks() == [[drv.Device(0).retain_primary_context(), other]]
