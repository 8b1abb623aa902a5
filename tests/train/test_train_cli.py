"""glimmer-train end to end on synthetic AIDERv2-layout folders the tests generate.

Asserts learning (weighted F1 on Test), the metrics.json contract, deployable best.pt, exact resume,
and one-line errors for bad input.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import error_line, train

from glimmer.models.checkpoint import load_checkpoint
from glimmer.runtime.core.images import labelled_images, read_image
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.tools.metrics import classification_report
from glimmer.train.synthetic import CLASSES, make_scene_dataset

SMALL = ["--img-size", "64", "--batch-size", "16"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """8 epochs of the paper's recipe (lr 1e-3, RMSprop, StepLR) on 96 training images at 64 px."""
    root = tmp_path_factory.mktemp("train")
    data = make_scene_dataset(root / "data", {"Train": 24, "Val": 24, "Test": 24}, size=64, seed=0)
    run_dir = root / "run"
    rc, out, err = train([data, "--out", run_dir, "--epochs", 8, "--workers", 2, *SMALL])
    assert rc == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return data, run_dir, metrics, out


@pytest.mark.slow
def test_training_learns_the_synthetic_classes(trained):
    _, _, metrics, out = trained
    epochs = metrics["epochs"]
    assert metrics["test"]["f1_weighted"] >= 0.9
    assert max(e["val_f1_weighted"] for e in epochs) >= 0.9
    assert epochs[-1]["train_loss"] < 0.5 * epochs[0]["train_loss"]
    assert "test (best epoch" in out and "weighted F1" in out


@pytest.mark.slow
def test_metrics_json_has_the_documented_structure(trained):
    _, run_dir, m, _ = trained
    assert list(m) == [
        "format",
        "version",
        "settings",
        "dataset",
        "skipped_images",
        "epochs",
        "best",
        "finished",
        "test",
        "test_skipped",
        "plots",
    ]
    assert (m["format"], m["version"], m["finished"], m["skipped_images"], m["test_skipped"]) == (
        "glimmer-train-metrics",
        1,
        True,
        [],
        None,
    )
    assert [e["epoch"] for e in m["epochs"]] == list(range(1, 9))
    for row in m["epochs"]:
        # the documented row, spelled out here rather than read from train/outputs.py's EPOCH_KEYS
        assert set(row) == {
            "epoch",
            "lr",
            "train_loss",
            "train_accuracy",
            "val_loss",
            "val_accuracy",
            "val_f1_weighted",
            "seconds",
        }
    # StepLR(step 2, gamma 0.975), stepped per epoch
    assert [e["lr"] for e in m["epochs"]] == pytest.approx(
        [1e-3 * 0.975 ** ((i - 1) // 2) for i in range(1, 9)]
    )
    settings = m["settings"]
    assert (settings["seed"], settings["arch"], settings["img_size"], settings["epochs"]) == (
        22,
        "glimmernet",
        64,
        8,
    )
    assert settings["recipe"]["optimizer"] == "RMSprop" and settings["recipe"]["momentum"] == 0.9
    splits = m["dataset"]["splits"]
    assert {k: v["images"] for k, v in splits.items()} == {"Train": 96, "Val": 96, "Test": 96}
    assert m["dataset"]["val_source"] == "folder"
    best_f1 = max(e["val_f1_weighted"] for e in m["epochs"])
    assert m["best"]["val_f1_weighted"] == best_f1
    assert m["epochs"][m["best"]["epoch"] - 1]["val_f1_weighted"] == best_f1
    test = m["test"]
    assert {"f1_weighted", "accuracy", "per_class", "confusion_matrix", "epoch"} <= set(test)
    assert test["epoch"] == m["best"]["epoch"]
    assert list(test["per_class"]) == list(CLASSES)
    for row in test["per_class"].values():
        assert set(row) == {"precision", "recall", "f1", "support"} and row["support"] == 24
    assert np.asarray(test["confusion_matrix"]).sum() == 96
    for name in ("curves.png", "confusion_matrix.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert m["plots"] == {"curves": "curves.png", "confusion_matrix": "confusion_matrix.png"}


@pytest.mark.slow
def test_best_checkpoint_loads_and_predicts_like_the_report(trained):
    data, run_dir, m, _ = trained
    ck = load_checkpoint(run_dir / "best.pt")
    assert (ck.arch, ck.class_names, ck.input_size) == ("glimmernet", list(CLASSES), (64, 64))
    assert ck.provenance["epoch"] == m["best"]["epoch"]
    assert ck.provenance["dataset"] == str(Path(data).resolve())
    assert ck.provenance["metrics"]["test"]["f1_weighted"] == m["test"]["f1_weighted"]
    assert "train_state" not in ck.raw
    # The deployment path: runtime preprocessing from the checkpoint's own metadata.
    paths, labels, names = labelled_images(Path(data) / "Test", ck.class_names)
    batch, _ = Preprocessor(ck.meta())([read_image(p) for p in paths])
    with torch.no_grad():
        predicted = ck.model(torch.from_numpy(batch)).argmax(1).tolist()
    assert (
        classification_report(labels, predicted, names)["confusion_matrix"]
        == m["test"]["confusion_matrix"]
    )


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_without_resume(trained):
    data, run_dir, _, _ = trained
    before = sha(run_dir / "best.pt")
    rc, _, err = train([data, "--out", run_dir, "--epochs", 1, *SMALL])
    assert rc == 1
    assert "already holds a training run" in error_line(err) and "--resume" in err
    rc, _, err = train([data, "--out", run_dir, "--resume", "--epochs", 8])
    assert rc == 1 and "already trained 8 of 8 epochs" in error_line(err)
    assert sha(run_dir / "best.pt") == before


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 8, "Val": 4}, size=64, seed=3)
    args = ["--img-size", 64, "--batch-size", 8, "--workers", 0]
    assert train([data, "--out", tmp_path / "straight", "--epochs", 3, *args])[0] == 0
    assert train([data, "--out", tmp_path / "split", "--epochs", 1, *args])[0] == 0
    rc, out, err = train(
        [data, "--out", tmp_path / "split", "--resume", "--epochs", 3, "--workers", 1]
    )
    assert rc == 0, err
    assert "resuming" in out and "after epoch 1 of 3" in out
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert [e["epoch"] for e in split["epochs"]] == [1, 2, 3]
    assert split["settings"]["resumed_at_epochs"] == [1]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(split["epochs"]) == drop(straight["epochs"])
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert b["train_state"]["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert (split["test"], split["test_skipped"]) == (None, f"no Test/ folder in {data}")
    assert not (tmp_path / "split" / "confusion_matrix.png").exists()
    rc, _, err = train([data, "--out", tmp_path / "split", "--resume", "--epochs", 4, "--lr", 0.01])
    assert rc == 1 and "--lr 0.01 differs from the run's 0.001" in error_line(err)


def test_resume_without_last_pt_is_an_error(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 2}, size=32)
    rc, _, err = train([data, "--out", tmp_path / "run", "--resume"])
    assert rc == 1
    assert error_line(err) == (
        f"glimmer-train: error: --resume: {tmp_path / 'run' / 'last.pt'} not found "
        "(nothing to resume; start a run without --resume)"
    )


def test_missing_val_and_unreadable_image_are_reported(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 10, "Test": 2}, size=64, seed=2)
    bad = data / "Train" / "Flood" / "flood_0000.png"
    bad.write_bytes(bad.read_bytes()[:200])
    rc, out, err = train(
        [
            data,
            "--out",
            tmp_path / "run",
            "--epochs",
            1,
            "--workers",
            0,
            "--val-fraction",
            0.2,
            *SMALL,
        ]
    )
    assert rc == 0, err
    assert "no Val/ folder: holding out a stratified 20% of Train" in out
    assert "glimmer-train: warning: skipped 1 unreadable image(s)" in err and str(bad) in err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["skipped_images"] == [
        {"path": str(bad), "reason": "cannot be decoded (truncated or not an image)"}
    ]
    assert m["dataset"]["val_source"] == "holdout" and m["dataset"]["holdout_fraction"] == 0.2
    val = m["dataset"]["splits"]["Val"]
    assert val["per_class"] == {"Earthquake": 2, "Fire": 2, "Flood": 2, "Normal": 2}
    assert m["dataset"]["splits"]["Train"]["per_class"] == {
        "Earthquake": 8,
        "Fire": 8,
        "Flood": 7,
        "Normal": 8,
    }
    assert m["test"]["num_samples"] == 8


def test_mismatched_class_folders_fail_before_training(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 2, "Val": 1}, size=32)
    (data / "Val" / "Normal").rename(data / "Val" / "Calm")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "glimmer.train.cli",
            str(data),
            "--out",
            str(run_dir),
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    line = error_line(proc.stderr)
    assert line.startswith(
        f"glimmer-train: error: {data / 'Val'}: class folders differ from {data / 'Train'}"
    )
    assert "missing ['Normal'], extra ['Calm']" in line
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "layout, flags, message",
    [
        (None, [], "DATA_DIR {data}: no such folder"),
        ({}, [], "DATA_DIR {data}: no Train/ folder"),
        ({"Train": 2}, ["--img-size", "32"], "--img-size 32 is too small for glimmernet"),
        ({"Train": 2}, ["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (
            {"Train": 2},
            ["--val-fraction", "1.5"],
            "--val-fraction must be between 0 and 1, got 1.5",
        ),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, layout, flags, message):
    data = tmp_path / "data"
    if layout is not None:
        data.mkdir()
        make_scene_dataset(data, layout, size=32)
    rc, _, err = train([data, "--out", tmp_path / "run", "--workers", 0, *flags])
    assert rc == 1
    assert error_line(err).startswith("glimmer-train: error: " + message.format(data=data))
    assert not (tmp_path / "run" / "best.pt").exists()


def test_empty_class_folder_in_train_is_an_error(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 2}, size=32)
    for image in (data / "Train" / "Fire").iterdir():
        image.unlink()
    rc, _, err = train([data, "--out", tmp_path / "run", "--workers", 0])
    assert rc == 1
    assert error_line(err) == (
        f"glimmer-train: error: {data / 'Train' / 'Fire'}: no images "
        "(.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff); every class needs training images"
    )
