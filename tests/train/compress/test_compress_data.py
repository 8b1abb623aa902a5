"""Dataset checks and VisDrone conversion: exact output, clear errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from glimmer.runtime.core.console import run_cli
from glimmer.train import compress_cli
from glimmer.train.compress.shapes import make_shapes_dataset
from glimmer.train.compress.yolo_data import check_dataset, label_path


def _cli(args, capsys):
    rc = run_cli("glimmer-compress", compress_cli.main, args)
    return rc, capsys.readouterr()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes") / "ds", n_train=4, n_val=2, size=64
    )


def test_generated_dataset_passes_the_checks(shapes):
    ds = check_dataset(shapes)
    assert ds.names == ["disc", "box"]
    assert [len(ds.splits[k]) for k in ("train", "val")] == [4, 2]
    assert label_path(ds.splits["train"][0]).read_text().strip()


def _finetune_args(data, tmp_path):
    return [
        "finetune",
        "--model",
        "yolov8n.pt",
        "--data",
        str(data),
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "run"),
    ]


@pytest.mark.parametrize(
    "case", ["missing", "folder", "bad_yaml", "no_label", "bad_class", "missing_split"]
)
def test_dataset_problems_are_one_clear_line(case, shapes, tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    data = yaml.safe_load(shapes.read_text())
    src_root = Path(data["path"])
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    img = cv2.imread(str(next((src_root / "images" / "train").iterdir())))
    cv2.imwrite(str(root / "images" / "train" / "a.png"), img)
    (root / "labels" / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    cfg = root / "data.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "path": str(root),
                "train": "images/train",
                "val": "images/train",
                "names": {0: "disc", 1: "box"},
            }
        )
    )
    expect = {
        "missing": (root / "nope.yaml", "nope.yaml: no such file (datasets are never downloaded)"),
        "folder": (root, "ds: a folder; give the dataset's data.yaml"),
        "bad_yaml": (cfg, "data.yaml: not valid YAML at line 3"),
        "no_label": (cfg, "b.png: no label file (expected"),
        "bad_class": (cfg, "a.txt:1: class 7 outside 0..1"),
        "missing_split": (cfg, "'val' points to"),
    }
    path, message = expect[case]
    if case == "bad_yaml":
        cfg.write_text("path: x\ntrain: [unclosed\n")
    elif case == "no_label":
        cv2.imwrite(str(root / "images" / "train" / "b.png"), img)
    elif case == "bad_class":
        (root / "labels" / "train" / "a.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    elif case == "missing_split":
        cfg.write_text(cfg.read_text().replace("val: images/train", "val: images/val"))
    ds_args = [
        "sparse",
        "--model",
        "yolov8n.yaml",
        "--data",
        str(path),
        "--epochs",
        "1",
        "--imgsz",
        "64",
        "--out",
        str(tmp_path / "run"),
    ]
    rc, cap = _cli(ds_args, capsys)
    assert rc == 1, cap
    assert cap.err.startswith("glimmer-compress: error: ") and cap.err.count("\n") == 1, cap.err
    assert message in cap.err, cap.err
    assert not (tmp_path / "run").exists()  # nothing created on a bad dataset


def test_bad_flags(capsys, tmp_path, shapes):
    base = ["sparse", "--data", str(shapes), "--out", str(tmp_path / "o")]
    for extra, message in [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--epochs", "1", "--imgsz", "100"], "--imgsz must be a multiple of 32"),
        (["--epochs", "1", "--sr", "-1"], "--sr must be >= 0"),
        (["--epochs", "1", "--model", "resnet50.yaml"], "expected yolov8n|s|m|l|x.yaml"),
    ]:
        rc, cap = _cli(base + extra, capsys)
        assert rc == 1 and message in cap.err, cap.err


def test_out_folder_with_content_is_not_reused(capsys, tmp_path, shapes):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    rc, cap = _cli(
        [
            "sparse",
            "--model",
            "yolov8n.yaml",
            "--data",
            str(shapes),
            "--epochs",
            "1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert rc == 1 and "folder is not empty" in cap.err
    assert (out / "keep.txt").read_text() == "precious"


VISDRONE = """\
684,8,273,116,0,0,0,0
406,119,265,70,1,4,0,0
255,22,119,128,1,1,0,1
1,1,10,10,1,11,0,0
100,100,50,40,0,3,0,0
990,700,30,20,1,10,0,0,
"""


def test_visdrone2yolo_exact_lines_and_dropped_counts(tmp_path, capsys):
    raw = tmp_path / "raw" / "VisDrone2019-DET-val"
    (raw / "images").mkdir(parents=True)
    (raw / "annotations").mkdir()
    cv2.imwrite(str(raw / "images" / "0001.jpg"), np.zeros((750, 1000, 3), np.uint8))
    (raw / "annotations" / "0001.txt").write_text(VISDRONE)
    out = tmp_path / "yolo"
    rc, cap = _cli(["visdrone2yolo", str(tmp_path / "raw"), str(out)], capsys)
    assert rc == 0, cap.err
    lines = (out / "labels" / "val" / "0001.txt").read_text().splitlines()
    assert lines == [
        "3 0.538500 0.205333 0.265000 0.093333",  # car: (406+132.5)/1000, (119+35)/750
        "0 0.314500 0.114667 0.119000 0.170667",  # pedestrian
        "9 0.995000 0.946667 0.010000 0.026667",  # motor, clipped to the image's right edge
    ]
    assert "boxes kept: 3" in cap.out
    assert "boxes dropped: 3" in cap.out
    for reason in (
        "ignored region (category 0): 1",
        "others (category 11): 1",
        "ignored box (score 0): 1",
    ):
        assert reason in cap.out
    assert (out / "images" / "val" / "0001.jpg").is_file()
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["val"] == "images/val" and data["names"][9] == "motor" and len(data["names"]) == 10


def test_visdrone2yolo_malformed_line_names_file_and_line(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "annotations").mkdir()
    cv2.imwrite(str(raw / "images" / "a.jpg"), np.zeros((10, 10, 3), np.uint8))
    (raw / "annotations" / "a.txt").write_text("1,2,3,4,1,2,0,0\n1,2,x,4,1,2,0,0\n")
    rc, cap = _cli(["visdrone2yolo", str(raw), str(tmp_path / "out")], capsys)
    assert rc == 1 and "a.txt:2: not numbers" in cap.err, cap.err
