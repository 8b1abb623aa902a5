"""TensorRT engine builder and on-device engine cache.

Implements "Builder API by version" and "Engine cache" of docs/tensorrt.md, against a common
complaint about on-device runtimes: engines rebuilt on every start because the cache was not
writable or not keyed right. An engine is valid only for the exact TensorRT version and GPU that
built it, so a cached engine is keyed by the ONNX's sha256, the TensorRT version, the GPU name and
compute capability, the precision, the input shapes and the builder options; the key, the engine's
own sha256 and the model metadata go into a sidecar JSON (``NAME.fp16.json`` beside
``NAME.fp16.engine``) written atomically after the engine. A cached engine whose sidecar is missing,
damaged or keyed differently is rebuilt, never trusted. The precision in the name, key and sidecar
is what the engine really is: an ``fp16`` request on a GPU without fast FP16 builds and says
``fp32``. Timing caches are kept per TensorRT version and GPU too (the GPU and version go into the
file name) and TensorRT is told to refuse another device's cache. API differences between TensorRT
versions are handled in :mod:`glimmer.runtime.backends.trt.compat`; CUDA device queries go through
:mod:`glimmer.runtime.backends.trt.cuda`.
"""

import contextlib
import datetime
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from glimmer.runtime.backends.trt import compat as trt_compat
from glimmer.runtime.backends.trt import cuda as cuda_mem
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_bytes, atomic_write_text, sha256_file
from glimmer.runtime.core.metadata import METADATA_KEY, PRECISIONS, ModelMeta

ENV_CACHE = "GLIMMER_ENGINE_CACHE"
#: base name of timing caches; the file is keyed by TensorRT version and GPU (keyed_timing_cache)
TIMING_CACHE = "timing.cache"
SIDECAR_FORMAT = "glimmer-tensorrt-engine"
SIDECAR_SCHEMA = 1
#: Builder scratch memory. A Jetson shares it with the CPU, so it stays modest.
WORKSPACE_BYTES = 1 << 30
DEFAULT_BATCH = (1, 1, 4)  # min, opt, max for an ONNX exported with a dynamic batch

Log = Callable[[str], None]


def tensorrt_status() -> Tuple[bool, str]:
    """(usable, reason): can this machine build and run engines? Never raises."""
    try:
        trt = trt_compat.import_tensorrt()
        trt_compat.create_builder(trt, trt_compat.make_logger(trt))
    except GlimmerError as exc:
        return False, str(exc)
    ok, gpu = cuda_mem.probe()
    if not ok:
        return False, f"TensorRT {trt_compat.version(trt)} is installed but {gpu}"
    return True, f"TensorRT {trt_compat.version(trt)} on {gpu}"


# -- keys and sidecars ----------------------------------------------------------------------------


def engine_key(
    onnx_sha256: str,
    trt_version: str,
    gpu_name: str,
    compute_capability: Tuple[int, int],
    precision: str,
    shapes: Dict[str, Any],
    builder_options: Dict[str, Any],
) -> str:
    """sha256 over everything that makes an engine valid; any change means another engine."""
    record = {
        "onnx_sha256": onnx_sha256,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": list(compute_capability),
        "precision": precision,
        "shapes": shapes,
        "builder_options": builder_options,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def sidecar_path(engine_path: Path) -> Path:
    return Path(engine_path).with_suffix(".json")


_SIDECAR_KEYS = (
    "format",
    "engine_sha256",
    "onnx_sha256",
    "tensorrt_version",
    "gpu_name",
    "compute_capability",
    "precision",
    "shapes",
    "inputs",
    "outputs",
    "builder_options",
    "engine_key",
    "meta",
)


def read_sidecar(engine_path: Path) -> Dict[str, Any]:
    """The engine's sidecar JSON, checked; GlimmerError naming the file when missing or invalid."""
    path = sidecar_path(engine_path)
    hint = (
        "rebuild the engine from its ONNX "
        "(glimmer-export NAME.onnx --fp16, or glimmer-run --backend tensorrt)"
    )
    if not path.is_file():
        raise GlimmerError(
            f"{path}: engine sidecar not found; an engine is only used with the sidecar "
            f"written beside it when it was built; {hint}"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GlimmerError(f"{path}: unreadable engine sidecar ({exc}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise GlimmerError(f"{path}: not a glimmer engine sidecar; {hint}")
    missing = [k for k in _SIDECAR_KEYS if k not in data]
    if missing:
        raise GlimmerError(f"{path}: engine sidecar lacks key {missing[0]!r}; {hint}")
    if not isinstance(data["meta"], dict):
        raise GlimmerError(f"{path}: engine sidecar key 'meta' must be an object")
    ModelMeta.from_dict(data["meta"], origin=str(path))
    return data


def onnx_meta(onnx_path: Path) -> ModelMeta:
    """Metadata of an ONNX file, read without the onnx package (a Jetson image has none)."""
    from glimmer.runtime.core.onnx_meta import read_onnx_metadata

    props = read_onnx_metadata(onnx_path)
    if METADATA_KEY not in props and "names" not in props:
        raise GlimmerError(
            f"{onnx_path}: no model metadata in this ONNX; export it with glimmer-export"
        )
    return ModelMeta.from_props(props, str(onnx_path))


# -- building -------------------------------------------------------------------------------------


def _batch_profile(
    meta: ModelMeta, min_batch: Optional[int], opt_batch: Optional[int], max_batch: Optional[int]
) -> Tuple[int, int, int]:
    if meta.batch is not None:
        asked = {b for b in (min_batch, opt_batch, max_batch) if b is not None}
        if asked - {int(meta.batch)}:
            raise GlimmerError(
                f"the ONNX has a fixed batch of {meta.batch}; --batch options "
                f"{sorted(asked)} need an ONNX exported with --dynamic-batch"
            )
        return (int(meta.batch),) * 3
    lo = min_batch or DEFAULT_BATCH[0]
    opt = opt_batch or max(lo, DEFAULT_BATCH[1])
    hi = max_batch or max(opt, DEFAULT_BATCH[2])
    if not 0 < lo <= opt <= hi:
        raise GlimmerError(
            f"batch profile must satisfy 0 < min <= opt <= max, got {lo}, {opt}, {hi}"
        )
    return lo, opt, hi


def _requested(
    meta: ModelMeta,
    batch: Tuple[int, int, int],
    calibrator: Optional[Any],
    device: int = 0,
    dla_core: Optional[int] = None,
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(shapes, builder options) as asked for: the part of the key known before building. The
    CUDA device and the DLA core are part of it: an engine built for DLA core 0 is not one for the
    GPU, nor for core 1."""
    shapes = {"batch": list(batch), "input_size": list(meta.input_size)}
    options = {
        "workspace_bytes": WORKSPACE_BYTES,
        "explicit_batch": True,
        "implicit_int8_calibrator": calibrator is not None,
        "device": int(device),
        "dla_core": dla_core,
    }
    cache = getattr(calibrator, "cache_sha256", None)
    if cache:
        options["calibration_cache_sha256"] = cache
    return shapes, options


def keyed_timing_cache(
    path: Path, trt_version: str, gpu_name: str, compute_capability: Tuple[int, int]
) -> Path:
    """``DIR/timing.cache`` -> ``DIR/timing-10-3-0-30-orin-sm87.cache``: one file per TensorRT
    version and GPU, so a folder shared by machines never hands one GPU's timings to another."""
    path = Path(path)
    major, minor = compute_capability
    key = f"{_slug(trt_version)}-{_slug(gpu_name)}-sm{major}{minor}"
    return path.with_name(f"{path.stem}-{key}{path.suffix or '.cache'}")


def _renamed(engine_path: Path, asked: str, built: str) -> Path:
    """``NAME.fp16.engine`` -> ``NAME.fp32.engine`` when the engine is not what was asked for."""
    parts = engine_path.name.split(".")
    for i in range(len(parts) - 2, 0, -1):  # the precision sits between the stem and the suffix
        if parts[i] == asked:
            parts[i] = built
            return engine_path.with_name(".".join(parts))
    return engine_path


def built_engine_path(engine_path: Path, sidecar: Dict[str, Any]) -> Path:
    """Where ``build_engine(..., engine_path, ...)`` wrote the engine (renamed if its precision
    differs from the one asked for)."""
    return Path(engine_path).with_name(Path(str(sidecar.get("engine", engine_path))).name)


def _close_calibrator(calibrator: Optional[object]) -> None:
    close = getattr(calibrator, "close", None)
    if callable(close):
        close()


def _calibration_batch(profile_shapes: Dict[str, Dict[str, List[int]]]) -> Optional[int]:
    """The batch TensorRT calibrates at: the calibration profile's, else the first input's OPT."""
    if "calibration" in profile_shapes:
        return int(profile_shapes["calibration"]["batch"][0])
    for triple in profile_shapes.values():
        return int(triple["opt"][0])
    return None


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    *,
    meta: ModelMeta,
    timing_cache: Optional[Path] = None,
    calibrator: Optional[object] = None,
    min_batch: Optional[int] = None,
    opt_batch: Optional[int] = None,
    max_batch: Optional[int] = None,
    log: Log = print,
    device: int = 0,
    dla_core: Optional[int] = None,
) -> Dict[str, Any]:
    """Build ``engine_path`` (+ sidecar) from ``onnx_path``; returns the sidecar dict.

    Writes nothing until TensorRT returns a plan, then the engine and the sidecar atomically, then
    the timing cache (so the next build of a similar network on this device is faster).
    ``timing_cache`` names the folder and base name: the file used is keyed by TensorRT version and
    GPU (:func:`keyed_timing_cache`). When the engine cannot be what ``precision`` asks (``fp16`` on
    a GPU without fast FP16 builds FP32), a ``.fp16.`` in the file name becomes ``.fp32.``; the
    sidecar's ``engine`` names the file written (:func:`built_engine_path`). A calibrator is closed
    (its CUDA buffers, stream and context freed) once the build is over. ``device`` is the CUDA
    device to build on (current for the whole build, as TensorRT builds on the current device);
    ``dla_core`` puts the network on that DLA core, layers it cannot run falling back to the GPU.
    """
    try:
        return _build(
            Path(onnx_path),
            Path(engine_path),
            precision,
            meta=meta,
            timing_cache=timing_cache,
            calibrator=calibrator,
            batch_options=(min_batch, opt_batch, max_batch),
            log=log,
            device=device,
            dla_core=dla_core,
        )
    finally:
        _close_calibrator(calibrator)


def _build(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    *,
    meta: ModelMeta,
    timing_cache: Optional[Path],
    calibrator: Optional[object],
    batch_options: Tuple[Optional[int], Optional[int], Optional[int]],
    log: Log,
    device: int = 0,
    dla_core: Optional[int] = None,
) -> Dict[str, Any]:
    if precision not in PRECISIONS:
        raise GlimmerError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not onnx_path.is_file():
        raise GlimmerError(f"{onnx_path}: ONNX file not found")
    data = onnx_path.read_bytes()
    onnx_sha = hashlib.sha256(data).hexdigest()
    batch = _batch_profile(meta, *batch_options)

    trt = trt_compat.import_tensorrt()
    logger = trt_compat.make_logger(trt)
    with _builder_on(trt, logger, device) as (builder, cuda):
        return _build_on(
            trt,
            logger,
            builder,
            (cuda.device_name(), cuda.compute_capability(), cuda.name),
            data,
            onnx_sha,
            batch,
            onnx_path,
            engine_path,
            precision,
            meta=meta,
            timing_cache=timing_cache,
            calibrator=calibrator,
            log=log,
            device=device,
            dla_core=dla_core,
        )


@contextlib.contextmanager
def _builder_on(trt: Any, logger: Any, device: int) -> Iterator[Tuple[Any, Any]]:
    """(a Builder, the CUDA device it builds on), the device current for the whole build.

    TensorRT builds on the calling thread's current device, so another device than 0 is made
    current before the Builder exists; on device 0 (the default) the Builder comes first, so a
    machine without a usable GPU gets TensorRT's own diagnosis.
    """
    cuda = cuda_mem.open_cuda(device=device) if device else None
    try:
        builder = trt_compat.create_builder(trt, logger)
        if cuda is None:
            cuda = cuda_mem.open_cuda(device=device)
        yield builder, cuda
    finally:
        if cuda is not None:
            cuda.close()


def _build_on(
    trt: Any,
    logger: Any,
    builder: Any,
    gpu: Tuple[str, Tuple[int, int], str],
    data: bytes,
    onnx_sha: str,
    batch: Tuple[int, int, int],
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    *,
    meta: ModelMeta,
    timing_cache: Optional[Path],
    calibrator: Optional[object],
    log: Log,
    device: int,
    dla_core: Optional[int],
) -> Dict[str, Any]:
    trt_version = trt_compat.version(trt)
    gpu_name, cc, binding = gpu
    asked = precision
    precision, why = trt_compat.effective_precision(trt, builder, asked)
    if why:
        engine_path = _renamed(engine_path, asked, precision)
        log(f"{gpu_name} (sm_{cc[0]}{cc[1]}): {why}; writing {engine_path.name}")
    network, net_info = trt_compat.create_network(trt, builder)
    parser = trt_compat.parse_onnx(trt, network, logger, data, str(onnx_path))  # noqa: F841 - keeps weights alive
    config = builder.create_builder_config()
    workspace_api = trt_compat.set_workspace(trt, config, WORKSPACE_BYTES)
    precision_info = trt_compat.apply_precision(
        trt, builder, config, network, precision, calibrator, str(onnx_path)
    )
    if dla_core is not None:
        precision_info.update(trt_compat.apply_dla(trt, builder, config, dla_core, precision))
    calib_batch = getattr(calibrator, "calibration_batch", None)  # known without reading images
    profile_shapes = trt_compat.add_batch_profile(
        trt, builder, config, network, *batch, calib_batch=calib_batch
    )
    expect = getattr(calibrator, "expect_batch", None)
    if callable(expect):
        # TensorRT 10 reads the network's batch from each get_batch pointer whatever
        # get_batch_size says, so the calibrator must cut its batches to exactly that size.
        expect(_calibration_batch(profile_shapes))
    cache_file = None
    cache_loaded = False
    if timing_cache is not None:
        cache_file = keyed_timing_cache(Path(timing_cache), trt_version, gpu_name, cc)
        cached = cache_file.read_bytes() if cache_file.is_file() else b""
        cache_loaded = trt_compat.load_timing_cache(config, cached)
        if cached and not cache_loaded:
            log(
                f"timing cache {cache_file} is unusable (damaged, or made by another GPU or "
                "TensorRT version); starting a new one"
            )

    shapes, options = _requested(meta, batch, calibrator, device, dla_core)
    key = engine_key(onnx_sha, trt_version, gpu_name, cc, precision, shapes, options)
    log(
        f"building {engine_path.name}: TensorRT {trt_version}, {gpu_name} "
        f"(sm_{cc[0]}{cc[1]}), {precision}, batch {batch[0]}..{batch[2]}; this takes a while, once"
    )
    start = time.perf_counter()
    try:
        plan = trt_compat.build_serialized(builder, network, config, str(onnx_path))
    finally:
        # A calibrator cannot raise through TensorRT's C++ caller; it records what went wrong.
        calibration_error = getattr(calibrator, "error", None)
        if calibration_error:
            raise GlimmerError(f"INT8 calibration failed: {calibration_error}")
    seconds = time.perf_counter() - start

    io = trt_compat.describe_network_io(trt, network)
    engine_meta = meta.to_dict()
    engine_meta.update(precision=precision, batch=meta.batch)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "schema": SIDECAR_SCHEMA,
        "engine": engine_path.name,
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "engine_bytes": len(plan),
        "onnx": onnx_path.name,
        "onnx_sha256": onnx_sha,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": f"{cc[0]}.{cc[1]}",
        "cuda_binding": binding,
        "precision": precision,
        "requested_precision": asked,
        "shapes": {"requested": shapes, "profile": profile_shapes},
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "builder_options": dict(
            options,
            workspace_api=workspace_api,
            timing_cache=cache_loaded,
            **net_info,
            **precision_info,
        ),
        "engine_key": key,
        "build_seconds": round(seconds, 3),
        "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "meta": engine_meta,
    }
    if why:
        sidecar["precision_note"] = why
    atomic_write_bytes(engine_path, plan)
    atomic_write_text(
        sidecar_path(engine_path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    )
    if cache_file is not None:
        atomic_write_bytes(cache_file, trt_compat.timing_cache_bytes(config))
    log(f"wrote {engine_path} ({len(plan) / 1e6:.1f} MB, {seconds:.1f} s)")
    return sidecar


# -- the on-device cache --------------------------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "glimmer" / "engines"


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=str(path), prefix=".write-test-"):
            pass
    except OSError as exc:
        raise GlimmerError(
            f"engine cache folder {path} is not writable ({exc.strerror or exc}); set "
            f"{ENV_CACHE} to a writable folder (in Docker: a mounted volume)"
        ) from None
    return path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def _cached_ok(engine_file: Path, key: str) -> Optional[str]:
    """None when ``engine_file`` can be reused, else why not."""
    if not engine_file.is_file():
        return "no cached engine"
    try:
        sidecar = read_sidecar(engine_file)
    except GlimmerError as exc:
        return f"sidecar invalid ({exc})"
    if sidecar["engine_key"] != key:
        return "cached engine was built for another key"
    if sha256_file(engine_file) != sidecar["engine_sha256"]:
        return "cached engine does not match its recorded sha256 (damaged or replaced)"
    return None


def _effective_precision(trt: Any, precision: str) -> Tuple[str, Optional[str]]:
    """What an engine built here for ``precision`` will be, known before any build.

    Only an fp16 request on a TensorRT with precision flags depends on the GPU, so only then is a
    Builder created to ask it (creating one costs a CUDA initialisation).
    """
    if precision != "fp16" or not trt_compat.has_precision_flags(trt):
        return precision, None
    builder = trt_compat.create_builder(trt, trt_compat.make_logger(trt))
    return trt_compat.effective_precision(trt, builder, precision)


def ensure_engine(
    onnx_path: Path,
    precision: str,
    cache_dir: Optional[Path] = None,
    log: Log = print,
    *,
    min_batch: Optional[int] = None,
    opt_batch: Optional[int] = None,
    max_batch: Optional[int] = None,
    device: int = 0,
    dla_core: Optional[int] = None,
) -> Path:
    """The cached engine for ``onnx_path`` on this device, built first if missing or stale.

    The name and key carry the precision the engine really has on this GPU (``fp16`` asked on a GPU
    without fast FP16 gives ``NAME.fp32.KEY.engine``); the key also carries the CUDA ``device`` and
    the ``dla_core`` (``NAME.fp16.dla0.KEY.engine``).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise GlimmerError(f"{onnx_path}: ONNX file not found")
    if precision not in PRECISIONS:
        raise GlimmerError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    trt = trt_compat.import_tensorrt()
    cache = _writable_dir(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    data = onnx_path.read_bytes()
    meta = onnx_meta(onnx_path)
    batch = _batch_profile(meta, min_batch, opt_batch, max_batch)
    cuda = cuda_mem.open_cuda(device=device)  # the Builder asked below answers for this device
    try:
        gpu_name, cc = cuda.device_name(), cuda.compute_capability()
        built, why = _effective_precision(trt, precision)
    finally:
        cuda.close()
    if why:
        log(f"{onnx_path.name} asks for {precision}, but on {gpu_name}: {why}")
    shapes, options = _requested(meta, batch, None, device, dla_core)
    key = engine_key(
        hashlib.sha256(data).hexdigest(),
        trt_compat.version(trt),
        gpu_name,
        cc,
        built,
        shapes,
        options,
    )
    dla = f".dla{dla_core}" if dla_core is not None else ""
    engine = cache / f"{onnx_path.stem}.{built}{dla}.{key[:16]}.engine"
    reason = _cached_ok(engine, key)
    if reason is None:
        log(f"using cached engine {engine}")
        return engine
    log(f"{reason}: building {engine.name} in {cache}")
    build_engine(
        onnx_path,
        engine,
        built,
        meta=meta,
        timing_cache=cache / TIMING_CACHE,
        min_batch=batch[0],
        opt_batch=batch[1],
        max_batch=batch[2],
        log=log,
        device=device,
        dla_core=dla_core,
    )
    return engine
