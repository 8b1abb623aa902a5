"""glimmer-export checks every flag, path and name before any work, and replaces a previous export
only once the new one is complete: one error line, nothing half-written, nothing lost."""

import json
from pathlib import Path

import pytest
import torch
from cli_runs import export, one_error_line
from random_weights import randomise

from glimmer.export import recipes
from glimmer.models.checkpoint import save_checkpoint
from glimmer.models.glimmernet import GlimmerNet

FAST = ["--dilation-mode", "split", "--latency-runs", "2"]


@pytest.fixture
def no_work(monkeypatch):
    """Any export work (the PyTorch -> ONNX step) fails the test: the refusal must come first."""

    def work(*args, **kwargs):
        raise AssertionError("export work started before the flags were checked")

    monkeypatch.setattr(recipes.ClassifierRecipe, "export_fp32", work)


def files(folder: Path):
    """{name: bytes} of every file under ``folder``, hidden ones included."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def previous(workdir):
    """A finished export (FP32 + INT8 ONNX and report) that a failed one must leave alone."""
    out = workdir / "previous"
    argv = ["--out", out, "--int8", "--calib", workdir / "data" / "Train", "--calib-count", 4]
    assert export([workdir / "tiny.pt", *argv, *FAST]) == 0
    assert sorted(files(out)) == ["export-report.json", "tiny.int8.onnx", "tiny.onnx"]
    return out


def test_out_that_is_a_file_is_refused_before_any_work(workdir, tmp_path, capsys, no_work):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    assert export([workdir / "tiny.pt", "--out", blocker, *FAST]) == 1
    assert one_error_line(capsys).endswith(f"--out {blocker}: is a file, not a folder")
    assert export([workdir / "tiny.pt", "--out", blocker / "sub", *FAST]) == 1
    assert f"cannot be created: {blocker} is a file" in one_error_line(capsys)
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file"
    ]


@pytest.mark.parametrize("name", ["../../x", "sub/x", "..", ".", "", "/abs/x"])
def test_name_must_be_a_plain_stem_inside_out(workdir, tmp_path, capsys, no_work, name):
    out = tmp_path / "a" / "b" / "out"
    assert export([workdir / "tiny.pt", "--out", out, "--name", name, *FAST]) == 1
    assert "must be a plain file name stem" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_name_with_a_suffix_says_to_drop_it(workdir, tmp_path, capsys, no_work):
    assert export([workdir / "tiny.pt", "--out", tmp_path, "--name", "model.onnx", *FAST]) == 1
    assert "give the stem without .onnx" in one_error_line(capsys)


def test_too_small_img_size_says_the_minimum_and_why(workdir, tmp_path, capsys, no_work):
    assert export([workdir / "tiny.pt", "--out", tmp_path / "o", "--img-size", 32, *FAST]) == 1
    line = one_error_line(capsys)
    # stem: two stride-2 convs, then four 2x2 poolings: 4 * 16 = 64x; at 57 px the last pooling
    # still gets a 2x2 map, at 56 px a 1x1 one
    assert "--img-size 32 is too small" in line and "64x" in line
    assert line.endswith("the smallest size it runs at is 57")
    assert not (tmp_path / "o").exists()


def test_smallest_input_is_exact():
    model = GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)).eval()
    assert recipes._runs_at(model, 56) is None and recipes._runs_at(model, 57) is not None
    assert recipes.smallest_input(model, 32) == 57


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--int8", "--calib", "{root}/tiny.pt"], "--calib {root}/tiny.pt: a file, not a folder"),
        (["--val", "{root}/nowhere"], "--val {root}/nowhere: no such folder"),
        (["--val", "{root}/tiny.pt"], "--val {root}/tiny.pt: a file, not a folder"),
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
    ],
)
def test_path_flags_are_checked_first(workdir, tmp_path, capsys, no_work, argv, message):
    argv = [a.format(root=workdir) for a in argv]
    assert export([workdir / "tiny.pt", "--out", tmp_path / "o", *argv, *FAST]) == 1
    assert one_error_line(capsys).endswith(message.format(root=workdir))
    assert not (tmp_path / "o").exists()


def test_a_folder_as_checkpoint_is_refused(workdir, capsys):
    assert export([workdir / "data", *FAST]) == 1
    assert one_error_line(capsys).endswith(f"{workdir / 'data'}: a folder, not a file")


@pytest.mark.parametrize(
    "names,message",
    [
        (["Fire", "Fire", "Flood", "Normal"], "'Fire' appears more than once"),
        (["Fire", " ", "Flood", "Normal"], "entry 1 is empty"),
    ],
)
def test_bad_class_names_are_refused(tmp_path, capsys, no_work, names, message):
    torch.manual_seed(0)
    model = randomise(GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)))
    save_checkpoint(tmp_path / "bad.pt", model, "glimmernet", names, (64, 64))
    assert export([tmp_path / "bad.pt", "--out", tmp_path / "o", *FAST]) == 1
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_val_that_is_missing_leaves_the_previous_export(workdir, previous, capsys, no_work):
    before = files(previous)
    argv = ["--int8", "--calib", workdir / "data" / "Train", "--val", "nowhere"]
    assert export([workdir / "tiny.pt", "--out", previous, *argv, *FAST]) == 1
    assert one_error_line(capsys).endswith("--val nowhere: no such folder")
    assert files(previous) == before


def test_failed_engine_build_leaves_the_previous_export(workdir, previous, capsys, monkeypatch):
    """A failure after the ONNX files are made (here the TensorRT step) replaces nothing and
    leaves no staging folder behind. Bookkeeping only: no real TensorRT runs here."""
    from glimmer.runtime.backends.trt import build as trt_build
    from glimmer.runtime.backends.trt import engines
    from glimmer.runtime.core.errors import GlimmerError

    built = []

    def failing_build(onnx_path, engine_path, precision, **kwargs):
        built.append(Path(onnx_path))
        assert Path(onnx_path).is_file()  # the staged ONNX is complete when the engine is built
        raise GlimmerError(f"{onnx_path.name}: TensorRT could not build an engine (fake)")

    monkeypatch.setattr(engines, "tensorrt_status", lambda: (True, "fake tensorrt"))
    monkeypatch.setattr(trt_build, "build_engine", failing_build)
    before = files(previous)
    argv = ["--fp16", "--int8", "--calib", workdir / "data" / "Train", "--calib-count", 4]
    assert export([workdir / "tiny.pt", "--out", previous, *argv, *FAST]) == 1
    assert "could not build an engine (fake)" in one_error_line(capsys)
    assert len(built) == 1 and built[0].parent != previous  # built from the staged copy
    assert files(previous) == before  # no new ONNX, no staging folder, no temp file


def test_success_replaces_every_artifact_together(workdir, previous, tmp_path):
    out = tmp_path / "out"
    argv = ["--int8", "--calib", workdir / "data" / "Train", "--calib-count", 4]
    assert export([workdir / "tiny.pt", "--out", out, *argv, *FAST]) == 0
    report = json.loads((out / "export-report.json").read_text())
    assert [a["path"] for a in report["artifacts"]] == [
        str(out / "tiny.onnx"),
        str(out / "tiny.int8.onnx"),
    ]
    assert sorted(files(out)) == ["export-report.json", "tiny.int8.onnx", "tiny.onnx"]


def test_onnx_input_refuses_checkpoint_only_flags(previous, capsys):
    assert export([previous / "tiny.onnx", "--fp16", "--val", previous]) == 1
    assert "--val applies to a checkpoint export" in one_error_line(capsys)
    assert export([previous / "tiny.onnx", "--fp16", "--img-size", 64]) == 1
    assert "--img-size applies to a checkpoint export" in one_error_line(capsys)
