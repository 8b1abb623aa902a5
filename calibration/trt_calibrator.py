"""Legacy implicit INT8 calibration for TensorRT 8.x / 10.x: an IInt8EntropyCalibrator2.

Implements the implicit path of docs/tensorrt.md, "INT8 paths". TensorRT calls the calibrator while
building: ``get_batch_size`` (8.x only: 10.x ignores it), then ``get_batch(names)`` until it
returns None (each call hands over device pointers to one NCHW float32 batch), and it reads / writes
a calibration cache so that a rebuild skips the images. TensorRT reads exactly the network's batch
(or its calibration profile's) from each pointer, so the builder tells the calibrator that batch
(``expect_batch``) and the images are cut into batches of that size (a short remainder is dropped).
The batches come from an iterable of numpy arrays already preprocessed by the runtime's
:class:`~glimmer.runtime.core.preprocess.Preprocessor`, so calibration statistics see what the drone
sees. The builder closes the calibrator after the build, freeing its pinned and device buffers, its
stream and, with pycuda, the context it pushed. Implicit calibration is deprecated from TensorRT
10.1 and removed in 11.0; there the explicitly quantized (Q/DQ) ONNX is the only INT8 path, and this
module says so.

The ``IInt8EntropyCalibrator2`` base class exists only when ``tensorrt`` imports, so the subclass is
made on first use rather than at import time.
"""

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import numpy as np

from glimmer.runtime.backends.trt import compat as trt_compat
from glimmer.runtime.backends.trt import cuda as cuda_mem
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_bytes

QDQ_HINT = (
    "export the explicitly quantized ONNX instead: glimmer-export CHECKPOINT --int8 --calib DIR "
    "writes NAME.int8.onnx (symmetric Q/DQ), which every TensorRT version from 8.x to 11 builds"
)


def implicit_calibration_available(trt: Any) -> bool:
    return trt_compat.supports_implicit_int8(trt)


def make_entropy_calibrator(
    batches: Any,
    cache_file: Path,
    *,
    cuda: Optional[cuda_mem.CudaMem] = None,
    log: Callable[[str], None] = print,
    batch_size: Optional[int] = None,
) -> Any:
    """An ``IInt8EntropyCalibrator2`` over ``batches`` with its cache at ``cache_file``.

    ``batches`` is an iterable of NCHW float32 arrays, or an object with a ``batches()`` method
    (:class:`glimmer.calibration.dataset.CalibrationSet`); either is read only if TensorRT asks,
    so a valid calibration cache means no image is decoded. Pass the result as ``calibrator=`` to
    :func:`glimmer.runtime.backends.trt.build.build_engine`. ``batch_size`` (default:
    ``batches.batch_size``) is the batch of a dynamic network's calibration profile. Raises
    GlimmerError on TensorRT 11+, which has no implicit calibration.
    """
    trt = trt_compat.import_tensorrt()
    if not implicit_calibration_available(trt):
        raise GlimmerError(
            f"TensorRT {trt_compat.version(trt)} has no implicit INT8 calibration "
            f"(removed in 11.0); {QDQ_HINT}"
        )
    calibrator = _calibrator_class(trt)(_lazy(batches), Path(cache_file), cuda, log)
    # The builder makes its calibration profile at this batch before any image is read.
    calibrator.calibration_batch = batch_size or getattr(batches, "batch_size", None)
    return calibrator


def EntropyCalibrator(batches: Any, cache_file: Path, **kwargs: Any) -> Any:  # noqa: N802
    """Same as :func:`make_entropy_calibrator`, under the name of the TensorRT class it makes."""
    return make_entropy_calibrator(batches, cache_file, **kwargs)


def _lazy(source: Any) -> Iterator[np.ndarray]:
    """Defer ``source.batches()`` / ``iter(source)`` to the first batch TensorRT asks for."""
    yield from (source.batches() if hasattr(source, "batches") else source)


def _calibrator_class(trt: Any) -> type:
    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        """Feeds preprocessed batches to TensorRT; TensorRT picks thresholds by KL divergence."""

        def __init__(
            self,
            batches: Iterator[np.ndarray],
            cache_file: Path,
            cuda: Optional[cuda_mem.CudaMem],
            log: Callable[[str], None],
        ) -> None:
            base.__init__(self)  # pybind11 bases must be initialised explicitly
            self.cache_file = cache_file
            self.cache_sha256 = (
                hashlib.sha256(cache_file.read_bytes()).hexdigest()
                if cache_file.is_file()
                else None
            )
            self.batches_fed = 0
            self.batches_skipped = 0
            self.images_dropped = 0
            self.network_batch: Optional[int] = None
            self.error: Optional[str] = None
            self._source: Iterator[np.ndarray] = iter(batches)
            self._first: Optional[np.ndarray] = None
            self._chunks: Optional[Iterator[np.ndarray]] = None
            self._cuda = cuda
            self._own_cuda = cuda is None
            self._host: Optional[cuda_mem.HostBuffer] = None
            self._device: Optional[cuda_mem.DeviceBuffer] = None
            self._stream = 0
            self._log = log

        def _peek(self) -> np.ndarray:
            if self._first is None:
                try:
                    self._first = self._checked(next(self._source))
                except StopIteration:
                    raise GlimmerError(
                        "INT8 calibration got no batches (no usable calibration images)"
                    ) from None
            return self._first

        @staticmethod
        def _checked(batch: np.ndarray) -> np.ndarray:
            batch = np.asarray(batch)
            if batch.ndim != 4 or batch.dtype != np.float32:
                raise GlimmerError(
                    f"calibration batches must be NCHW float32, got {batch.dtype} "
                    f"{list(batch.shape)}"
                )
            return np.ascontiguousarray(batch)

        def expect_batch(self, batch: Optional[int]) -> None:
            """The batch TensorRT will read from every pointer (set by the builder)."""
            self.network_batch = int(batch) if batch else None

        def get_batch_size(self) -> int:
            try:
                return self._size()
            except Exception as exc:  # noqa: BLE001 - e.g. too few images; reported by build_engine
                self.error = str(exc)
                return 1

        def _size(self) -> int:
            return self.network_batch or int(self._peek().shape[0])

        def _batches(self) -> Iterator[np.ndarray]:
            self._peek()
            while self._first is not None:
                batch, self._first = self._first, None
                yield batch
            for batch in self._source:
                yield self._checked(batch)

        def _cut(self) -> Iterator[np.ndarray]:
            """Batches of exactly the calibration size, whatever size the source yields."""
            size = self._size()
            pending: List[np.ndarray] = []
            count = 0
            for batch in self._batches():
                pending.append(batch)
                count += int(batch.shape[0])
                while count >= size:
                    joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                    yield np.ascontiguousarray(joined[:size])
                    rest = joined[size:]
                    pending, count = ([rest] if len(rest) else []), int(rest.shape[0])
            if count:
                # TensorRT calibrates at one fixed batch size: a short remainder is dropped.
                self.batches_skipped += 1
                self.images_dropped += count

        def _next(self) -> Optional[np.ndarray]:
            if self._chunks is None:
                self._chunks = self._cut()
            return next(self._chunks, None)

        def get_batch(self, names: List[str], *_: Any) -> Optional[List[int]]:
            # Exceptions cannot cross back into TensorRT's C++ caller: record, then end calibration.
            try:
                batch = self._next()
                if batch is None:
                    return None
                if self._host is None:
                    if self._cuda is None:
                        self._cuda = cuda_mem.open_cuda()
                    self._host = self._cuda.pinned(batch.shape, np.float32)
                    self._device = self._cuda.alloc(self._host.nbytes)
                    self._stream = self._cuda.stream()
                assert self._cuda is not None and self._device is not None
                np.copyto(self._host.array, batch)
                self._cuda.h2d_async(self._device, self._host, self._host.nbytes, self._stream)
                self._cuda.synchronize(self._stream)
                self.batches_fed += 1
                return [self._device.ptr] * len(names)
            except Exception as exc:  # noqa: BLE001 - reported by build_engine via .error
                self.error = str(exc)
                return None

        def read_calibration_cache(self) -> Optional[bytes]:
            if self.cache_file.is_file():
                self._log(f"using INT8 calibration cache {self.cache_file}")
                return self.cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.error:
                # A table from an interrupted feed would be trusted by every later build.
                self._log(f"not writing {self.cache_file}: calibration failed ({self.error})")
                return
            data = bytes(memoryview(cache))
            atomic_write_bytes(self.cache_file, data)
            self.cache_sha256 = hashlib.sha256(data).hexdigest()
            self._log(
                f"wrote INT8 calibration cache {self.cache_file} ({self.batches_fed} batches)"
            )

        def close(self) -> None:
            """Free the buffers and the stream, and close a CUDA binding opened here (which pops
            pycuda's context); safe to call twice."""
            if self._cuda is not None:
                for buf in (self._host, self._device):
                    if buf is not None:
                        self._cuda.free(buf)
                if self._stream:
                    self._cuda.destroy_stream(self._stream)
                if self._own_cuda:
                    self._cuda.close()
            self._host = self._device = self._cuda = None
            self._stream = 0

    return EntropyCalibrator
