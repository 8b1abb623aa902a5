"""glimmer-export end to end: artifacts, metadata, report, INT8, errors and atomicity."""

import copy
import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_runs import export, one_error_line
from random_weights import randomise

from glimmer.calibration.qdq import zero_points_all_zero
from glimmer.export import api
from glimmer.models.checkpoint import reference_state_dict
from glimmer.models.glimmernet import GlimmerNet
from glimmer.runtime.core.files import sha256_file
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.train.synthetic import CLASSES, make_scene_dataset


@pytest.fixture(scope="module")
def full_run(workdir):
    out = workdir / "full"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = export(
            [
                workdir / "tiny.pt",
                "--out",
                out,
                "--fp16",
                "--int8",
                "--calib",
                workdir / "data" / "Train",
                "--calib-count",
                12,
                "--val",
                workdir / "data" / "Val",
                "--latency-runs",
                5,
            ]
        )
    return code, stdout.getvalue(), out


@pytest.mark.slow
def test_full_export_writes_onnx_int8_and_report(full_run, workdir):
    code, stdout, out = full_run
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "export-report.json",
        "tiny.int8.onnx",
        "tiny.onnx",
    ]
    engine_lines = [
        line for line in stdout.splitlines() if "TensorRT engine not built here" in line
    ]
    assert (
        len(engine_lines) == 1
        and "glimmer-export" in engine_lines[0]
        and "--fp16" in engine_lines[0]
    )

    model = onnx.load(str(out / "tiny.onnx"))
    meta = ModelMeta.from_props({p.key: p.value for p in model.metadata_props})
    assert (
        meta.task == "classify"
        and meta.class_names == list(CLASSES)
        and meta.input_size == (64, 64)
    )
    assert meta.source_sha256 == sha256_file(workdir / "tiny.pt")
    assert (
        meta.precision == "fp32"
        and meta.batch == 1
        and meta.extra["dilation_mode"] in ("split", "aligned", "embed")
    )

    int8 = onnx.load(str(out / "tiny.int8.onnx"))
    assert ModelMeta.from_props({p.key: p.value for p in int8.metadata_props}).precision == "int8"
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert zero_points_all_zero(int8)

    report = json.loads((out / "export-report.json").read_text())
    fp32, q = report["artifacts"]
    assert (
        fp32["sha256"] == sha256_file(out / "tiny.onnx")
        and fp32["size_bytes"] == (out / "tiny.onnx").stat().st_size
    )
    assert (
        fp32["vs_pytorch"]["max_abs_diff"] <= 1e-4 and fp32["vs_pytorch"]["top1_agreement"] == 1.0
    )
    # stem + GDBlock convs (2+1+1+1 blocks) + 4 Aggregators + GRN unit convs + Refiner; streams per
    # stage: embed 1,1,1,1; split 3,3,3,3 (runs 2,4,2 ...); aligned 2,3,3,3 (stage 1: 4+4 channels)
    convs = {
        "embed": 2 + 5 + 4 + 4 + 1,
        "split": 6 + 15 + 4 + 10 + 1,
        "aligned": 4 + 13 + 4 + 10 + 1,
    }
    assert fp32["op_counts"]["Conv"] == convs[meta.extra["dilation_mode"]]
    assert (
        fp32["onnxruntime_cpu_latency"]["batch"] == 1
        and fp32["onnxruntime_cpu_latency"]["median_ms"] > 0
    )
    assert q["kind"] == "onnx-int8" and 0 <= q["vs_pytorch"]["top1_agreement"] <= 1
    lowering = report["dilation_lowering"]
    assert lowering["requested"] == "auto" and set(lowering["timed_ms"]) == {
        "split",
        "aligned",
        "embed",
    }
    assert lowering["chosen"] in lowering["tied"] and lowering["fastest"] == min(
        lowering["timed_ms"], key=lowering["timed_ms"].get
    )
    assert lowering["decided_by"] == (
        "speed" if lowering["tied"] == [lowering["chosen"]] else "preference within noise"
    )
    assert (
        set(lowering["round_medians_ms"]) == {"split", "aligned", "embed"}
        and lowering["rounds"] == 1
    )
    assert report["int8"]["calibration"]["images"] == 12
    assert isinstance(report["int8"]["faster_than_fp32_on_this_cpu"], bool)
    assert report["val"]["images"] == 12 and set(report["val"]) >= {"fp32", "int8"}
    assert report["engines"] == {
        "built": [],
        "deferred": True,
        "reason": report["engines"]["reason"],
    }


@pytest.mark.slow
def test_onnx_input_is_the_on_target_engine_step(full_run, capsys):
    _, _, out = full_run
    capsys.readouterr()
    assert export([out / "tiny.onnx", "--fp16"]) == 1
    assert "cannot build a TensorRT engine here" in one_error_line(capsys)
    assert export([out / "tiny.onnx"]) == 1
    assert "give --fp16 or --int8" in one_error_line(capsys)
    assert export([out / "tiny.onnx", "--int8"]) == 1
    assert "not an INT8 (Q/DQ) ONNX" in one_error_line(capsys)


def test_onnx_without_metadata_is_refused(tmp_path, capsys):
    bare = tmp_path / "bare.onnx"
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(bare))
    assert export([bare, "--fp16"]) == 1
    assert "no model metadata" in one_error_line(capsys)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--int8"], "--int8 needs --calib DIR"),
        (["--int8", "--calib", "{root}/nowhere"], "no such folder"),
        (["--int8", "--calib", "{root}/data/Val", "--calib-count", "500"], "only 12 usable images"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--opset", "9"], "--opset 9 is outside"),
        (["--calib", "{root}/data"], "--calib is only used with --int8"),
    ],
)
def test_bad_flags_give_one_error_line_and_write_nothing(workdir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [a.format(root=workdir) for a in argv]
    assert export([workdir / "tiny.pt", "--out", out, "--dilation-mode", "split", *argv]) == 1
    assert message in one_error_line(capsys)
    assert not out.exists() or list(out.iterdir()) == []


def test_unknown_file_is_refused(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert export([junk]) == 1
    assert "not a checkpoint glimmer-export knows" in one_error_line(capsys)
    assert export([tmp_path / "missing.pt"]) == 1
    assert "no such file" in one_error_line(capsys)


def test_failed_check_never_overwrites_a_good_onnx(workdir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert (
        export([workdir / "tiny.pt", "--out", out, "--dilation-mode", "split", "--latency-runs", 2])
        == 0
    )
    good = (out / "tiny.onnx").read_bytes()
    monkeypatch.setattr(api, "FP32_TOLERANCE", -1.0)  # any difference now fails the check
    capsys.readouterr()
    assert (
        export([workdir / "tiny.pt", "--out", out, "--dilation-mode", "embed", "--latency-runs", 2])
        == 1
    )
    assert "disagrees with PyTorch" in one_error_line(capsys)
    assert (out / "tiny.onnx").read_bytes() == good
    assert sorted(p.name for p in out.iterdir()) == [
        "export-report.json",
        "tiny.onnx",
    ]  # no temp files left


def test_reference_ckpt_exports_with_dynamic_batch(workdir, tmp_path):
    torch.manual_seed(2)
    model = randomise(GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)), seed=5)
    ckpt = tmp_path / "ref.ckpt"
    torch.save(
        {
            "state_dict": reference_state_dict(model),
            "epoch": 3,
            "hyper_parameters": {"img_size": 64},
        },
        str(ckpt),
    )
    assert export([ckpt, "--dynamic-batch", "--dilation-mode", "embed", "--latency-runs", 2]) == 0
    exported = onnx.load(str(tmp_path / "ref.onnx"))
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    report = json.loads((tmp_path / "export-report.json").read_text())
    assert report["source"]["kind"] == "reference"
    assert report["artifacts"][0]["vs_pytorch"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_yolov8_pt_exports_through_ultralytics_loader(tmp_path):
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False)
    model.names = {0: "person", 1: "vehicle"}
    # Saved the way ultralytics saves a trained .pt: the pickled model (half precision) plus train
    # args.
    torch.save(
        {
            "epoch": -1,
            "model": copy.deepcopy(model).half(),
            "ema": None,
            "optimizer": None,
            "train_args": {"imgsz": 64, "task": "detect"},
            "version": ultralytics.__version__,
        },
        str(tmp_path / "yolo.pt"),
    )
    assert export([tmp_path / "yolo.pt", "--latency-runs", 3]) == 0
    exported = onnx.load(str(tmp_path / "yolo.onnx"))
    meta = ModelMeta.from_props({p.key: p.value for p in exported.metadata_props})
    assert (
        meta.task == "detect"
        and meta.letterbox
        and meta.stride == 32
        and meta.input_size == (64, 64)
    )
    assert meta.class_names == ["person", "vehicle"]
    check = json.loads((tmp_path / "export-report.json").read_text())["artifacts"][0]["vs_pytorch"]
    assert check["max_abs_diff_random"] <= 1e-4 and check["max_abs_diff_image_like"] <= 1e-4
    assert check["top_k_agree"] == 1.0
    out = exported.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in out] == [
        1,
        4 + 2,
        64 // 8 * 64 // 8 + 64 // 16 * 64 // 16 + 64 // 32 * 64 // 32,
    ]
    assert np.isfinite(check["box_max_abs_diff"])

    # INT8: TensorRT placement on the detector too: one Q/DQ per Conv weight, one per distinct
    # Conv input
    make_scene_dataset(tmp_path / "calib", {"Train": 2}, size=64)
    assert (
        export(
            [
                tmp_path / "yolo.pt",
                "--out",
                tmp_path / "q",
                "--int8",
                "--calib",
                tmp_path / "calib",
                "--calib-count",
                8,
                "--latency-runs",
                3,
            ]
        )
        == 0
    )
    int8 = onnx.load(str(tmp_path / "q" / "yolo.int8.onnx"))
    convs = [n for n in exported.graph.node if n.op_type == "Conv"]
    ops = Counter(n.op_type for n in int8.graph.node)
    assert ops["QuantizeLinear"] == len(convs) + len({n.input[0] for n in convs})
    assert ops["DequantizeLinear"] == ops["QuantizeLinear"] and zero_points_all_zero(int8)
    consumers = {i: n.op_type for n in int8.graph.node for i in n.input}
    assert {consumers[n.output[0]] for n in int8.graph.node if n.op_type == "DequantizeLinear"} == {
        "Conv"
    }
    report = json.loads((tmp_path / "q" / "export-report.json").read_text())["int8"]
    assert report["calibration"]["method"] == "minmax" and report["budget"]["checked"] is False


def recording_builder(calls):
    """A stand-in for trt_build.build_engine that records its call and writes a dummy engine."""

    def build(
        onnx_path,
        engine_path,
        precision,
        *,
        meta,
        timing_cache=None,
        calibrator=None,
        min_batch=None,
        opt_batch=None,
        max_batch=None,
        log=print,
    ):
        calls.append(
            (
                Path(onnx_path).name,
                Path(engine_path).name,
                precision,
                meta.precision,
                Path(timing_cache).name,
                max_batch,
            )
        )
        Path(engine_path).write_bytes(b"fake")
        return {"engine": str(engine_path)}

    return build


@pytest.mark.slow
@pytest.mark.parametrize(
    "latency,chosen,decided_by",
    [
        ({"split": 6.0, "aligned": 4.0, "embed": 2.0}, "embed", "speed"),
        ({"split": 3.0, "aligned": 3.0, "embed": 3.0}, "aligned", "preference within noise"),
    ],
)
def test_auto_times_the_lowerings_as_tensorrt_engines_where_tensorrt_builds(
    workdir, tmp_path, monkeypatch, latency, chosen, decided_by
):
    """Bookkeeping only: with TensorRT usable, auto builds every candidate ONNX as an engine (here a
    recorder whose engines take set times on a fake clock) instead of using ONNX Runtime, as FP16
    for --fp16, in a folder that is gone afterwards; all engines are open together and timed in
    interleaved rounds, and equal times go to the preferred lowering. No real TensorRT runs here."""
    import contextlib
    import types

    from glimmer.runtime.backends.trt import build as trt_build
    from glimmer.runtime.backends.trt import engines
    from glimmer.runtime.core import timing

    opened, events, built, now = [], [], [], [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    @contextlib.contextmanager
    def fake_runner(onnx_path, precision, meta, batch, work_dir):
        mode = Path(onnx_path).stem
        opened.append((Path(onnx_path).name, precision, batch.shape, Path(work_dir)))
        assert onnx.load(str(onnx_path)).graph.node  # a complete ONNX on disk
        events.append(("open", mode))
        yield lambda: now.__setitem__(0, now[0] + latency[mode] / 1e3)
        events.append(("close", mode))

    monkeypatch.setattr(
        engines, "tensorrt_status", lambda: (True, "TensorRT 10.3 (fake) on Orin (fake)")
    )
    monkeypatch.setattr(engines, "tensorrt_runner", fake_runner)
    monkeypatch.setattr(trt_build, "build_engine", recording_builder(built))
    out = tmp_path / "out"
    assert export([workdir / "tiny.pt", "--out", out, "--fp16", "--latency-runs", 6]) == 0
    modes = ("split", "aligned", "embed")
    assert [o[:3] for o in opened] == [(f"{m}.onnx", "fp16", (1, 3, 64, 64)) for m in modes]
    assert events == [("open", m) for m in modes] + [("close", m) for m in reversed(modes)]
    assert not opened[0][3].exists()
    lowering = json.loads((out / "export-report.json").read_text())["dilation_lowering"]
    assert lowering["timed_ms"] == pytest.approx(latency) and lowering["noise_ms"] == pytest.approx(
        dict.fromkeys(modes, 0.0), abs=1e-9
    )
    assert lowering["chosen"] == chosen and lowering["decided_by"] == decided_by
    assert lowering["rounds"] == 2 and all(
        len(v) == 2 for v in lowering["round_medians_ms"].values()
    )
    assert lowering["round_orders"] == [list(modes), ["aligned", "embed", "split"]]
    assert lowering["preference"] == ["aligned", "split", "embed"]
    assert lowering["timed_with"] == (
        "TensorRT 10.3 (fake) on Orin (fake), fp16 engine, batch 1, 2 interleaved rounds of 3 calls"
    )
    assert [b[:3] for b in built] == [("tiny.onnx", "tiny.fp16.engine", "fp16")]
    meta = ModelMeta.from_props(
        {p.key: p.value for p in onnx.load(str(out / "tiny.onnx")).metadata_props}
    )
    assert meta.extra["dilation_mode"] == chosen


@pytest.mark.slow
def test_engine_jobs_with_fake_tensorrt_builder(workdir, tmp_path, monkeypatch):
    """Bookkeeping only: which ONNX each engine is built from, names and batch profile. No real
    TensorRT runs here; the builder is replaced by a recorder."""
    from glimmer.runtime.backends.trt import build as trt_build
    from glimmer.runtime.backends.trt import engines

    calls = []
    monkeypatch.setattr(engines, "tensorrt_status", lambda: (True, "fake tensorrt"))
    monkeypatch.setattr(trt_build, "build_engine", recording_builder(calls))
    out = tmp_path / "out"
    assert (
        export(
            [
                workdir / "tiny.pt",
                "--out",
                out,
                "--dynamic-batch",
                "--max-batch",
                4,
                "--fp16",
                "--int8",
                "--calib",
                workdir / "data" / "Train",
                "--calib-count",
                4,
                "--dilation-mode",
                "split",
                "--latency-runs",
                2,
            ]
        )
        == 0
    )
    assert calls == [
        ("tiny.onnx", "tiny.fp16.engine", "fp16", "fp16", "timing.cache", 4),
        ("tiny.int8.onnx", "tiny.int8.engine", "int8", "int8", "timing.cache", 4),
    ]
    report = json.loads((out / "export-report.json").read_text())
    assert [e["path"] for e in report["engines"]["built"]] == [
        str(out / "tiny.fp16.engine"),
        str(out / "tiny.int8.engine"),
    ]
