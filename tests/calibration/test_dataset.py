"""Calibration images: found recursively, read and preprocessed exactly like deployment, and a clear
error when too few are usable."""

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from glimmer.calibration.dataset import CalibrationSet, OrtCalibrationReader
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor


def write_images(root: Path, per_folder: int, folders=("A", "B/deeper")) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(per_folder):
            path = root / folder / f"{i}.png"
            cv2.imwrite(str(path), rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
            paths.append(path)
    return paths


META = ModelMeta(
    task="classify",
    name="t",
    class_names=["x", "y"],
    input_size=(16, 24),
    scale=1 / 255.0,
    mean=(0.5, 0.4, 0.3),
    std=(0.2, 0.25, 0.3),
)


def test_finds_images_recursively_and_preprocesses_like_the_runtime(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "notes.txt").write_text("not an image")
    calib = CalibrationSet(tmp_path, META, count=6, batch_size=2)
    batches = list(calib.batches())
    assert len(batches) == len(calib) == 3
    assert all(b.shape == (2, 3, 16, 24) and b.dtype == np.float32 for b in batches)
    assert {p.parent.name for p in calib.paths} == {"A", "deeper"}
    expected = Preprocessor(META)([cv2.imread(str(p)) for p in calib.paths])[0]
    np.testing.assert_array_equal(np.concatenate(batches), expected)


def test_undecodable_files_are_skipped_and_counted(tmp_path):
    write_images(tmp_path, 2, folders=("A",))
    (tmp_path / "A" / "broken.png").write_bytes(b"\x89PNG truncated")
    calib = CalibrationSet(tmp_path, META, count=2)
    assert calib.data.shape == (2, 3, 16, 24)
    assert [p.name for p in calib.skipped] in ([], ["broken.png"])  # read only until 2 are usable
    calib = CalibrationSet(tmp_path, META, count=3)
    with pytest.raises(
        GlimmerError, match=r"only 2 usable images \(3 found, 1 unreadable\), 3 needed"
    ):
        calib.data  # noqa: B018


def test_too_few_or_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GlimmerError, match="--calib .*empty: no images found"):
        CalibrationSet(tmp_path / "empty", META, count=4).data  # noqa: B018
    with pytest.raises(GlimmerError, match="no such folder"):
        CalibrationSet(tmp_path / "missing", META, count=4).data  # noqa: B018
    write_images(tmp_path / "few", 1, folders=("A",))
    with pytest.raises(GlimmerError, match="only 1 usable images"):
        CalibrationSet(tmp_path / "few", META, count=5).data  # noqa: B018
    with pytest.raises(GlimmerError, match="--calib-count must be at least 1"):
        CalibrationSet(tmp_path / "few", META, count=0)


def test_onnxruntime_reader_yields_each_batch_once_then_none(tmp_path):
    write_images(tmp_path, 2)
    reader = OrtCalibrationReader(CalibrationSet(tmp_path, META, count=4, batch_size=2), "images")
    feeds = []
    while (feed := reader.get_next()) is not None:
        feeds.append(feed)
    assert len(feeds) == 2 and set(feeds[0]) == {"images"}
    reader.rewind()
    assert reader.get_next()["images"].shape == (2, 3, 16, 24)
    from onnxruntime.quantization import CalibrationDataReader

    assert isinstance(reader, CalibrationDataReader)


def test_calibration_batch_is_the_static_batch_or_one_large_batch():
    from glimmer.calibration.dataset import calibration_batch

    assert calibration_batch(256, dataclasses.replace(META, batch=4)) == 4
    dynamic = dataclasses.replace(META, batch=None, input_size=(224, 224))
    assert calibration_batch(256, dynamic) == 256  # 256 images of 224x224 fit 256 MiB in one batch
    assert calibration_batch(256, dynamic, budget_bytes=3 * 224 * 224 * 4 * 10) == 10
    assert calibration_batch(256, dynamic, budget_bytes=1) == 1
