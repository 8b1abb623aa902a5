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
    install_fake_pycuda,
    install_fake_tensorrt,
    make_fake_pycuda,
    tiny_meta,
    write_tiny_onnx,
)

from glimmer.calibration.trt_calibrator import make_entropy_calibrator
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.backends.trt import cuda as cuda_mem
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


@pytest.mark.parametrize("generation", ["8.4", "8.5", "10.3"])
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
    assert fake_cuda.allocs == {}  # closed by the build


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


@pytest.mark.parametrize("generation", ["8.6", "10.3"])
def test_batches_are_cut_to_the_networks_batch_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda
):
    """A static batch-1 network fed batches of 2: 8.x compares get_batch_size with the network's
    batch, 10.x ignores it and reads the network's batch from each pointer. Either way every image
    must reach the builder, one at a time."""
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    data = batches([2, 3])
    calibrator = make_entropy_calibrator(data, tmp_path / "a.cache", log=quiet)
    sidecar = build_int8(tmp_path, calibrator, batch=1)
    assert trt.stats["calibration_batches"] == trt.stats["calibration_images"] == 5
    assert trt.stats["calibration_sum"] == pytest.approx(
        float(sum(b.sum() for b in data)), rel=1e-5
    )
    assert (calibrator.batches_fed, calibrator.images_dropped) == (5, 0)
    assert "calibration" not in sidecar["shapes"]["profile"]


@pytest.mark.parametrize("generation", ["8.6", "10.3"])
def test_a_short_remainder_is_dropped_with_fake_tensorrt(
    generation, tmp_path, monkeypatch, fake_cuda
):
    trt = install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    data = batches([3, 2])  # 5 images at a calibration batch of 2: two batches, one image dropped
    calibrator = make_entropy_calibrator(data, tmp_path / "a.cache", log=quiet, batch_size=2)
    build_int8(tmp_path, calibrator)
    joined = np.concatenate(data)
    assert trt.stats["calibration_images"] == 4 and calibrator.images_dropped == 1
    assert trt.stats["calibration_sum"] == pytest.approx(float(joined[:4].sum()), rel=1e-5)


@pytest.mark.parametrize("generation, asked", [("8.6", True), ("10.3", False)])
def test_get_batch_size_is_asked_on_8_only_with_fake_tensorrt(
    generation, asked, tmp_path, monkeypatch, fake_cuda
):
    """The fake is as strict as TensorRT 10: get_batch_size is never called there, so feeding the
    right batch cannot depend on it."""
    install_fake_tensorrt(monkeypatch, generation, fake_cuda)
    calibrator = make_entropy_calibrator(batches([2, 2]), tmp_path / "a.cache", log=quiet)
    calls = []
    original = calibrator.get_batch_size
    calibrator.get_batch_size = lambda: calls.append(1) or original()
    build_int8(tmp_path, calibrator, batch=2)
    assert bool(calls) is asked and calibrator.batches_fed == 2


def test_the_build_closes_the_calibrator_with_fake_tensorrt(tmp_path, monkeypatch, fake_cuda):
    """No close() by the caller: the builder frees the pinned and device buffers and the stream."""
    install_fake_tensorrt(monkeypatch, "10.3", fake_cuda)
    calibrator = make_entropy_calibrator(batches([2, 2]), tmp_path / "a.cache", log=quiet)
    build_int8(tmp_path, calibrator, batch=2)
    assert calibrator.batches_fed == 2
    assert fake_cuda.allocs == {} and fake_cuda.streams == {}
    calibrator.close()  # a second close is harmless
    # A borrowed CUDA binding stays open; the calibrator's own stream is gone.
    shared = cuda_mem.open_cuda()
    keep = shared.stream()
    lent = make_entropy_calibrator(
        batches([2]), tmp_path / "b.cache", log=quiet, cuda=shared, batch_size=2
    )
    build_int8(tmp_path, lent, name="lent", batch=2)
    assert list(fake_cuda.streams) == [keep] and fake_cuda.allocs == {}
    shared.close()


def test_the_build_pops_the_calibrators_pycuda_context(tmp_path, monkeypatch, fake_cuda):
    drv = make_fake_pycuda(fake_cuda)
    install_fake_pycuda(monkeypatch, drv)
    trt = install_fake_tensorrt(monkeypatch, "8.6", fake_cuda)
    data = batches([2, 2])
    build_int8(tmp_path, make_entropy_calibrator(data, tmp_path / "a.cache", log=quiet), batch=2)
    assert trt.stats["calibration_sum"] == pytest.approx(
        float(sum(b.sum() for b in data)), rel=1e-5
    )
    assert drv.stacks() == [[]] and drv.calls.count("push") == drv.calls.count("pop") == 2
    assert fake_cuda.allocs == {}


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
