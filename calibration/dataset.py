"""INT8 calibration images, read and preprocessed exactly as deployment does.

The same calibration images must go through exactly the runtime's preprocessing, or the ranges
describe inputs the deployed model never sees (docs/tensorrt.md, "INT8 paths"). Images are found
recursively under ``--calib DIR`` (a training split with class folders works), decoded with
:func:`glimmer.runtime.core.images.read_image` and turned into network input by
:class:`glimmer.runtime.core.preprocess.Preprocessor` built from the model's own :class:`ModelMeta`:
resize or letterbox, channel order, scale, mean/std all come from the artifact.

The selection is a seeded shuffle of the sorted file list, so a folder sorted by class still gives
every class a share. Undecodable files are skipped and counted; fewer usable images than asked for
is an error, never a silently smaller calibration set.

:class:`OrtCalibrationReader` feeds ONNX Runtime's ``quantize_static`` (any object with ``get_next``
qualifies, so onnxruntime is not imported here); :meth:`CalibrationSet.batches` feeds TensorRT's
legacy calibrator. Imports only ``glimmer.runtime``.
"""

from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import IMAGE_EXTS, list_images, read_image
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor

#: bytes of preprocessed input one calibration batch may take (host copy; the device holds the same)
CALIB_BATCH_BYTES = 256 * 2**20


def calibration_batch(count: int, meta: ModelMeta, budget_bytes: int = CALIB_BATCH_BYTES) -> int:
    """The batch TensorRT's legacy calibrator should see: the model's static batch, or for a dynamic
    batch every image in one batch as far as ``budget_bytes`` allows. TensorRT calibrates at the
    calibration profile's OPT shape, and its entropy histograms from one large batch are better than
    from many batches of one."""
    if meta.batch:
        return meta.batch
    h, w = meta.input_size
    per_image = 3 * int(h) * int(w) * 4
    return max(1, min(count, budget_bytes // per_image))


class CalibrationSet:
    """``count`` preprocessed calibration images from ``root``, in batches of ``batch_size``.

    Args:
        root: folder searched recursively.
        meta: the model's metadata; decides the preprocessing.
        count: usable images required.
        batch_size: images per batch (the model's static batch, or 1 for a dynamic one);
            ``count`` is rounded down to whole batches.
        seed: order of the seeded shuffle.
        option: the flag named in errors.
    """

    def __init__(
        self,
        root: Path,
        meta: ModelMeta,
        count: int,
        batch_size: int = 1,
        seed: int = 0,
        option: str = "--calib",
    ) -> None:
        if count < 1:
            raise GlimmerError(f"--calib-count must be at least 1, got {count}")
        if batch_size < 1 or batch_size > count:
            raise GlimmerError(
                f"--calib-count {count} is smaller than the model's batch {batch_size}"
            )
        self.root, self.meta, self.option = Path(root), meta, option
        self.batch_size = batch_size
        self.count = (count // batch_size) * batch_size
        self.seed = seed
        self.paths: List[Path] = []
        self.skipped: List[Path] = []
        self._data: Optional[np.ndarray] = None

    def _select(self) -> None:
        if not self.root.is_dir():
            raise GlimmerError(f"{self.option} {self.root}: no such folder")
        found = list_images(self.root, recursive=True)
        if not found:
            raise GlimmerError(
                "{} {}: no images found (looked recursively for {})".format(
                    self.option, self.root, ", ".join(IMAGE_EXTS)
                )
            )
        order = np.random.default_rng(self.seed).permutation(len(found))
        pre = Preprocessor(self.meta)
        arrays = []
        for index in order:
            if len(arrays) == self.count:
                break
            image = read_image(found[int(index)])
            if image is None:
                self.skipped.append(found[int(index)])
                continue
            arrays.append(pre.image(image)[0])
            self.paths.append(found[int(index)])
        if len(arrays) < self.count:
            raise GlimmerError(
                f"{self.option} {self.root}: only {len(arrays)} usable images "
                f"({len(found)} found, {len(self.skipped)} unreadable), {self.count} needed for "
                "calibration (lower --calib-count or add images)"
            )
        self._data = np.stack(arrays).astype(np.float32)

    @property
    def data(self) -> np.ndarray:
        """All selected images as one float32 NCHW array (read on first use)."""
        if self._data is None:
            self._select()
        assert self._data is not None
        return self._data

    def __len__(self) -> int:
        return self.count // self.batch_size

    def batches(self) -> Iterator[np.ndarray]:
        """Contiguous float32 NCHW batches of ``batch_size``."""
        data = self.data
        for start in range(0, self.count, self.batch_size):
            yield np.ascontiguousarray(data[start : start + self.batch_size])


class OrtCalibrationReader:
    """ONNX Runtime ``CalibrationDataReader``: one ``{input_name: batch}`` per call, then None."""

    def __init__(self, calib: CalibrationSet, input_name: str) -> None:
        self.calib = calib
        self.input_name = input_name
        self._iter: Optional[Iterator[np.ndarray]] = None

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._iter is None:
            self._iter = self.calib.batches()
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = None

    def __len__(self) -> int:
        return len(self.calib)
