"""ONNX Runtime backend and the loader: metadata from the ONNX, specs, numerical agreement, clear
errors, and backend selection (TensorRT paths with fake trt_build / backend_trt modules only: no
TensorRT is installed here and no engine is built or run)."""

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import glimmer.runtime.backends.trt as trt_pkg
from glimmer.runtime.backends import factory as loader
from glimmer.runtime.backends.factory import open_backend, resolve_backend
from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0
B = np.array([0.5, -0.5, 0.0, 1.0], np.float32)


def linear_classifier(path: Path, props=None, batch="N") -> Path:
    """logits = GlobalAveragePool(x) @ W + B, a model whose output is easy to compute by hand."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "linear",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (props or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


META = ModelMeta(
    task="classify",
    name="linear",
    class_names=["a", "b", "c", "d"],
    input_size=(32, 32),
    precision="fp16",
    extra={"dataset": "synthetic"},
)


@pytest.fixture()
def model(tmp_path):
    return linear_classifier(
        tmp_path / "linear.onnx", {METADATA_KEY: META.to_json(), "author": "t"}
    )


def test_ort_backend_reads_metadata_specs_and_agrees_with_numpy(model):
    with OnnxRuntimeBackend(model, threads=1) as be:
        assert be.meta == META
        assert [(s.name, s.shape, s.dtype) for s in be.inputs] == [
            ("images", (None, 3, 32, 32), "float32")
        ]
        assert [(s.name, s.shape) for s in be.outputs] == [("logits", (None, 4))]
        assert "CPUExecutionProvider" in be.describe() and "1 threads" in be.describe()
        x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
        (logits,) = be.infer(x)
        np.testing.assert_allclose(logits, x.mean(axis=(2, 3)) @ W + B, rtol=1e-5, atol=1e-5)
        with pytest.raises(
            GlimmerError, match="expects shape \\['\\?', 3, 32, 32\\], got \\[1, 3, 16, 16\\]"
        ):
            be.infer(np.zeros((1, 3, 16, 16), np.float32))
        with pytest.raises(GlimmerError, match="expects float32, got float64"):
            be.infer(np.zeros((1, 3, 32, 32)))


def test_one_session_factory_for_paths_and_bytes(model):
    """runtime/backends/ort/session.py: deployment's options, a path or serialized bytes, one
    error."""
    from glimmer.runtime.backends.ort.session import make_session, session_options

    x = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    want = x.mean(axis=(2, 3)) @ W + B
    for source in (model, model.read_bytes()):
        session = make_session(source, threads=1)
        assert session.get_providers() == ["CPUExecutionProvider"]
        np.testing.assert_allclose(session.run(None, {"images": x})[0], want, rtol=1e-5, atol=1e-5)
    opts = session_options(threads=2, simulate_qdq=True)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (
        2,
        1,
        3,
    )
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.disable_quant_qdq") == "1"
    with pytest.raises(RuntimeError):  # spinning allowed: the entry is not set at all
        session_options(spin=True).get_session_config_entry("session.intra_op.allow_spinning")
    with pytest.raises(GlimmerError, match="^the ONNX model: ONNX Runtime cannot load the model"):
        make_session(b"\xff" * 64)
    with pytest.raises(GlimmerError, match="threads must be at least 1, got 0"):
        make_session(model, threads=0)


def test_wire_reader_matches_onnx_metadata(model):
    props = read_onnx_metadata(model)
    assert props == {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert ModelMeta.from_props(props) == META


def test_model_without_metadata_is_a_clear_error(tmp_path):
    bare = linear_classifier(tmp_path / "bare.onnx")
    with pytest.raises(GlimmerError, match="no model metadata"):
        _ = OnnxRuntimeBackend(bare).meta
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(GlimmerError, match="not an ONNX model"):
        read_onnx_metadata(garbage)
    with pytest.raises(GlimmerError, match="ONNX Runtime cannot load the model"):
        _ = OnnxRuntimeBackend(garbage).meta


def test_ultralytics_metadata_is_understood(tmp_path):
    path = linear_classifier(
        tmp_path / "yolo.onnx",
        {
            "names": "{0: 'car', 1: 'person'}",
            "imgsz": "[640, 640]",
            "stride": "32",
            "task": "detect",
        },
    )
    meta = ModelMeta.from_props(read_onnx_metadata(path))
    assert meta.task == "detect" and meta.class_names == ["car", "person"] and meta.letterbox


@pytest.mark.parametrize(
    "name, backend, message",
    [
        (
            "m.pt",
            "auto",
            "expected an .onnx or a TensorRT .engine "
            "(a checkpoint: export it first with glimmer-export)",
        ),
        ("m.engine", "onnxruntime", "a TensorRT engine runs only with --backend tensorrt"),
        ("m.onnx", "cuda", "--backend must be one of auto, onnxruntime, tensorrt"),
    ],
)
def test_loader_rejects_wrong_combinations(tmp_path, name, backend, message):
    path = tmp_path / name
    path.write_bytes(b"x")
    with pytest.raises(GlimmerError) as info:
        open_backend(path, backend)
    assert message in str(info.value)
    with pytest.raises(GlimmerError, match="no such file"):
        open_backend(tmp_path / "absent.onnx")


def test_loader_auto_prefers_onnxruntime_then_tensorrt(model, monkeypatch):
    assert resolve_backend(model, "auto") == "onnxruntime"
    assert isinstance(open_backend(model, threads=1), OnnxRuntimeBackend)
    monkeypatch.setattr(loader, "_installed", lambda name: name == "tensorrt")
    assert resolve_backend(model, "auto") == "tensorrt"
    monkeypatch.setattr(loader, "_installed", lambda name: False)
    with pytest.raises(GlimmerError, match="neither ONNX Runtime nor TensorRT is installed"):
        resolve_backend(model, "auto")


@pytest.fixture()
def fake_trt_modules(monkeypatch, tmp_path):
    """Stand-ins for glimmer.runtime.backends.trt.build / backend_trt recording how the loader calls
    them."""
    calls = {}
    engine = tmp_path / "cache" / "linear.engine"

    def ensure_engine(onnx_path, precision, cache_dir=None, log=print, **options):
        calls["ensure_engine"] = (Path(onnx_path), precision, cache_dir)
        calls["build_options"] = options
        log("building engine (fake)")
        return engine

    def read_sidecar(engine_path):
        calls["read_sidecar"] = Path(engine_path)
        return {"meta": META.to_dict(), "tensorrt": "fake"}

    class TensorRTBackend:
        def __init__(self, engine_path, meta=None, **options):
            calls["backend"] = (Path(engine_path), meta)
            calls["backend_options"] = options

    build = types.ModuleType("glimmer.runtime.backends.trt.build")
    build.ensure_engine, build.read_sidecar = ensure_engine, read_sidecar
    backend = types.ModuleType("glimmer.runtime.backends.trt.runner")
    backend.TensorRTBackend = TensorRTBackend
    for name, module in (("build", build), ("runner", backend)):
        monkeypatch.setitem(sys.modules, f"glimmer.runtime.backends.trt.{name}", module)
        monkeypatch.setattr(trt_pkg, name, module, raising=False)
    return calls, engine


def test_onnx_with_tensorrt_builds_once_through_ensure_engine_with_fake_tensorrt(
    model, fake_trt_modules, tmp_path
):
    calls, engine = fake_trt_modules
    logged = []
    open_backend(model, "tensorrt", cache_dir=tmp_path / "cache", log=logged.append)
    assert calls["ensure_engine"] == (model, "fp16", tmp_path / "cache")  # precision from the ONNX
    assert calls["backend"] == (engine, META)  # the ONNX's own metadata is handed over
    assert "read_sidecar" not in calls and logged == ["building engine (fake)"]


def test_engine_takes_metadata_from_its_sidecar_with_fake_tensorrt(tmp_path, fake_trt_modules):
    calls, _ = fake_trt_modules
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    open_backend(engine)
    assert calls["read_sidecar"] == engine and calls["backend"] == (engine, META)


def test_engine_sidecar_without_meta_is_a_clear_error_with_fake_tensorrt(
    tmp_path, fake_trt_modules, monkeypatch
):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    monkeypatch.setattr(
        sys.modules["glimmer.runtime.backends.trt.build"],
        "read_sidecar",
        lambda p: {"tensorrt": "x"},
    )
    with pytest.raises(GlimmerError, match="its sidecar has no 'meta' table"):
        open_backend(engine)


def test_missing_tensorrt_modules_are_a_clear_error(tmp_path, monkeypatch, model):
    for name in ("build", "runner"):
        monkeypatch.setitem(
            sys.modules, f"glimmer.runtime.backends.trt.{name}", None
        )  # import raises ImportError
        monkeypatch.delattr(trt_pkg, name, raising=False)
    with pytest.raises(GlimmerError, match="the TensorRT backend cannot be loaded"):
        open_backend(model, "tensorrt")
