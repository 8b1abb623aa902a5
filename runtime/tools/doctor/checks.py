"""glimmer-doctor's checks: the reference inputs, the Polygraphy-style comparison with
tolerances, the model in ONNX Runtime's CPU provider, TensorRT engines built by glimmer-export's
engine step, and their timing in trtexec's vocabulary.
"""

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from glimmer.runtime.backends.trt import engines as trt_engines
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import sha256_file
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata
from glimmer.runtime.core.timing import latency_stats, sample_ms

REFERENCE = Path(__file__).resolve().parent / "data" / "reference.onnx"
#: the metadata_props key holding PyTorch's outputs on :func:`reference_inputs`
RECORDED_KEY = "glimmer.doctor"
INPUTS = "glimmer-doctor patterns v1"  # names the input recipe the recorded outputs belong to
#: (atol, rtol) per comparison. FP32 engines run TF32 on Ampere and newer (TensorRT's default),
#: which keeps FP16's 10-bit mantissa: their tolerance is close to FP16's, far below what a wrong
#: engine (channel order, dilation, layout) gives on logits of order 1. INT8 engines are compared
#: with ONNX Runtime running the same Q/DQ: a value one quantisation step off is expected.
TOLERANCES = {
    "recorded": (1e-4, 1e-3),
    "fp32": (1e-2, 1e-2),
    "fp16": (3e-2, 3e-2),
    "int8": (0.1, 0.1),
}
#: the engines built per model precision (a Q/DQ ONNX builds only as INT8)
ENGINES = {"fp32": ("fp32", "fp16"), "fp16": ("fp16",), "int8": ("int8",)}
#: where progress lines go (the engine step's log)
Log = Callable[[str], None]


# -- inputs and comparison ----------------------------------------------------------------------
def pattern_frames(height: int, width: int) -> List[np.ndarray]:
    """Four uint8 BGR frames of integer patterns: colour gradients, a checkerboard, rings, noise.

    Integer arithmetic only (uint64 wraps the same everywhere), so every machine gets the same
    bytes."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    w1, h1 = max(1, width - 1), max(1, height - 1)
    gradient = np.stack([x * 255 // w1, y * 255 // h1, (x + y) * 255 // (w1 + h1)], axis=-1)
    squares = ((x // 8 + y // 8) % 2).astype(bool)[..., None]
    checker = np.where(squares, np.array([40, 200, 90]), np.array([220, 30, 160]))
    r = ((x - width // 2) ** 2 + (y - height // 3) ** 2) // 16 % 256
    rings = np.stack([r, 255 - r, (3 * r) % 256], axis=-1)
    c = np.arange(3, dtype=np.uint64)
    h = (x.astype(np.uint64)[..., None] * np.uint64(73856093)) ^ (
        y.astype(np.uint64)[..., None] * np.uint64(19349663)
    )
    h = (h ^ (c * np.uint64(83492791))) * np.uint64(2654435761)
    noise = (h >> np.uint64(24)) & np.uint64(255)
    return [np.ascontiguousarray(f, dtype=np.uint8) for f in (gradient, checker, rings, noise)]


def reference_inputs(meta: ModelMeta) -> np.ndarray:
    """The check inputs, NCHW float32: :func:`pattern_frames` at the input size, preprocessed as
    the runtime's Preprocessor does a frame of that size (channel order, scale, mean, std)."""
    height, width = meta.input_size
    x = np.stack(pattern_frames(height, width))
    if meta.channel_order == "RGB":
        x = x[..., ::-1]
    x = x.astype(np.float32) * np.float32(meta.scale)
    if meta.mean is not None:
        x -= np.asarray(meta.mean, np.float32).reshape(1, 1, 1, 3)
    if meta.std is not None:
        x *= (1.0 / np.asarray(meta.std, np.float32)).reshape(1, 1, 1, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def compare(actual: np.ndarray, reference: np.ndarray, atol: float, rtol: float) -> Dict[str, Any]:
    """Polygraphy's elementwise check: an element fails when its absolute error exceeds ``atol``
    and its error relative to ``reference`` exceeds ``rtol``; the statistics say how close."""
    a = np.asarray(actual, np.float64)
    ref = np.asarray(reference, np.float64)
    result: Dict[str, Any] = {"atol": atol, "rtol": rtol}
    if a.shape != ref.shape:
        return dict(result, passed=False, error=f"shape {list(a.shape)} vs {list(ref.shape)}")
    absdiff = np.abs(a - ref)
    reldiff = absdiff / np.where(ref == 0, 2e-16, np.abs(ref))  # Polygraphy's epsilon for zeros
    bad = ((absdiff > atol) & (reldiff > rtol)) | np.isnan(absdiff)
    result.update(
        passed=not bool(bad.any()),
        mismatched=int(bad.sum()),
        elements=int(bad.size),
        max_absdiff=float(absdiff.max()) if absdiff.size else 0.0,  # NaN when any is
        max_reldiff=float(reldiff.max()) if reldiff.size else 0.0,
        mean_absdiff=float(absdiff.mean()) if absdiff.size else 0.0,
        median_absdiff=float(np.median(absdiff)) if absdiff.size else 0.0,
        max_abs_reference=float(np.abs(ref).max()) if ref.size else 0.0,
    )
    if a.ndim == 2 and a.shape[1] > 1:  # a classifier's logits
        result["top1_agreement"] = float((a.argmax(1) == ref.argmax(1)).mean())
    return result


def recorded_outputs(props: Dict[str, str], origin: str) -> Optional[np.ndarray]:
    """PyTorch's outputs on :func:`reference_inputs`, when the model carries them."""
    if RECORDED_KEY not in props:
        return None
    try:
        data = json.loads(props[RECORDED_KEY])
        if data.get("inputs") != INPUTS:
            return None  # recorded for other inputs: not comparable
        return np.asarray(data["outputs"], np.float32)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GlimmerError(
            f"{origin}: metadata key {RECORDED_KEY!r} is unreadable; reinstall glimmer-edge"
        ) from None


def run_all(backend: Any, inputs: np.ndarray, batch: Optional[int]) -> np.ndarray:
    """Each input alone (repeated to a static batch), first output of each, stacked."""
    outs = []
    for x in inputs:
        feed = np.repeat(x[None], batch or 1, axis=0)
        outs.append(np.asarray(backend.infer(feed)[0])[:1])
    return np.concatenate(outs)


def time_infer(backend: Any, x: np.ndarray, iters: int, warmup: int) -> Dict[str, Any]:
    """trtexec's latency statistics of ``backend.infer(x)`` and its throughput in qps."""
    samples = sample_ms(lambda: backend.infer(x), iters, warmup)
    stats = latency_stats(samples)
    total = sum(samples)
    stats["throughput_qps"] = round(1e3 * len(samples) / total, 1) if total > 0 else None
    return stats


# -- the checks ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Model:
    """The model under check: its file, metadata, inputs and recorded outputs (if any)."""

    path: Path
    meta: ModelMeta
    inputs: np.ndarray
    recorded: Optional[np.ndarray]

    @property
    def batch_input(self) -> np.ndarray:
        return np.repeat(self.inputs[:1], self.meta.batch or 1, axis=0)

    def describe(self) -> Dict[str, Any]:
        meta = self.meta
        return {
            "path": str(self.path),
            "sha256": sha256_file(self.path),
            "reference_model": self.path == REFERENCE,
            "name": meta.name,
            "task": meta.task,
            "input_size": list(meta.input_size),
            "classes": len(meta.class_names),
            "precision": meta.precision,
            "batch": meta.batch,
            "inputs": f"{len(self.inputs)} integer patterns ({INPUTS}), batch 1",
            "recorded_outputs": self.recorded is not None,
        }


def load_model(path: Path) -> Model:
    props = read_onnx_metadata(path)
    meta = ModelMeta.from_props(props, str(path))
    recorded = recorded_outputs(props, str(path))
    return Model(path=path, meta=meta, inputs=reference_inputs(meta), recorded=recorded)


def check_onnxruntime(
    model: Model, available: bool, reason: str, iters: int, warmup: int
) -> Tuple[Dict[str, Any], Optional[np.ndarray]]:
    """The model in ONNX Runtime's CPU provider, the reference TensorRT is compared with:
    (record: outputs vs the recorded ones, latency; the outputs, None when it could not run)."""
    if not available:
        return {"ran": False, "reason": reason}, None
    from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend

    record: Dict[str, Any] = {"ran": True, "provider": "CPUExecutionProvider"}
    try:
        with OnnxRuntimeBackend(model.path, providers=["CPUExecutionProvider"]) as backend:
            record["backend"] = backend.describe()
            outputs = run_all(backend, model.inputs, model.meta.batch)
            record["latency_ms"] = time_infer(backend, model.batch_input, iters, warmup)
    except GlimmerError as exc:
        return dict(record, passed=False, error=str(exc)), None
    record["passed"] = True
    if model.recorded is not None:
        atol, rtol = TOLERANCES["recorded"]
        record["vs_recorded"] = compare(outputs, model.recorded, atol, rtol)
        record["passed"] = record["vs_recorded"]["passed"]
    return record, outputs


def check_engine(
    model: Model,
    precision: str,
    work: Path,
    reference: Optional[Tuple[str, np.ndarray]],
    iters: int,
    warmup: int,
    log: Log,
) -> Dict[str, Any]:
    """Build one engine with glimmer-export's engine step, run it, compare it and time it."""
    from glimmer.runtime.backends.factory import open_backend

    engine = work / f"{model.path.stem}.{precision}.engine"
    record: Dict[str, Any] = {"precision": precision}
    try:
        (built,) = trt_engines.build_engines(
            [
                {
                    "onnx": model.path,
                    "engine": engine,
                    "precision": precision,
                    "meta": dataclasses.replace(model.meta, precision=precision),
                }
            ],
            model.meta,
            work,
            dynamic_batch=model.meta.batch is None,
            max_batch=1,
            log=log,
        )
        # on a GPU without fast FP16 an fp16 request is built, and named, as FP32
        engine = Path(built["path"])
        record["built_precision"] = built.get("precision", precision)
        sidecar = built["sidecar"]
        record.update(
            built=True,
            build_seconds=sidecar.get("build_seconds"),
            engine_bytes=sidecar.get("engine_bytes"),
            tensorrt_version=sidecar.get("tensorrt_version"),
            gpu=sidecar.get("gpu_name"),
            compute_capability=sidecar.get("compute_capability"),
        )
        with open_backend(engine, "tensorrt") as backend:
            record["backend"] = backend.describe()
            outputs = run_all(backend, model.inputs, model.meta.batch)
            record["latency_ms"] = time_infer(backend, model.batch_input, iters, warmup)
    except GlimmerError as exc:
        return dict(record, built=record.get("built", False), passed=False, error=str(exc))
    if reference is None:
        record.update(passed=True, compared_with=None)
        return record
    atol, rtol = TOLERANCES[precision]
    record["compared_with"] = reference[0]
    record["comparison"] = compare(outputs, reference[1], atol, rtol)
    record["passed"] = record["comparison"]["passed"]
    return record


def check_tensorrt(
    model: Model,
    info: Dict[str, Any],
    reference: Optional[Tuple[str, np.ndarray]],
    iters: int,
    warmup: int,
    log: Log,
) -> Dict[str, Any]:
    if not info["available"]:
        return {"ran": False, "reason": info["reason"], "skipped": "engine checks skipped"}
    with tempfile.TemporaryDirectory(prefix="glimmer-doctor-") as work:
        engines = [
            check_engine(model, precision, Path(work), reference, iters, warmup, log)
            for precision in ENGINES[model.meta.precision]
        ]
    return {"ran": True, "status": info["reason"], "engines": engines}
