"""``pipeline --resume`` and ``--teacher``: finished stages are not retrained, an interrupted one
goes on where it stopped, a folder made from something else is refused, a bad teacher is refused
before any training. Runs on the session's pipeline (conftest.py)."""

import json
import shutil

import pytest
from compress_runs import mtimes, pipeline_argv

from glimmer.runtime.core.console import run_cli
from glimmer.train import compress_cli
from glimmer.train.compress.shapes import make_shapes_dataset
from glimmer.train.compress.yolo import build_detector, save_detector

STAGE_WEIGHTS = ("1-sparse/weights/best.pt", "2-pruned.pt", "3-finetune/weights/best.pt")


def _cli(argv, capsys):
    rc = run_cli("glimmer-compress", compress_cli.main, [str(a) for a in argv])
    return rc, capsys.readouterr()


def _one_error(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("glimmer-compress: error: ")
    return lines[0]


def _log_after(out, marker: str):
    lines = (out / "pipeline.log").read_text().splitlines()
    return [line.split(" ", 1)[1] for line in lines[[marker in x for x in lines].index(True) :]]


@pytest.mark.slow
def test_resume_continues_the_interrupted_stage_and_skips_the_finished_ones(interrupted_run):
    out = interrupted_run.out
    for rel in STAGE_WEIGHTS:  # finished before the interruption, untouched by the resume
        assert (out / rel).stat().st_mtime_ns == interrupted_run.mtimes[rel], rel
    for stage in ("sparse", "pruned", "finetune"):
        rel = f"stages/{stage}.json"
        assert (out / rel).stat().st_mtime_ns == interrupted_run.mtimes[rel], rel
    assert "stages/distill.json" not in interrupted_run.mtimes  # not complete when stopped
    log = _log_after(out, "sparse: complete, skipped")
    assert log[:4] == [
        "sparse: complete, skipped (stages/sparse.json)",
        "pruned: complete, skipped (stages/pruned.json)",
        "finetune: complete, skipped (stages/finetune.json)",
        "distill: resuming the interrupted training at epoch 2 (4-distill/weights/last.pt)",
    ]
    # ultralytics' own resume: epoch 1's row is kept as it was, epoch 2 follows
    before = interrupted_run.distill_csv.splitlines()
    after = (out / "4-distill" / "results.csv").read_text().splitlines()
    assert len(before) == 2 and after[:2] == before
    assert [row.split(",")[0] for row in after[1:]] == ["1", "2"]
    assert (out / "stages" / "distill.json").is_file()


@pytest.mark.slow
def test_resume_of_a_complete_folder_trains_nothing(pipeline, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(pipeline, out)
    (out / "stages" / "distill.json").unlink()  # as if stopped while distill was being measured
    before = mtimes(out)
    rc, cap = _cli(pipeline_argv_of(pipeline, out) + ["--resume"], capsys)
    assert rc == 0, cap.err
    for rel in STAGE_WEIGHTS + ("4-distill/weights/best.pt", "4-distill/weights/last.pt"):
        assert (out / rel).stat().st_mtime_ns == before[rel], rel
    log = _log_after(out, "distill: training had finished")
    assert log[0] == "distill: training had finished; measuring it"
    assert not any("training" in line and "epochs" in line for line in log)
    record = json.loads((out / "stages" / "distill.json").read_text())
    assert record["row"]["weights"] == "4-distill/weights/best.pt"
    assert (out / "final.onnx").stat().st_mtime_ns > before["final.onnx"]


def pipeline_argv_of(run, out=None):
    """The command that made ``run``, writing to ``out`` (default: ``run`` itself)."""
    settings = json.loads((run / "settings.json").read_text())
    return pipeline_argv(settings["dataset"]["yaml"], out or run, settings["flags"]["epochs"])


@pytest.mark.slow
@pytest.mark.parametrize("change", ["dataset", "model", "epochs"])
def test_resume_refuses_a_folder_made_from_something_else(change, pipeline, tmp_path, capsys):
    argv = pipeline_argv_of(pipeline) + ["--resume"]
    if change == "dataset":
        other = make_shapes_dataset(tmp_path / "other", n_train=16, n_val=8, size=64, seed=1)
        argv[argv.index("--data") + 1] = str(other)
        expected = "was made from another dataset"
    elif change == "model":
        argv[argv.index("--model") + 1] = "yolov8s.yaml"
        expected = "was made from --model yolov8n.yaml, not yolov8s.yaml"
    else:
        argv[argv.index("--epochs") + 1] = "3"
        expected = "was made with --epochs 2, not 3"
    before = mtimes(pipeline)
    rc, cap = _cli(argv, capsys)
    line = _one_error(cap.err)
    assert rc == 1 and "--resume" in line and expected in line, line
    assert mtimes(pipeline) == before  # nothing written


def test_resume_needs_a_pipeline_folder(data, tmp_path, capsys):
    rc, cap = _cli(pipeline_argv(data, tmp_path / "none") + ["--resume"], capsys)
    assert rc == 1 and "--resume" in _one_error(cap.err) and "settings.json" in cap.err
    assert not (tmp_path / "none").exists()


def _yolo11(path):
    from ultralytics.nn.tasks import DetectionModel

    return save_detector(DetectionModel("yolo11n.yaml", nc=2, verbose=False), path, {})


def _other_classes(path):
    model = build_detector("yolov8n.yaml", nc=2)
    model.names = {0: "cat", 1: "dog"}
    return save_detector(model, path, {})


@pytest.mark.parametrize(
    "make, expected",
    [
        (_other_classes, "its classes ['cat', 'dog'] are not the dataset's ['disc', 'box']"),
        (_yolo11, "not a YOLOv8 detector (layer 2 is C3k2)"),
        (lambda p: p.write_text("not a checkpoint") and p, "not a YOLOv8 detector"),
    ],
    ids=["other-classes", "yolo11", "not-a-checkpoint"],
)
def test_a_bad_teacher_is_refused_before_any_training(make, expected, data, tmp_path, capsys):
    teacher = tmp_path / "teacher.pt"
    make(teacher)
    out = tmp_path / "run"
    rc, cap = _cli(pipeline_argv(data, out) + ["--teacher", teacher], capsys)
    line = _one_error(cap.err)
    assert rc == 1 and line.startswith(f"glimmer-compress: error: --teacher {teacher}")
    assert expected in line, line
    assert not out.exists()  # refused before anything was written or trained
