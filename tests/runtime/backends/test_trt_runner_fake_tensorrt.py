"""TensorRTBackend against the FAKE tensorrt module and a fake CUDA runtime
(tests/helpers/fake_tensorrt.py).

The fake engine computes a known function of whatever sits in the device buffer bound to its input
and writes the device buffer bound to its output, so correct outputs prove our copies, bindings,
shapes and CUDA-graph replay line up, per execution API generation. Nothing here ran real TensorRT.
"""

import numpy as np
import pytest
from fake_tensorrt import (
    GENERATIONS,
    FakeCudaRuntime,
    install_fake_cuda,
    install_fake_tensorrt,
    reference_output,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.runtime.backends.base import TensorSpec
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.backends.trt.runner import TensorRTBackend
from glimmer.runtime.core.errors import GlimmerError

ALL = sorted(GENERATIONS)


def quiet(_msg):
    pass


def make_engine(tmp_path, batch=1, precision="fp32"):
    onnx_path = write_tiny_onnx(tmp_path / "tiny.onnx", batch=batch)
    engine = tmp_path / f"tiny.{precision}.engine"
    trt_build.build_engine(onnx_path, engine, precision, meta=tiny_meta(batch), log=quiet)
    return engine


def frames(n, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, 8, 8)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("generation", ALL)
def test_outputs_and_cuda_graph_replay_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda
):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    engine = make_engine(tmp_path)
    with TensorRTBackend(engine) as backend:
        for x in frames(4):
            (y,) = backend.infer(x)
            np.testing.assert_allclose(y, reference_output(x, (1, 4)), rtol=1e-6)
        assert backend.graph_state == "on"
        api = "bindings" if generation == "8.4" else "tensor names"
        assert api in backend.describe() and "CUDA graphs on" in backend.describe()
    # Frame 1 ran plainly, then was captured once; frames 2-4 are graph launches.
    assert trt.stats["enqueues"] == 2 and fake_cuda.counts["graph_launch"] == 3
    assert fake_cuda.counts["sync"] == 4  # exactly one synchronize per frame
    # Everything allocated was freed.
    assert fake_cuda.allocs == {} and fake_cuda.streams == {} and fake_cuda.execs == {}


@pytest.mark.parametrize("generation", ["8.4", "10.3"])
def test_capture_failure_falls_back_to_plain_enqueue_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda
):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda, fail_under_capture=True)
    engine = make_engine(tmp_path)
    lines = []
    with TensorRTBackend(engine, log=lines.append) as backend:
        for x in frames(3):
            (y,) = backend.infer(x)
            np.testing.assert_allclose(y, reference_output(x, (1, 4)), rtol=1e-6)
        assert backend.graph_state.startswith("off (enqueue failed under capture")
    assert trt.stats["enqueues"] == 3 and fake_cuda.counts.get("graph_launch", 0) == 0
    assert len(lines) == 1 and "CUDA graph capture not possible" in lines[0]
    assert fake_cuda.graphs == {} and fake_cuda.execs == {}


def test_graphs_can_be_switched_off_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    with TensorRTBackend(make_engine(tmp_path), cuda_graphs=False) as backend:
        for x in frames(3):
            backend.infer(x)
        assert backend.graph_state == "off (disabled)"
    assert trt.stats["enqueues"] == 3 and "graph_launch" not in fake_cuda.counts


@pytest.mark.parametrize("generation", ["8.4", "8.5", "8.6", "11.4"])
def test_dynamic_batch_shapes_with_fake_tensorrt(generation, tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    engine = make_engine(tmp_path, batch=None)
    with TensorRTBackend(engine) as backend:
        assert backend.inputs == [TensorSpec("images", (None, 3, 8, 8), "float32")]
        for n in (2, 3, 3, 1):
            (x,) = frames(1, batch=n, seed=n)
            (y,) = backend.infer(x)
            assert y.shape == (n, 4)
            np.testing.assert_allclose(y, reference_output(x, (n, 4)), rtol=1e-6)
            assert backend.graph_state == "on"  # re-captured after every new batch size
        with pytest.raises(GlimmerError, match="batch of 5 exceeds the engine's maximum batch 4"):
            backend.infer(frames(1, batch=5)[0])
    # Each new size: one plain enqueue (TensorRT's first after a shape change cannot be captured),
    # then one captured; the repeated 3 is the only graph launch. No graph ran a stale shape.
    assert trt.stats["enqueues"] == 6 and fake_cuda.counts["graph_launch"] == 1
    assert trt.stats["stale_graph_replays"] == 0


def test_fake_refuses_capture_after_a_shape_change(tmp_path, monkeypatch, fake_cuda):
    """The fake is as strict as TensorRT: the first enqueue on a new context or after new input
    shapes does deferred work that cannot be captured; a plain enqueue first makes it capturable,
    and a graph replayed after the shapes changed is counted as stale."""
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = make_engine(tmp_path, batch=None)
    runtime = trt.Runtime(None)
    context = runtime.deserialize_cuda_engine(engine.read_bytes()).create_execution_context()
    stream = fake_cuda.cudaStreamCreateWithFlags(1)[1]
    buffers = {n: fake_cuda.cudaMalloc(4 * 3 * 8 * 8 * 4)[1] for n in ("images", "logits")}
    for name, ptr in buffers.items():
        context.set_tensor_address(name, ptr)

    def captured():
        fake_cuda.cudaStreamBeginCapture(stream, 1)
        ok = context.execute_async_v3(stream)
        err, graph = fake_cuda.cudaStreamEndCapture(stream)
        return ok and err == 0

    assert context.set_input_shape("images", (2, 3, 8, 8))
    assert not captured()  # a new context
    assert context.execute_async_v3(stream) and captured()
    graph_exec = fake_cuda.cudaGraphInstantiateWithFlags(max(fake_cuda.graphs), 0)[1]
    assert context.set_input_shape("images", (3, 3, 8, 8))
    assert not captured()  # new shapes: capture again only after a plain enqueue
    fake_cuda.cudaGraphLaunch(graph_exec, stream)  # the old graph: still batch 2
    assert trt.stats["stale_graph_replays"] == 1


def test_specs_come_from_the_sidecar_before_activation(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    backend = TensorRTBackend(make_engine(tmp_path, precision="fp16"))
    assert backend.inputs == [TensorSpec("images", (1, 3, 8, 8), "float32")]
    assert backend.outputs == [TensorSpec("logits", (1, 4), "float32")]
    assert backend.meta.precision == "fp16" and backend.meta.class_names[1] == "Fire"
    with pytest.raises(GlimmerError, match="before activate"):
        backend.infer(frames(1)[0])
    with backend:
        with pytest.raises(GlimmerError, match=r"expects shape \[1, 3, 8, 8\]"):
            backend.infer(np.zeros((1, 3, 4, 4), np.float32))


def test_engine_from_another_tensorrt_or_gpu_is_refused_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda
):
    install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    engine = make_engine(tmp_path)
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    with pytest.raises(GlimmerError, match="TensorRT 10.3.0.30 could not deserialize this engine"):
        TensorRTBackend(engine).activate()
    install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    fake_cuda.cc = (7, 2)
    with pytest.raises(GlimmerError, match="rebuild it on this device"):
        TensorRTBackend(engine).activate()
    assert fake_cuda.allocs == {}  # a failed activation leaves nothing allocated


def test_damaged_or_orphaned_engine_is_refused(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = make_engine(tmp_path)
    engine.write_bytes(engine.read_bytes()[:-3])
    with pytest.raises(GlimmerError, match="does not match the sha256 in its sidecar"):
        TensorRTBackend(engine).activate()
    trt_build.sidecar_path(engine).unlink()
    # Without its sidecar it is an engine like trtexec's, with no metadata beside it.
    with pytest.raises(GlimmerError, match="no metadata for this engine.*provide one of: --meta"):
        TensorRTBackend(engine)
    with pytest.raises(GlimmerError, match="engine file not found"):
        TensorRTBackend(tmp_path / "missing.engine")


def test_from_onnx_builds_once_through_the_cache_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda
):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    onnx_path = write_tiny_onnx(tmp_path / "tiny.onnx")
    for _ in range(2):
        with TensorRTBackend.from_onnx(onnx_path, "fp16", tmp_path / "cache", log=quiet) as backend:
            (x,) = frames(1)
            np.testing.assert_allclose(backend.infer(x)[0], reference_output(x, (1, 4)), rtol=1e-6)
    assert trt.stats["builds"] == 1


def test_older_cuda_python_layout_with_fake_tensorrt(tmp_path, monkeypatch):
    rt = FakeCudaRuntime()
    install_fake_cuda(monkeypatch, rt, layout="cudart")  # `from cuda import cudart`
    install_fake_tensorrt(monkeypatch, "8.6", rt)
    with TensorRTBackend(make_engine(tmp_path)) as backend:
        (x,) = frames(1)
        np.testing.assert_allclose(backend.infer(x)[0], reference_output(x, (1, 4)), rtol=1e-6)


def test_handed_over_metadata_cannot_relabel_the_precision(tmp_path, monkeypatch, fake_cuda):
    """An ONNX's metadata says fp16; the engine built from it says what it is (fp32 here)."""
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    meta = tiny_meta(1)
    meta.precision = "fp16"
    backend = TensorRTBackend(make_engine(tmp_path, precision="fp32"), meta=meta)
    assert backend.meta.precision == "fp32" and backend.meta.class_names == meta.class_names
    assert ", fp32, " in backend.describe()


def test_metadata_override_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    meta = tiny_meta(1)
    meta.class_names = ["w", "x", "y", "z"]
    assert TensorRTBackend(make_engine(tmp_path), meta=meta).meta.class_names == [
        "w",
        "x",
        "y",
        "z",
    ]
