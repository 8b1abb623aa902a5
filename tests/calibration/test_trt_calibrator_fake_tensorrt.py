"""Legacy INT8 entropy calibrator against the FAKE tensorrt module (tests/helpers/fake_tensorrt.py).

The fake builder drives the calibrator the way TensorRT 8.x/10.x does (cache read, batch size,
get_batch until None, cache write) and sums what it finds in the device buffers it is handed, so
these tests check our feeding and cache bookkeeping. No real calibration or engine build happens.
"""

import numpy as np
import pytest
from fake_tensorrt import (
    FakeCudaRuntime,
    install_fake_cuda,
    install_fake_tensorrt,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.calibration.trt_calibrator import make_entropy_calibrator
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.core.errors import GlimmerError


def quiet(_msg):
    pass


def batches(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((n, 3, 8, 8), dtype=np.float32) for n in sizes]


def build_int8(tmp_path, calibrator, name="tiny", batch=None):
    """A dynamic-batch network by default: the calibrator gets a calibration profile of its own."""
    onnx_path = write_tiny_onnx(tmp_path / "tiny.onnx", batch=batch)
    return trt_build.build_engine(
        onnx_path,
        tmp_path / f"{name}.int8.engine",
        "int8",
        meta=tiny_meta(batch),
        calibrator=calibrator,
        log=quiet,
    )


@pytest.mark.parametrize("generation", ["8.4", "10.3"])
def test_calibrator_feeds_batches_and_writes_its_cache_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda
):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    data = batches([2, 2, 2, 1])  # the short last batch cannot be used at a fixed batch size
    cache = tmp_path / "calib.cache"
    calibrator = make_entropy_calibrator(data, cache, log=quiet, batch_size=2)
    sidecar = build_int8(tmp_path, calibrator)
    assert sidecar["shapes"]["profile"]["calibration"] == {
        "batch": [2]
    }  # one profile for calibration
    assert sidecar["builder_options"]["flags"] == ["FP16", "INT8"]
    assert sidecar["builder_options"]["calibrator"] is True
    assert trt.stats["calibration_batches"] == 3
    assert (calibrator.batches_fed, calibrator.batches_skipped) == (3, 1)
    # What the builder read from device memory is exactly the three full batches.
    assert trt.stats["calibration_sum"] == pytest.approx(
        float(sum(b.sum() for b in data[:3])), rel=1e-5
    )
    assert cache.read_bytes() == b"fake-calibration-table"
    calibrator.close()
    assert fake_cuda.allocs == {}


def test_calibration_cache_skips_the_images_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    cache = tmp_path / "calib.cache"
    build_int8(tmp_path, make_entropy_calibrator(batches([2, 2]), cache, log=quiet, batch_size=2))

    def untouchable():
        raise AssertionError("calibration images read although a cache exists")
        yield  # pragma: no cover

    calibrator = make_entropy_calibrator(untouchable(), cache, log=quiet)
    sidecar = build_int8(tmp_path, calibrator, name="again")
    assert trt.stats["calibration_batches"] == 2 and calibrator.batches_fed == 0
    # The cache contents take part in the engine key: another table means another engine.
    assert sidecar["builder_options"]["calibration_cache_sha256"] == calibrator.cache_sha256


def test_calibration_batch_must_match_the_network(tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    with pytest.raises(
        GlimmerError, match="could not build"
    ):  # a static batch-1 network, batches of 2
        build_int8(
            tmp_path,
            make_entropy_calibrator(batches([2]), tmp_path / "a.cache", log=quiet),
            batch=1,
        )
    assert "Calibration batch 2 does not match the network's batch 1." in trt.log
    sidecar = build_int8(
        tmp_path,
        make_entropy_calibrator(batches([1, 1]), tmp_path / "b.cache", log=quiet),
        batch=1,
        name="static",
    )
    assert (
        trt.stats["calibration_batches"] == 2 and "calibration" not in sidecar["shapes"]["profile"]
    )


def test_calibrator_errors_surface_from_the_build_with_fake_tensorrt(
    tmp_path, monkeypatch, fake_cuda
):
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    bad = [np.zeros((2, 3, 8, 8), np.uint8)]
    with pytest.raises(
        GlimmerError, match="INT8 calibration failed: calibration batches must be NCHW float32"
    ):
        build_int8(tmp_path, make_entropy_calibrator(bad, tmp_path / "a.cache", log=quiet))
    with pytest.raises(GlimmerError, match="no usable calibration images"):
        build_int8(tmp_path, make_entropy_calibrator([], tmp_path / "b.cache", log=quiet))
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("*.cache"))


def test_tensorrt_11_points_at_the_qdq_path_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    trt = install_fake_tensorrt(monkeypatch, "11.4", fake_cuda)
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    with pytest.raises(GlimmerError, match=r"removed in 11\.0.*NAME\.int8\.onnx"):
        make_entropy_calibrator(batches([1]), tmp_path / "c.cache")
    with pytest.raises(GlimmerError, match="removed implicit INT8 calibration"):
        build_int8(tmp_path, calibrator=object())


def test_missing_tensorrt_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(GlimmerError, match="^TensorRT is not installed"):
        make_entropy_calibrator([], tmp_path / "c.cache")


def test_pascal_calibrator_path(tmp_path, monkeypatch):
    rt = FakeCudaRuntime(name="NVIDIA GeForce GTX 1080", cc=(6, 1))
    install_fake_cuda(monkeypatch, rt)
    install_fake_tensorrt(monkeypatch, "8.6", rt)
    sidecar = build_int8(
        tmp_path, make_entropy_calibrator(batches([1, 1]), tmp_path / "c.cache", log=quiet)
    )
    assert sidecar["builder_options"]["flags"] == ["INT8"]  # DP4A INT8 without slow-rate FP16


def test_calibration_set_from_an_image_folder_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    """The export path: images -> runtime preprocessing (CalibrationSet) -> calibrator ->
    builder."""
    cv2 = pytest.importorskip("cv2")
    dataset = pytest.importorskip("glimmer.calibration.dataset")
    trt = install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    folder = tmp_path / "calib" / "Fire"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    calib = dataset.CalibrationSet(tmp_path / "calib", tiny_meta(), count=4, batch_size=2)
    build_int8(tmp_path, make_entropy_calibrator(calib, tmp_path / "c.cache", log=quiet))
    assert trt.stats["calibration_batches"] == 2
    assert trt.stats["calibration_sum"] == pytest.approx(float(calib.data.sum()), rel=1e-5)
    too_many = dataset.CalibrationSet(tmp_path / "calib", tiny_meta(), count=6, batch_size=2)
    with pytest.raises(
        GlimmerError, match="INT8 calibration failed: --calib .*only 4 usable images"
    ):
        build_int8(
            tmp_path,
            make_entropy_calibrator(too_many, tmp_path / "d.cache", log=quiet),
            name="more",
        )
