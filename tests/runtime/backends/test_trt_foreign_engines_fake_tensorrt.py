"""Engines made by other tools (trtexec, ultralytics), against the FAKE tensorrt module.

The fake's plans start with its magic bytes and its runtime refuses anything else, as TensorRT
does, so an inference that works proves the ultralytics header was cut off before deserializing.
What is checked is our metadata lookup, header parsing and error lines; no real engine from either
tool was read here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from fake_tensorrt import (
    CLASSES,
    PLAN_MAGIC,
    install_fake_tensorrt,
    reference_output,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.runtime.backends.base import TensorSpec
from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.backends.trt import foreign
from glimmer.runtime.backends.trt.runner import TensorRTBackend
from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError


def quiet(_msg):
    pass


def plan_bytes(tmp_path) -> bytes:
    """A plan as trtexec would save it: the engine file without our sidecar."""
    work = tmp_path / "work"
    work.mkdir()
    onnx_path = write_tiny_onnx(work / "tiny.onnx")
    engine = work / "tiny.fp32.engine"
    trt_build.build_engine(onnx_path, engine, "fp32", meta=tiny_meta(), log=quiet)
    return engine.read_bytes()


def trtexec_engine(tmp_path, name="tiny.engine") -> Path:
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    engine = folder / name
    engine.write_bytes(plan_bytes(tmp_path))
    return engine


def ultralytics_header(**changes):
    header = {
        "description": "Ultralytics YOLO11n model trained on tiny.yaml",
        "author": "Ultralytics",
        "version": "8.4.190",
        "stride": 32,
        "task": "detect",
        "batch": 1,
        "imgsz": [8, 8],
        "names": {str(i): name for i, name in enumerate(CLASSES)},
        "args": {"batch": 1, "dynamic": False, "quantize": "fp16", "nms": False},
        "channels": 3,
        "end2end": False,
    }
    header.update(changes)
    return header


def with_header(header) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(4, byteorder="little", signed=True) + text


def infer_once(backend):
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    (y,) = backend.infer(x)
    np.testing.assert_allclose(y, reference_output(x, (1, 4)), rtol=1e-6)


def test_trtexec_engine_takes_metadata_from_the_onnx_beside_it(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = trtexec_engine(tmp_path)
    write_tiny_onnx(engine.with_suffix(".onnx"))
    backend = open_backend(engine)
    assert isinstance(backend, TensorRTBackend) and backend.sidecar is None
    assert backend.meta == tiny_meta(1)
    assert (backend.foreign.source, backend.foreign.plan_offset) == ("tiny.onnx", 0)
    assert backend.inputs == [TensorSpec("input", (1, 3, 8, 8), "float32")]  # from the metadata
    with backend:
        assert backend.inputs == [TensorSpec("images", (1, 3, 8, 8), "float32")]  # the engine's
        infer_once(backend)
        line = backend.describe()
    assert "tensorrt 10.3.0.30 [tensor names" in line and "Orin (fake)" in line
    assert "fp32 as its metadata (tiny.onnx) says" in line and "precision not recorded" in line
    assert fake_cuda.allocs == {}


@pytest.mark.parametrize("kind", ["json", "sidecar", "onnx"])
def test_meta_file_gives_an_engine_its_metadata(kind, tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    engine = trtexec_engine(tmp_path)
    meta = tiny_meta(1)
    meta.class_names = ["w", "x", "y", "z"]
    if kind == "json":
        path = tmp_path / "meta.json"
        path.write_text(meta.to_json())
    elif kind == "sidecar":
        path = tmp_path / "other.json"
        path.write_text(json.dumps({"format": trt_build.SIDECAR_FORMAT, "meta": meta.to_dict()}))
    else:
        path = write_tiny_onnx(tmp_path / "elsewhere.onnx")
        meta = tiny_meta(1)
    backend = open_backend(engine, meta_path=path)
    assert backend.meta == meta and backend.foreign.source == f"--meta {path}"
    with backend:
        infer_once(backend)


def test_meta_file_overrides_a_sidecar_but_not_its_precision(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    onnx_path = write_tiny_onnx(tmp_path / "tiny.onnx")
    engine = tmp_path / "tiny.fp32.engine"
    trt_build.build_engine(onnx_path, engine, "fp32", meta=tiny_meta(), log=quiet)
    meta = tiny_meta(1)
    meta.class_names, meta.precision = ["w", "x", "y", "z"], "int8"
    (tmp_path / "meta.json").write_text(meta.to_json())
    backend = open_backend(engine, meta_path=tmp_path / "meta.json")
    assert backend.sidecar is not None and backend.meta.class_names == ["w", "x", "y", "z"]
    assert backend.meta.precision == "fp32"


def test_engine_without_metadata_is_one_line_naming_the_three_sources(
    tmp_path, monkeypatch, fake_cuda, capsys
):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = trtexec_engine(tmp_path)
    with pytest.raises(GlimmerError) as err:
        open_backend(engine)
    message = str(err.value)
    assert message.startswith(
        f"{engine}: no metadata for this engine (no glimmer sidecar tiny.json"
    )
    for source in ("--meta FILE", "tiny.onnx with glimmer-export's metadata beside it", "sidecar"):
        assert source in message
    code = run_cli("glimmer-run", lambda argv: open_backend(engine) and 0, [])
    assert code == 1 and len(capsys.readouterr().err.splitlines()) == 1
    write_tiny_onnx(engine.with_suffix(".onnx"), meta=False)
    with pytest.raises(GlimmerError, match="tiny.onnx beside it has no model metadata"):
        open_backend(engine)


def test_meta_file_errors(tmp_path, monkeypatch, fake_cuda):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = trtexec_engine(tmp_path)
    with pytest.raises(GlimmerError, match="--meta .*absent.json: no such file"):
        open_backend(engine, meta_path=tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GlimmerError, match="bad.json: not a JSON file .*the ONNX"):
        open_backend(engine, meta_path=tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(GlimmerError, match="expected a JSON object"):
        open_backend(engine, meta_path=tmp_path / "list.json")
    onnx_model = write_tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(GlimmerError, match="only a TensorRT engine takes its metadata from a file"):
        open_backend(onnx_model, "tensorrt", meta_path=tmp_path / "list.json")


def test_ultralytics_engine_header_is_read_and_cut_off(tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    plan = plan_bytes(tmp_path)
    engine = tmp_path / "yolo11n.engine"
    header = with_header(ultralytics_header())
    engine.write_bytes(header + plan)
    # TensorRT itself refuses the file as it is: the header must go.
    assert trt.Runtime(None).deserialize_cuda_engine(engine.read_bytes()) is None
    backend = open_backend(engine)
    meta = backend.meta
    assert (meta.task, meta.class_names, meta.input_size) == ("detect", CLASSES, (8, 8))
    assert (meta.stride, meta.batch, meta.precision, meta.letterbox) == (32, 1, "fp16", True)
    assert meta.name.startswith("Ultralytics YOLO11n")
    assert meta.extra["metadata_source"] == "ultralytics engine header"
    assert backend.foreign.plan_offset == len(header) and backend.foreign.tool == "ultralytics"
    with backend:
        infer_once(backend)
        assert "engine from ultralytics" in backend.describe()


def test_ultralytics_header_mapping():
    names = {str(i): f"c{i}" for i in range(12)}  # JSON keys are strings: "10" sorts before "2"
    meta = foreign.ultralytics_meta(ultralytics_header(names=names, imgsz=640), "m")
    assert meta.class_names == [f"c{i}" for i in range(12)] and meta.input_size == (640, 640)
    old = ultralytics_header(args={"half": False, "int8": True, "dynamic": True}, batch=8)
    meta = foreign.ultralytics_meta(old, "m")
    assert (meta.precision, meta.batch) == ("int8", None)
    text = ultralytics_header(names=repr(dict(enumerate(CLASSES))), imgsz="[8, 8]", stride="32")
    assert foreign.ultralytics_meta(text, "m").class_names == CLASSES  # stringified values
    assert foreign.ultralytics_meta(ultralytics_header(args={}), "m").precision == "fp32"
    # end-to-end heads ([B, N, 6], NMS inside) are read, and flagged for the detector
    assert foreign.ultralytics_meta(ultralytics_header(end2end=True), "m").end2end is True
    assert foreign.ultralytics_meta(ultralytics_header(args={"nms": True}), "m").end2end is True
    assert foreign.ultralytics_meta(ultralytics_header(args={"nms": False}), "m").end2end is False
    for changes, error in (
        ({"task": "segment"}, "task 'segment' is not supported"),
        ({"channels": 1}, "1 input channels"),
        ({"names": None}, "no 'names' or 'imgsz'"),
        ({"names": {"a": "x"}}, "not class indices"),
    ):
        with pytest.raises(GlimmerError, match=error):
            foreign.ultralytics_meta(ultralytics_header(**changes), "m")


def test_header_detection_never_mistakes_a_plan(tmp_path):
    path = tmp_path / "x.engine"
    for data in (
        b"",
        b"ab",
        PLAN_MAGIC + b"{}",
        b"ftrt" + bytes(64),  # TensorRT's magic read as a length overruns the file
        (8).to_bytes(4, "little") + b"\xff" * 8 + b"plan",  # a length, but no JSON after it
        (2).to_bytes(4, "little") + b"[]" + b"plan",  # JSON, but not an object
    ):
        path.write_bytes(data)
        assert foreign.ultralytics_header(path) is None
    path.write_bytes(with_header({"names": ["a"]}) + PLAN_MAGIC)
    assert foreign.ultralytics_header(path) == (
        4 + len(json.dumps({"names": ["a"]})),
        {"names": ["a"]},
    )


def test_run_and_bench_take_meta_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda, capsys):
    """glimmer-bench and glimmer-run end to end on a trtexec engine whose metadata is --meta."""
    cv2 = pytest.importorskip("cv2")
    from glimmer.runtime.tools import bench, run

    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    engine = trtexec_engine(tmp_path, "model.engine")
    onnx_path = write_tiny_onnx(tmp_path / "elsewhere.onnx")
    report = tmp_path / "bench.json"
    argv = ["--model", str(engine), "--meta", str(onnx_path), "--iters", "3", "--warmup", "1"]
    assert bench.main(argv + ["--no-end-to-end", "--json", str(report)]) == 0
    model = json.loads(report.read_text())["model"]
    assert model["precision"] == "fp32" and "--meta " in model["backend"]
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), np.full((12, 16, 3), 60 * i, np.uint8))
    argv = ["--model", str(engine), "--meta", str(onnx_path), "--source", str(frames)]
    assert run.main(argv + ["--headless", "--max-frames", "2"]) == 0
    assert "frames 2" in capsys.readouterr().out
