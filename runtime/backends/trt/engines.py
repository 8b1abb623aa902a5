"""The engine step of glimmer-export, beside the builder: build engines where TensorRT and a GPU
exist, else say where and how they will be built (docs/tensorrt.md).

It lives in the runtime, beside the builder, so that the drone builds with the same code as the
export machine. The builder (:mod:`glimmer.runtime.backends.trt.build`) and the backend are imported
only when an engine is wanted, so importing this module never needs TensorRT. The legacy INT8
calibrator is made by the caller: it reads calibration images, a layer above. Timing caches share
the engines' folder under one base name; the builder keys each file by TensorRT version and GPU.
"""

import contextlib
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.timing import median_ms

#: base name; the builder adds the TensorRT version and GPU (trt_build.keyed_timing_cache)
TIMING_CACHE = "timing.cache"


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason) from the builder; a builder that cannot be imported reads as unusable."""
    try:
        from glimmer.runtime.backends.trt import build as trt_build
    except ImportError as exc:  # pragma: no cover - the module ships with the runtime
        return False, f"the TensorRT builder is unavailable ({exc})"
    return trt_build.tensorrt_status()


def deferred_line(onnx_path: Path, flags: str, reason: str) -> str:
    """The one line printed when no engine can be built here."""
    return (
        f"TensorRT engine not built here ({reason}): build it on the target with "
        f"`glimmer-export {onnx_path} {flags}`, or glimmer-run builds it at first start"
    )


@contextlib.contextmanager
def tensorrt_runner(
    onnx_path: Path, precision: str, meta: ModelMeta, batch: Any, work_dir: Path
) -> Iterator[Callable[[], Any]]:
    """One inference of ``batch`` (copy in, compute, copy out) by an engine built from ``onnx_path``
    in ``work_dir``, as a zero-argument callable valid inside the ``with``: ``--dilation-mode auto``
    holds one per lowering so that their timing can be interleaved."""
    from glimmer.runtime.backends.trt.build import build_engine, built_engine_path
    from glimmer.runtime.backends.trt.runner import TensorRTBackend

    engine = Path(work_dir) / f"{Path(onnx_path).stem}.{precision}.engine"
    sidecar = build_engine(
        Path(onnx_path),
        engine,
        precision,
        meta=meta,
        timing_cache=Path(work_dir) / TIMING_CACHE,
        log=lambda _msg: None,
    )
    with TensorRTBackend(built_engine_path(engine, sidecar), meta=meta) as backend:
        yield lambda: backend.infer(batch)


def tensorrt_latency_ms(
    onnx_path: Path,
    precision: str,
    meta: ModelMeta,
    batch: Any,
    runs: int,
    work_dir: Path,
    warmup: int = 10,
) -> float:
    """Median ms of one inference by an engine built from ``onnx_path`` in ``work_dir``: one
    lowering timed on its own (``tensorrt_runner`` when several are compared)."""
    with tensorrt_runner(onnx_path, precision, meta, batch, work_dir) as call:
        return median_ms(call, max(1, runs), warmup)


def build_engines(
    jobs: List[Dict[str, Any]],
    meta: ModelMeta,
    out_dir: Path,
    *,
    dynamic_batch: bool,
    max_batch: int,
    log: Callable[[str], None] = print,
) -> List[Dict[str, Any]]:
    """Build each job ``{onnx, engine, precision[, meta][, calibrator]}``; returns the sidecars,
    each with the path and precision of the engine really written (an fp16 job on a GPU without
    fast FP16 writes ``NAME.fp32.engine``)."""
    from glimmer.runtime.backends.trt import build as trt_build

    batches: Dict[str, Optional[int]] = {}
    if dynamic_batch:
        batches = {"min_batch": 1, "opt_batch": 1, "max_batch": max_batch}
    results = []
    for job in jobs:
        log(f"building {job['engine']} ({job['precision']}) from {job['onnx']}")
        sidecar = trt_build.build_engine(
            Path(job["onnx"]),
            Path(job["engine"]),
            job["precision"],
            meta=job.get("meta", meta),
            timing_cache=Path(out_dir) / TIMING_CACHE,
            calibrator=job.get("calibrator"),
            log=log,
            **batches,
        )
        built = {
            "path": str(trt_build.built_engine_path(Path(job["engine"]), sidecar)),
            "precision": sidecar.get("precision", job["precision"]),
            "sidecar": sidecar,
        }
        if built["precision"] != job["precision"]:
            built["requested_precision"] = job["precision"]
        results.append(built)
    return results
