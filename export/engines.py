"""The TensorRT step of glimmer-export: build engines where TensorRT and a GPU exist, else say where
and how they will be built (docs/tensorrt.md).

The builder itself (version adapters, timing cache, sidecar JSON keyed by ONNX sha256, TensorRT
version, GPU and precision) lives in :mod:`glimmer.runtime.backends.trt.build`, so the drone can build at first
start with the same code; it is imported lazily here, when an engine is wanted.
"""
import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta

TIMING_CACHE = "timing.cache"


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason) from the runtime's builder; a missing builder module reads as unusable."""
    try:
        from glimmer.runtime.backends.trt import build as trt_build
    except ImportError as exc:  # pragma: no cover - the module ships with the runtime
        return False, f"the TensorRT builder is unavailable ({exc})"
    return trt_build.tensorrt_status()


def deferred_line(onnx_path: Path, flags: str, reason: str) -> str:
    """The one line printed when no engine can be built here."""
    return (f"TensorRT engine not built here ({reason}): build it on the target with "
            f"`glimmer-export {onnx_path} {flags}`, or glimmer-run builds it at first start")


def trt_calibrator(calib, cache_path: Path) -> object:
    """The legacy ``IInt8EntropyCalibrator2`` from glimmer.calibration.trt_calibrator."""
    try:
        from glimmer.calibration.trt_calibrator import EntropyCalibrator
    except ImportError as exc:
        raise GlimmerError(f"--int8-mode calibrator needs glimmer.calibration.trt_calibrator ({exc})") from None
    return EntropyCalibrator(calib, cache_path)


def tensorrt_latency_ms(onnx_path: Path, precision: str, meta: ModelMeta, batch: Any, runs: int,
                        work_dir: Path) -> float:
    """Median ms of one inference (copy in, compute, copy out) by an engine built from ``onnx_path``
    in ``work_dir``: how ``--dilation-mode auto`` compares the lowerings where TensorRT exists."""
    from glimmer.runtime.backends.trt.build import build_engine
    from glimmer.runtime.backends.trt.runner import TensorRTBackend

    from .verify import time_calls

    engine = Path(work_dir) / f"{Path(onnx_path).stem}.{precision}.engine"
    build_engine(Path(onnx_path), engine, precision, meta=meta, timing_cache=Path(work_dir) / TIMING_CACHE,
                 log=lambda _msg: None)
    with TensorRTBackend(engine, meta=meta) as backend:
        return time_calls(lambda: backend.infer(batch), batch.shape[0], runs)["median_ms"]


@contextlib.contextmanager
def tensorrt_runner(onnx_path: Path, precision: str, meta: ModelMeta, batch: Any,
                    work_dir: Path) -> Iterator[Callable[[], Any]]:
    """One inference of ``batch`` (copy in, compute, copy out) by an engine built from ``onnx_path``
    in ``work_dir``, as a zero-argument callable valid inside the ``with``: ``--dilation-mode auto``
    holds one per lowering so their timing can be interleaved (:mod:`glimmer.export.interleave`)."""
    from glimmer.runtime.backends.trt.build import build_engine
    from glimmer.runtime.backends.trt.runner import TensorRTBackend

    engine = Path(work_dir) / f"{Path(onnx_path).stem}.{precision}.engine"
    build_engine(Path(onnx_path), engine, precision, meta=meta, timing_cache=Path(work_dir) / TIMING_CACHE,
                 log=lambda _msg: None)
    with TensorRTBackend(engine, meta=meta) as backend:
        yield lambda: backend.infer(batch)


def build_engines(jobs: List[Dict[str, Any]], meta: ModelMeta, out_dir: Path, *, dynamic_batch: bool,
                  max_batch: int, log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Build each job ``{onnx, engine, precision[, meta][, calibrator]}``; returns the sidecars."""
    from glimmer.runtime.backends.trt.build import build_engine

    batches: Dict[str, Optional[int]] = {}
    if dynamic_batch:
        batches = {"min_batch": 1, "opt_batch": 1, "max_batch": max_batch}
    results = []
    for job in jobs:
        log(f"building {job['engine']} ({job['precision']}) from {job['onnx']}")
        sidecar = build_engine(Path(job["onnx"]), Path(job["engine"]), job["precision"],
                               meta=job.get("meta", meta),
                               timing_cache=Path(out_dir) / TIMING_CACHE, calibrator=job.get("calibrator"),
                               log=log, **batches)
        results.append({"path": str(job["engine"]), "precision": job["precision"], "sidecar": sidecar})
    return results
