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

from glimmer.runtime.backends.base import CPU, Backend, parse_device
from glimmer.runtime.backends.ort.int8 import check_int8_kernels
from glimmer.runtime.backends.ort.runner import check_half
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
    half: bool = False,
    device: Optional[str] = None,
    cuda_graph: bool = True,
    dla_core: Optional[int] = None,
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
        half: ``--half`` (ultralytics' meaning, FP16 inference): an FP32 ``.onnx`` is built into an
            FP16 engine; a prebuilt engine must already be FP16 (or INT8); ONNX Runtime has no FP16
            path on the CPU or CUDA provider, so there it is an error.
        device: ``--device`` in ultralytics' vocabulary (``cpu``, ``0``, ``cuda:1``): ``cpu``
            forces ONNX Runtime's CPU provider; an index is TensorRT's CUDA device and ONNX
            Runtime's ``device_id``.
        cuda_graph: ``--no-cuda-graph`` sets it False: TensorRT never captures a CUDA graph.
        dla_core: ``--dla-core N``: build (and run) the TensorRT engine on that DLA core, GPU
            fallback on; needs FP16 (``half``) or an INT8 model.
    """
    model_path = Path(model_path)
    check_int8_kernels(int8_kernels)
    where = parse_device(device)
    check_dla_core(dla_core)
    if not model_path.is_file():
        raise GlimmerError(f"--model {model_path}: no such file")
    suffix = model_path.suffix.lower()
    if where == CPU:
        if half:
            check_half("CPUExecutionProvider")
        if dla_core is not None:
            raise GlimmerError(f"--dla-core {dla_core} and --device cpu exclude each other")
        if backend == "tensorrt" or suffix in (".engine", ".plan"):
            raise GlimmerError(
                "--device cpu: TensorRT runs only on a GPU; run the .onnx with --backend "
                "onnxruntime (or drop --device cpu)"
            )
        backend = "onnxruntime"
    kind = resolve_backend(model_path, backend)
    if meta_path is not None and suffix == ".onnx":
        raise GlimmerError(
            f"--meta {meta_path}: only a TensorRT engine takes its metadata from a file; "
            f"{model_path.name} carries its own (re-export it with glimmer-export to change it)"
        )
    gpu = where if isinstance(where, int) else 0
    if kind == "onnxruntime":
        from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend

        if dla_core is not None:
            raise GlimmerError(
                f"--dla-core {dla_core}: the DLA is reached only through TensorRT; add --backend "
                "tensorrt"
            )
        ort_backend = OnnxRuntimeBackend(
            model_path,
            threads=threads,
            int8_kernels=int8_kernels,
            providers=["CPUExecutionProvider"] if where == CPU else None,
            device_id=gpu,
            half=half,
            gpu=isinstance(where, int),
        )
        if half or isinstance(where, int):
            ort_backend.plan_providers()  # a --half / --device problem now, not at the first frame
        return ort_backend
    trt_build, backend_trt = _trt_modules()
    options = dict(device=gpu, dla_core=dla_core, cuda_graphs=cuda_graph)
    if suffix == ".onnx":
        meta = ModelMeta.from_props(read_onnx_metadata(model_path), origin=str(model_path))
        precision = "fp16" if half and meta.precision == "fp32" else meta.precision
        if dla_core is not None and precision == "fp32":
            raise GlimmerError(
                f"--dla-core {dla_core}: the DLA runs FP16 or INT8 only and {model_path.name} is "
                "FP32; add --half, or use the INT8 model (NAME.int8.onnx)"
            )
        engine = trt_build.ensure_engine(
            model_path, precision, cache_dir, log=log, device=gpu, dla_core=dla_core
        )
        return backend_trt.TensorRTBackend(Path(engine), meta=meta, **options)
    if meta_path is not None:
        return backend_trt.TensorRTBackend(model_path, meta_path=Path(meta_path), **options)
    try:
        sidecar = trt_build.read_sidecar(model_path)
    except GlimmerError:
        if trt_build.sidecar_path(model_path).is_file():
            raise  # ours, but damaged: say so rather than look elsewhere
        # trtexec / ultralytics: the backend finds the metadata or says which to provide; their
        # precision and DLA core are not recorded, so --half and --dla-core are taken on trust
        return backend_trt.TensorRTBackend(model_path, **options)
    check_engine_options(model_path, sidecar, half, dla_core)
    return backend_trt.TensorRTBackend(
        model_path, meta=_sidecar_meta(model_path, sidecar), **options
    )


def check_dla_core(dla_core: Optional[int]) -> None:
    if dla_core is None:
        return
    if isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0:
        raise GlimmerError(f"--dla-core must be a DLA core index (0, 1, ...), got {dla_core!r}")


def check_engine_options(
    engine_path: Path, sidecar: Any, half: bool, dla_core: Optional[int]
) -> None:
    """``--half`` and ``--dla-core`` against what a prebuilt engine is (its sidecar): an engine
    cannot change precision or device when it is loaded, only when it is built."""
    precision = sidecar.get("precision")
    if half and precision == "fp32":
        raise GlimmerError(
            f"--half: {engine_path.name} is an FP32 engine (its sidecar says so); rebuild it as "
            f"FP16 from its ONNX (glimmer-export NAME.onnx --fp16), or run the .onnx with "
            "--backend tensorrt --half"
        )
    built_for = (sidecar.get("builder_options") or {}).get("dla_core")
    if dla_core is not None and built_for != dla_core:
        where = "the GPU" if built_for is None else f"DLA core {built_for}"
        raise GlimmerError(
            f"--dla-core {dla_core}: {engine_path.name} was built for {where}; run the .onnx with "
            f"--backend tensorrt --dla-core {dla_core} to build one for it"
        )
