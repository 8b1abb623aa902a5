"""open_backend's runtime options: --half, --device, --no-cuda-graph, --dla-core.

ONNX Runtime cases run the real ONNX Runtime (CPU provider only here). TensorRT cases run against
the FAKE tensorrt module and a fake CUDA runtime (tests/helpers/fake_tensorrt.py): they prove which
engine is asked for, how it is keyed, named and opened, and the error lines, not that a real engine
builds or runs on a DLA or a second GPU. Nothing here ran real TensorRT.
"""

import json

import numpy as np
import pytest
from fake_tensorrt import (
    PLAN_MAGIC,
    FakeCudaRuntime,
    install_fake_cuda,
    install_fake_tensorrt,
    reference_output,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.runtime.backends.base import parse_device
from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.core.errors import GlimmerError

CPU_HALF = (
    "--half: ONNX Runtime on the CPU has no FP16 path; use --backend tensorrt on a GPU or drop "
    "--half"
)


def quiet(_msg):
    pass


@pytest.fixture
def onnx_file(tmp_path):
    return write_tiny_onnx(tmp_path / "tiny.onnx")


def fake(monkeypatch, generation="10.3", **cuda):
    rt = FakeCudaRuntime(**cuda)
    install_fake_cuda(monkeypatch, rt)
    trt = install_fake_tensorrt(monkeypatch, generation, rt)
    return rt, trt


def plan(engine):
    return json.loads(engine.read_bytes()[len(PLAN_MAGIC) :])


def run_once(backend, n=3):
    rng = np.random.default_rng(0)
    with backend:
        for _ in range(n):
            x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
            (y,) = backend.infer(x)
            np.testing.assert_allclose(y, reference_output(x, (1, 4)), rtol=1e-6)
        return backend.graph_state, backend.describe()


# -- the device vocabulary -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,want",
    [(None, None), ("", None), ("cpu", "cpu"), ("CPU", "cpu"), ("0", 0), ("1", 1)]
    + [("cuda:0", 0), ("cuda:2", 2), ("cuda", 0), (3, 3)],
)
def test_device_vocabulary_is_ultralytics(text, want):
    assert parse_device(text) == want


@pytest.mark.parametrize(
    "text,message",
    [
        ("0,1", "--device 0,1: one device only"),
        ("mps", "--device mps: expected cpu, a CUDA index (0, 1, ...) or cuda:N"),
        ("cuda:x", "--device cuda:x: expected cpu"),
        ("-1", "--device -1: expected cpu"),
    ],
)
def test_bad_device_is_one_line(onnx_file, text, message):
    with pytest.raises(GlimmerError) as err:
        open_backend(onnx_file, device=text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


# -- ONNX Runtime (real, CPU provider) -------------------------------------------------------------


@pytest.mark.parametrize("device", [None, "cpu"])
def test_half_on_onnx_runtime_cpu_is_the_documented_line(onnx_file, device):
    with pytest.raises(GlimmerError) as err:
        open_backend(onnx_file, "auto", half=True, device=device)
    assert str(err.value) == CPU_HALF


def test_cpu_device_runs_onnx_runtime_cpu(onnx_file):
    backend = open_backend(onnx_file, "auto", device="cpu")
    with backend:
        assert backend.providers == ["CPUExecutionProvider"]


def test_gpu_index_without_a_gpu_provider_is_one_line(onnx_file):
    with pytest.raises(GlimmerError, match=r"^--device 0: this ONNX Runtime has no GPU provider"):
        open_backend(onnx_file, "onnxruntime", device="cuda:0")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(backend="tensorrt", device="cpu"), "--device cpu: TensorRT runs only on a GPU"),
        (dict(backend="onnxruntime", dla_core=0), "--dla-core 0: the DLA is reached only"),
        (dict(device="cpu", dla_core=0), "--dla-core 0 and --device cpu exclude each other"),
        (dict(dla_core=-1), "--dla-core must be a DLA core index (0, 1, ...), got -1"),
    ],
)
def test_contradictory_options_are_one_line(onnx_file, kwargs, message):
    with pytest.raises(GlimmerError) as err:
        open_backend(onnx_file, **kwargs)
    assert str(err.value).startswith(message)


def test_engine_on_cpu_is_refused(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(GlimmerError, match="^--device cpu: TensorRT runs only on a GPU"):
        open_backend(engine, device="cpu")


# -- TensorRT (fake) -------------------------------------------------------------------------------


@pytest.mark.parametrize("generation", ["8.6", "10.3"])
def test_half_builds_an_fp16_engine_keyed_apart_with_fake_tensorrt(
    generation, onnx_file, tmp_path, monkeypatch
):
    fake(monkeypatch, generation)
    cache = tmp_path / "cache"
    fp32 = open_backend(onnx_file, "tensorrt", cache_dir=cache, log=quiet)
    fp16 = open_backend(onnx_file, "tensorrt", cache_dir=cache, log=quiet, half=True)
    assert fp32.engine_path.name.startswith("tiny.fp32.")
    assert fp16.engine_path.name.startswith("tiny.fp16.")
    assert fp16.sidecar["precision"] == "fp16" and plan(fp16.engine_path)["flags"] == ["FP16"]
    assert fp32.sidecar["engine_key"] != fp16.sidecar["engine_key"]
    assert fp16.meta.precision == "fp16"
    run_once(fp16)


def test_half_on_a_gpu_without_fast_fp16_says_so_with_fake_tensorrt(
    onnx_file, tmp_path, monkeypatch
):
    fake(monkeypatch, "8.6", name="NVIDIA GeForce GTX 1080 (fake)", cc=(6, 1))
    lines = []
    backend = open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=lines.append, half=True)
    assert backend.sidecar["precision"] == "fp32" and backend.engine_path.name.startswith(
        "tiny.fp32."
    )
    said = [line for line in lines if "no fast FP16" in line]
    assert len(said) == 1 and "GTX 1080" in said[0] and "asks for fp16" in said[0]


def test_half_on_a_prebuilt_engine_checks_its_precision_with_fake_tensorrt(
    onnx_file, tmp_path, monkeypatch
):
    fake(monkeypatch)
    for precision in ("fp32", "fp16"):
        trt_build.build_engine(
            onnx_file, tmp_path / f"tiny.{precision}.engine", precision, meta=tiny_meta(), log=quiet
        )
    with pytest.raises(GlimmerError) as err:
        open_backend(tmp_path / "tiny.fp32.engine", half=True)
    assert str(err.value).startswith("--half: tiny.fp32.engine is an FP32 engine")
    assert "glimmer-export NAME.onnx --fp16" in str(err.value)
    backend = open_backend(tmp_path / "tiny.fp16.engine", half=True)  # a no-op
    assert backend.sidecar["precision"] == "fp16"


def test_device_index_builds_and_runs_on_that_device_with_fake_tensorrt(
    onnx_file, tmp_path, monkeypatch
):
    rt, _ = fake(monkeypatch, devices=2)
    on0 = open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, device="0")
    on1 = open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, device="cuda:1")
    assert plan(on0.engine_path)["device"] == 0 and plan(on1.engine_path)["device"] == 1
    assert on1.sidecar["builder_options"]["device"] == 1
    assert on0.sidecar["engine_key"] != on1.sidecar["engine_key"]
    _, described = run_once(on1)
    assert "cuda:1" in described and rt.current_device() == 1


def test_missing_device_is_one_line_with_fake_tensorrt(onnx_file, tmp_path, monkeypatch):
    fake(monkeypatch, devices=2)
    with pytest.raises(GlimmerError) as err:
        open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, device="3")
    assert str(err.value) == "--device 3: no such CUDA device (this machine has 2: 0, 1)"


def test_no_cuda_graph_never_captures_with_fake_tensorrt(onnx_file, tmp_path, monkeypatch):
    rt, trt = fake(monkeypatch)
    state, described = run_once(
        open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, cuda_graph=False)
    )
    assert state == "off (disabled)" and "CUDA graphs off (disabled)" in described
    assert rt.counts.get("graph_launch", 0) == 0 and trt.stats["enqueues"] == 3
    state, _ = run_once(open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet))
    assert state == "on" and rt.counts["graph_launch"] == 2  # the default: captured after frame 1


@pytest.mark.parametrize("generation", ["8.5", "10.3"])
def test_dla_core_builds_for_that_core_with_gpu_fallback_with_fake_tensorrt(
    generation, onnx_file, tmp_path, monkeypatch
):
    fake(monkeypatch, generation, dla_cores=2)
    gpu = open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, half=True)
    dla = open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, half=True, dla_core=1)
    assert ".fp16.dla1." in dla.engine_path.name and ".dla" not in gpu.engine_path.name
    options = dla.sidecar["builder_options"]
    assert options["dla_core"] == 1 and options["gpu_fallback"] and options["dla_cores"] == 2
    assert plan(dla.engine_path)["dla_core"] == 1 and plan(gpu.engine_path)["dla_core"] is None
    assert dla.sidecar["engine_key"] != gpu.sidecar["engine_key"]
    _, described = run_once(dla)  # the Runtime is put on core 1, or the fake refuses the engine
    assert "DLA core 1" in described
    # the prebuilt engine: on the core it was built for, and refused on another or on the GPU
    assert open_backend(dla.engine_path, dla_core=1).dla_core == 1
    with pytest.raises(GlimmerError, match=r"^--dla-core 0: .* was built for DLA core 1"):
        open_backend(dla.engine_path, dla_core=0)
    with pytest.raises(GlimmerError, match=r"^--dla-core 0: .* was built for the GPU"):
        open_backend(gpu.engine_path, dla_core=0)


@pytest.mark.parametrize(
    "cores,kwargs,message",
    [
        (2, dict(), "--dla-core 0: the DLA runs FP16 or INT8 only and tiny.onnx is FP32"),
        (0, dict(half=True), "--dla-core 0: this device has no DLA (TensorRT's num_DLA_cores"),
        (2, dict(half=True, dla_core=2), "--dla-core 2: this device has 2 DLA cores (0, 1)"),
    ],
)
def test_dla_problems_are_one_line_with_fake_tensorrt(
    onnx_file, tmp_path, monkeypatch, cores, kwargs, message
):
    fake(monkeypatch, dla_cores=cores)
    kwargs.setdefault("dla_core", 0)
    with pytest.raises(GlimmerError) as err:
        open_backend(onnx_file, "tensorrt", cache_dir=tmp_path, log=quiet, **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert not list(tmp_path.glob("*.engine"))


def test_dla_build_of_fp32_is_refused_by_the_builder_with_fake_tensorrt(
    onnx_file, tmp_path, monkeypatch
):
    """build_engine itself (as glimmer-export would call it) refuses FP32 on the DLA."""
    fake(monkeypatch, dla_cores=1)
    with pytest.raises(GlimmerError, match="DLA runs FP16 or INT8 only, not FP32"):
        trt_build.build_engine(
            onnx_file, tmp_path / "t.engine", "fp32", meta=tiny_meta(), log=quiet, dla_core=0
        )
