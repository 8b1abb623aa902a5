"""Model file -> Backend: picks ONNX Runtime or TensorRT from the file and ``--backend``.

    .onnx  + auto         ONNX Runtime if installed, else TensorRT (a Jetson without ORT)
    .onnx  + onnxruntime  ONNX Runtime (CPU / CUDA / TensorRT execution providers by availability)
    .onnx  + tensorrt     engine built once on this device and cached (trt_build.ensure_engine)
    .engine               TensorRT, metadata from the engine's sidecar JSON; without one (trtexec,
                          ultralytics) from --meta, the ultralytics header or NAME.onnx beside it

Metadata precedence: an ONNX's own metadata map is authoritative for everything made from it (an
engine built from it gets it handed over); an ``.engine`` has its sidecar, which ``--meta`` can
override; an engine from another tool has what trt.foreign finds. The TensorRT modules are imported
only when chosen, so the ONNX Runtime path never needs them.
"""

import importlib.util
import sys
from pathlib import Path
from typing import Any, Optional

from glimmer.runtime.backends.base import Backend
from glimmer.runtime.backends.ort.int8 import check_int8_kernels
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

BACKENDS = ("auto", "onnxruntime", "tensorrt")


def _installed(module: str) -> bool:
    """Importable, and not just a folder of that name: type stubs or a broken install import as an
    empty namespace package (no origin), which is not TensorRT."""
    if module in sys.modules:
        found = sys.modules[module]
        return found is not None and not (
            getattr(found, "__file__", None) is None and hasattr(found, "__path__")
        )
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin not in (None, "namespace")


def _trt_modules():
    try:
        from glimmer.runtime.backends.trt import build as trt_build
        from glimmer.runtime.backends.trt import runner as backend_trt
    except ImportError as exc:
        raise GlimmerError(
            f"the TensorRT backend cannot be loaded ({exc}): TensorRT's Python "
            "bindings come with JetPack on a Jetson; elsewhere use --backend "
            "onnxruntime"
        ) from None
    return trt_build, backend_trt


def engine_meta(engine_path: Path) -> ModelMeta:
    """Metadata of a bare engine, from the sidecar JSON written beside it at build time."""
    trt_build, _ = _trt_modules()
    return _sidecar_meta(engine_path, trt_build.read_sidecar(engine_path))


def _sidecar_meta(engine_path: Path, sidecar: Any) -> ModelMeta:
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("meta"), dict):
        raise GlimmerError(
            f"{engine_path}: its sidecar has no 'meta' table; rebuild the engine with "
            "glimmer-export or run the .onnx with --backend tensorrt"
        )
    return ModelMeta.from_dict(sidecar["meta"], origin=f"{engine_path} sidecar")


def resolve_backend(model_path: Path, backend: str = "auto") -> str:
    """``onnxruntime`` or ``tensorrt`` for this file and request, or a clear error."""
    if backend not in BACKENDS:
        raise GlimmerError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    suffix = Path(model_path).suffix.lower()
    if suffix == ".engine" or suffix == ".plan":
        if backend == "onnxruntime":
            raise GlimmerError(
                f"{model_path}: a TensorRT engine runs only with --backend tensorrt "
                "(or give the .onnx to run it in ONNX Runtime)"
            )
        return "tensorrt"
    if suffix != ".onnx":
        hint = (
            " (a checkpoint: export it first with glimmer-export)"
            if suffix in (".pt", ".pth", ".ckpt")
            else ""
        )
        raise GlimmerError(f"--model {model_path}: expected an .onnx or a TensorRT .engine{hint}")
    if backend != "auto":
        return backend
    if _installed("onnxruntime"):
        return "onnxruntime"
    if _installed("tensorrt"):
        return "tensorrt"
    raise GlimmerError(
        f"{model_path}: neither ONNX Runtime nor TensorRT is installed: pip install "
        "onnxruntime, or on a Jetson use JetPack's TensorRT"
    )


def open_backend(
    model_path: Path,
    backend: str = "auto",
    *,
    cache_dir: Optional[Path] = None,
    threads: Optional[int] = None,
    int8_kernels: str = "auto",
    log=print,
    meta_path: Optional[Path] = None,
) -> Backend:
    """The backend for ``model_path``, constructed but not yet activated.

    Args:
        model_path: ``.onnx`` (with our metadata) or ``.engine`` (with its sidecar, or from
            trtexec / ultralytics).
        backend: ``auto``, ``onnxruntime`` or ``tensorrt``.
        cache_dir: engine cache folder for ``.onnx`` + ``tensorrt`` (trt_build's default if None).
        threads: ONNX Runtime intra-op threads.
        int8_kernels: ``auto``, ``fused`` or ``simulated``: how ONNX Runtime's CPU EP runs an INT8
            model's Q/DQ (backends/ort/int8.py); TensorRT runs them its own way.
        log: where engine-build progress lines go.
        meta_path: ``--meta``: metadata for an engine (our JSON, or the ONNX it was built from);
            needed only by an engine without a sidecar, ultralytics header or ``NAME.onnx``.
    """
    model_path = Path(model_path)
    check_int8_kernels(int8_kernels)
    if not model_path.is_file():
        raise GlimmerError(f"--model {model_path}: no such file")
    kind = resolve_backend(model_path, backend)
    suffix = model_path.suffix.lower()
    if meta_path is not None and suffix == ".onnx":
        raise GlimmerError(
            f"--meta {meta_path}: only a TensorRT engine takes its metadata from a file; "
            f"{model_path.name} carries its own (re-export it with glimmer-export to change it)"
        )
    if kind == "onnxruntime":
        from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend

        return OnnxRuntimeBackend(model_path, threads=threads, int8_kernels=int8_kernels)
    trt_build, backend_trt = _trt_modules()
    if suffix == ".onnx":
        meta = ModelMeta.from_props(read_onnx_metadata(model_path), origin=str(model_path))
        engine = trt_build.ensure_engine(model_path, meta.precision, cache_dir, log=log)
        return backend_trt.TensorRTBackend(Path(engine), meta=meta)
    if meta_path is not None:
        return backend_trt.TensorRTBackend(model_path, meta_path=Path(meta_path))
    try:
        sidecar = trt_build.read_sidecar(model_path)
    except GlimmerError:
        if trt_build.sidecar_path(model_path).is_file():
            raise  # ours, but damaged: say so rather than look elsewhere
        # trtexec / ultralytics: the backend finds the metadata or says which to provide
        return backend_trt.TensorRTBackend(model_path)
    return backend_trt.TensorRTBackend(model_path, meta=_sidecar_meta(model_path, sidecar))
