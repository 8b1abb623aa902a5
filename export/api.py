"""glimmer-export as a library: ``export(checkpoint, ExportSettings(...))`` -> the report.

The command line (``glimmer.export.cli``) only turns flags into :class:`ExportSettings`, calls
:func:`export` and prints the summary, so code, notebooks and the CLI export alike. The order is
the contract: every setting is checked and every input (calibration and validation images) read
before the first artifact is written, and the ONNX files are written only after every check has
passed, so a failed export never replaces a good file. What depends on the model kind
(classifier: dilation lowering and auto timing; detector: the ultralytics head in export mode) is
a recipe in :mod:`glimmer.export.recipes`; the TensorRT step is
:mod:`glimmer.runtime.backends.trt.engines`, shared with the drone.

Importing this module needs only the runtime, and so does an ``.onnx`` input (the on-target engine
step, :func:`build_onnx_engines`): the drone has neither torch nor the onnx package. A checkpoint
input imports them on first use; missing, they are one error naming the ``export`` extra.
"""

import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from glimmer.calibration.ranges import METHODS as CALIB_METHODS  # ONNX Runtime's calibrators
from glimmer.runtime.backends.trt import engines as trt_engines
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

MODES = ("split", "aligned", "embed", "auto")
INT8_MODES = ("qdq", "calibrator")
DEFAULT_MAX_DROP = 0.01
FP32_TOLERANCE = 1e-4  # relative to max(1, largest |output|)

PathLike = Union[str, Path]
Log = Callable[[str], None]

#: what a checkpoint export imports that the runtime-only install (the drone's) lacks
EXPORT_MODULES = ("torch", "torchvision", "onnx", "onnxscript", "onnxruntime", "ultralytics")


def say(text: str) -> None:
    """Progress goes to stderr, so stdout carries only results."""
    print(text, file=sys.stderr, flush=True)


@dataclasses.dataclass
class ExportSettings:
    """Every option of glimmer-export (the flag of the same name, dashes for underscores).

    Attributes:
        out: output folder (default: the checkpoint's folder).
        name: artifact base name (default: the checkpoint's file name).
        img_size: square input size (default: the checkpoint's).
        batch: static batch size; ``dynamic_batch`` leaves the batch dimension free instead.
        opset: ONNX opset (17 suits TensorRT 8.x).
        dilation_mode: split, aligned, embed or auto (time those that differ, keep the fastest).
        fp16: also build NAME.fp16.engine where TensorRT and a GPU exist.
        int8: also write NAME.int8.onnx (Q/DQ) and, with TensorRT, NAME.int8.engine.
        int8_mode: the INT8 engine from the Q/DQ ONNX (qdq) or from the FP32 ONNX with the legacy
            calibrator (calibrator).
        calib, calib_count, calib_method: calibration images, how many, and how ranges are chosen
            (auto: the one that loses least on ``val``, else minmax).
        int8_max_drop: the weighted-F1 drop from FP32 that INT8 may cost (checked with ``val``).
        val: labelled folder (<class>/<image>) for weighted F1 of FP32 and INT8.
        latency_runs: timed ONNX Runtime runs.
        max_batch: largest batch of a dynamic-batch engine.
    """

    out: Optional[PathLike] = None
    name: Optional[str] = None
    img_size: Optional[int] = None
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 17
    dilation_mode: str = "auto"
    fp16: bool = False
    int8: bool = False
    int8_mode: str = "qdq"
    calib: Optional[PathLike] = None
    calib_count: int = 256
    calib_method: str = "auto"
    int8_max_drop: float = DEFAULT_MAX_DROP
    val: Optional[PathLike] = None
    latency_runs: int = 100
    max_batch: int = 8

    @classmethod
    def of(cls, settings: Optional["ExportSettings"] = None, **options: Any) -> "ExportSettings":
        """``settings`` (or the defaults) with ``options`` laid over; an unknown name is one
        error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise GlimmerError(
                f"unknown export setting {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return dataclasses.replace(settings or cls(), **options)

    def check(self) -> None:
        """The checks argparse cannot make; the messages name the CLI flags."""
        for flag, value, choices in (
            ("--dilation-mode", self.dilation_mode, MODES),
            ("--int8-mode", self.int8_mode, INT8_MODES),
            ("--calib-method", self.calib_method, ("auto",) + CALIB_METHODS),
        ):
            if value not in choices:
                raise GlimmerError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
        if self.dynamic_batch and self.batch != 1:
            raise GlimmerError("--batch and --dynamic-batch exclude each other")
        if self.batch < 1:
            raise GlimmerError(f"--batch must be at least 1, got {self.batch}")
        if self.img_size is not None and self.img_size < 16:
            raise GlimmerError(f"--img-size must be at least 16, got {self.img_size}")
        if not 13 <= self.opset <= 20:
            raise GlimmerError(
                f"--opset {self.opset} is outside 13-20 (TensorRT 8.4 parses up to 17)"
            )
        if self.calib_count < 1:
            raise GlimmerError(f"--calib-count must be at least 1, got {self.calib_count}")
        if self.latency_runs < 1:
            raise GlimmerError(f"--latency-runs must be at least 1, got {self.latency_runs}")
        if self.calib and not self.int8:
            raise GlimmerError("--calib is only used with --int8")
        if not 0.0 <= self.int8_max_drop <= 1.0:
            raise GlimmerError(f"--int8-max-drop must be between 0 and 1, got {self.int8_max_drop}")
        if self.max_batch < 1:
            raise GlimmerError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.name is not None:
            check_name(self.name)
        for flag, folder in (("--calib", self.calib), ("--val", self.val)):
            if folder is not None:
                check_input_folder(flag, Path(folder))


#: suffixes that, given in --name, would double up (NAME.onnx.onnx)
ARTIFACT_SUFFIXES = (".onnx", ".engine", ".plan", ".json")


def check_name(name: str) -> None:
    """``--name`` is a plain file stem: no folder part, so every artifact stays inside ``--out``."""
    bad = (
        not name.strip()
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or Path(name).name != name
    )
    if bad:
        raise GlimmerError(
            f"--name {name!r}: must be a plain file name stem without folders (artifacts are "
            "written inside --out; use --out to choose the folder)"
        )
    for suffix in ARTIFACT_SUFFIXES:
        if name.lower().endswith(suffix):
            raise GlimmerError(
                f"--name {name!r}: give the stem without {suffix} (glimmer-export adds the "
                f"suffixes: {name[: -len(suffix)]}.onnx, {name[: -len(suffix)]}.int8.onnx, ...)"
            )


def check_input_folder(flag: str, folder: Path) -> None:
    """A folder flag (``--calib``, ``--val``) names an existing folder."""
    if not folder.exists():
        raise GlimmerError(f"{flag} {folder}: no such folder")
    if not folder.is_dir():
        raise GlimmerError(f"{flag} {folder}: a file, not a folder")


def check_out_dir(out: Path, flag: str = "--out") -> None:
    """``out`` is a folder, or can be made one, and can be written: known before any work, so a
    bad ``--out`` costs nothing. Nothing is created here."""
    existing = out
    while not existing.exists():
        if existing.is_symlink():
            raise GlimmerError(f"{flag} {out}: {existing} is a broken symbolic link")
        parent = existing.parent
        if parent == existing:
            break
        existing = parent
    if not existing.is_dir():
        where = "is a file" if existing == out else f"cannot be created: {existing} is a file"
        raise GlimmerError(f"{flag} {out}: {where}, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".glimmer-write-test-", dir=str(existing))
    except OSError as exc:
        raise GlimmerError(
            f"{flag} {out}: {existing} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def export(
    checkpoint: PathLike, settings: Optional[ExportSettings] = None, log: Log = say, **options: Any
) -> Dict[str, Any]:
    """Export ``checkpoint`` as ``settings`` (with ``options``, ExportSettings names, laid over).

    Returns the report as written to ``export-report.json``, plus ``report_path`` and, when the
    engines could not be built here, ``next_step`` (the command that builds them on the target).
    For an ``.onnx`` made by glimmer-export it is the on-target engine step alone
    (:func:`build_onnx_engines`, runtime imports only), which writes no report file.
    """
    settings = ExportSettings.of(settings, **options)
    settings.check()
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        what = "a folder, not a file" if checkpoint.is_dir() else "no such file"
        raise GlimmerError(f"{checkpoint}: {what}")
    out = Path(settings.out) if settings.out else checkpoint.parent
    check_out_dir(out, "--out" if settings.out else f"{checkpoint}'s folder")
    if is_onnx(checkpoint):
        for flag, given in (("--val", settings.val), ("--img-size", settings.img_size)):
            if given is not None:
                raise GlimmerError(
                    f"{flag}: {checkpoint.name} is already an ONNX (the engine step); {flag} "
                    "applies to a checkpoint export"
                )
        return build_onnx_engines(onnx_source(checkpoint), settings, log)
    try:
        from .loaders import load_source
        from .recipes import recipe_for
    except ModuleNotFoundError as exc:
        raise missing_export_module(exc, checkpoint) from None

    source = load_source(checkpoint, settings.img_size)
    recipe = recipe_for(source.task)
    recipe.check_source(source, settings.img_size)
    qat = getattr(source, "qat", None)
    if settings.int8 and not settings.calib and not qat:
        raise GlimmerError("--int8 needs --calib DIR (calibration images)")
    if qat and settings.calib:
        raise GlimmerError(
            f"--calib: {source.path.name} carries scales from quantization-aware training; "
            "calibration would replace them (drop --calib)"
        )
    if settings.val and not recipe.scores_val:
        raise GlimmerError("--val reports classifier accuracy; check detectors with glimmer-check")
    name = settings.name or source.name
    check_name(name)
    meta = dataclasses.replace(
        source.meta, batch=None if settings.dynamic_batch else settings.batch, precision="fp32"
    )

    # Every input is read and checked before the first artifact is written.
    calib, val = None, None
    if settings.int8 and settings.calib:
        from glimmer.calibration.dataset import CalibrationSet, calibration_batch

        calib = CalibrationSet(
            Path(settings.calib),
            meta,
            settings.calib_count,
            calibration_batch(settings.calib_count, meta),
        )
        log(f"calibration: reading {calib.count} images from {settings.calib}")
        if settings.int8_mode == "calibrator" and meta.batch == 1:
            log(
                "note: a static batch-1 network is calibrated by TensorRT one image at a time, "
                "which gives "
                "poor entropy scales; --dynamic-batch calibrates in one large batch"
            )
        calib.data  # noqa: B018
    if settings.val:
        from .verify import load_labelled

        val = load_labelled(meta, Path(settings.val))
        log(f"validation: {len(val.truth)} images from {settings.val}")

    from .artifacts import REPORT_NAME, artifact_entry, write_report
    from .onnx_export import save_onnx
    from .verify import compare, latency_input, latency_ms, ort_session

    fp32, meta, reference, lowering = recipe.export_fp32(source, meta, settings, log)
    session = ort_session(fp32.SerializeToString())
    log("verifying against PyTorch on random and image-like inputs")
    check = compare(reference, session, meta)
    limit = FP32_TOLERANCE * max(1.0, check["max_abs_reference"])
    if check["max_abs_diff"] > limit:
        raise GlimmerError(
            "FP32 ONNX disagrees with PyTorch: max abs difference {:.3g} > {:.3g}; "
            "nothing written".format(check["max_abs_diff"], limit)
        )
    fp32_latency = latency_ms(session, latency_input(meta), settings.latency_runs)
    report: Dict[str, Any] = {
        "tool": "glimmer-export",
        "source": {
            "path": str(source.path),
            "kind": source.kind,
            "sha256": meta.source_sha256,
            "task": meta.task,
        },
        "settings": {
            "opset": settings.opset,
            "batch": meta.batch,
            "dynamic_batch": settings.dynamic_batch,
            "input_size": list(meta.input_size),
            "dilation_mode": settings.dilation_mode,
        },
        "dilation_lowering": lowering,
    }
    if val is not None:
        from .verify import score

        report["val"] = {
            "images": len(val.truth),
            "unreadable": val.unreadable,
            "fp32": score(session, val),
        }
    int8 = None
    if settings.int8:
        from .int8 import build_int8

        int8, report["int8"] = build_int8(
            fp32,
            meta,
            reference,
            calib=calib,
            val=val,
            qat=qat,
            method=settings.calib_method,
            max_drop=settings.int8_max_drop,
            latency_runs=settings.latency_runs,
            log=log,
        )
        if val is not None:
            report["val"]["int8"] = report["int8"]["accuracy"]["int8_simulated"]
            report["val"]["int8_onnxruntime_cpu"] = report["int8"]["accuracy"][
                "int8_onnxruntime_cpu"
            ]

    from .artifacts import Staging

    with Staging(out) as staging:
        onnx_path = staging.path(f"{name}.onnx")
        save_onnx(fp32, onnx_path)
        artifacts = [
            artifact_entry(
                onnx_path,
                "onnx-fp32",
                fp32,
                check,
                fp32_latency,
                final_path=staging.final(onnx_path),
            )
        ]
        report["artifacts"] = artifacts
        int8_path = None
        if int8 is not None:
            int8_path = staging.path(f"{name}.int8.onnx")
            save_onnx(int8, int8_path)
            entry = artifact_entry(
                int8_path,
                "onnx-int8",
                int8,
                report["int8"].pop("vs_pytorch"),
                report["int8"].pop("latency"),
                final_path=staging.final(int8_path),
            )
            artifacts.append(entry)
            speedup = fp32_latency["median_ms"] / entry["onnxruntime_cpu_latency"]["median_ms"]
            report["int8"].update(
                faster_than_fp32_on_this_cpu=speedup > 1.0, speedup_vs_fp32=speedup
            )
            log(
                f"{name}.int8.onnx: ONNX Runtime CPU "
                f"INT8 {entry['onnxruntime_cpu_latency']['median_ms']:.2f} ms "
                f"vs FP32 {fp32_latency['median_ms']:.2f} ms"
            )
        next_step = None
        if settings.fp16 or settings.int8:
            report["engines"], next_step = export_engines(
                onnx_path, int8_path, calib, meta, out, name, settings, log, staging=staging
            )
        write_report(staging.dir, report)
        for path in staging.commit():
            log(f"wrote {path}")
    result = dict(report, report_path=str(out / REPORT_NAME))
    if next_step:
        result["next_step"] = next_step
    return result


def trt_calibrator(calib: Any, cache_path: Path) -> object:
    """The legacy ``IInt8EntropyCalibrator2`` from glimmer.calibration.trt_calibrator."""
    try:
        from glimmer.calibration.trt_calibrator import EntropyCalibrator
    except ImportError as exc:
        raise GlimmerError(
            f"--int8-mode calibrator needs glimmer.calibration.trt_calibrator ({exc})"
        ) from None
    return EntropyCalibrator(calib, cache_path)


def _job(onnx: Path, engine: Path, precision: str, meta: Any) -> Dict[str, Any]:
    return {
        "onnx": onnx,
        "engine": engine,
        "precision": precision,
        "meta": dataclasses.replace(meta, precision=precision),
    }


def export_engines(
    onnx_path: Path,
    int8_path: Optional[Path],
    calib: Any,
    meta: Any,
    out: Path,
    name: str,
    settings: ExportSettings,
    log: Log = say,
    staging: Any = None,
) -> Tuple[Dict[str, Any], Optional[str]]:
    """(the report's ``engines`` record, the command for the target when they cannot be built
    here). With ``staging`` (an :class:`~glimmer.export.artifacts.Staging`) the ONNX paths are
    staged ones, engines are written beside them, and the report names the final paths."""

    def final(path: Optional[Path]) -> Optional[Path]:
        return staging.final(path) if staging is not None and path is not None else path

    def target(file_name: str) -> Path:
        return staging.path(file_name) if staging is not None else out / file_name

    usable, reason = trt_engines.tensorrt_status()
    flags = " ".join(f for f, on in (("--fp16", settings.fp16), ("--int8", settings.int8)) if on)
    if not usable:
        qdq = settings.int8_mode == "qdq" and int8_path is not None
        target_onnx = int8_path if qdq and not settings.fp16 else onnx_path
        line = trt_engines.deferred_line(
            final(target_onnx), flags if target_onnx == onnx_path else "--int8", reason
        )
        if settings.fp16 and settings.int8 and qdq:
            line = (
                trt_engines.deferred_line(final(onnx_path), "--fp16", reason)
                + f"; for INT8: `glimmer-export {final(int8_path)} --int8`"
            )
        return {"built": [], "deferred": True, "reason": reason}, line
    jobs: List[Dict[str, Any]] = []
    if settings.fp16:
        jobs.append(_job(onnx_path, target(f"{name}.fp16.engine"), "fp16", meta))
    if settings.int8:
        job = _job(int8_path, target(f"{name}.int8.engine"), "int8", meta)
        if settings.int8_mode == "calibrator":
            job.update(
                onnx=onnx_path, calibrator=trt_calibrator(calib, out / f"{name}.calib.cache")
            )
        jobs.append(job)
    built = trt_engines.build_engines(
        jobs, meta, out, dynamic_batch=settings.dynamic_batch, max_batch=settings.max_batch, log=log
    )
    for record in built:
        record["path"] = str(final(Path(record["path"])))
    return {"built": built, "deferred": False}, None


def is_onnx(path: PathLike) -> bool:
    """Whether glimmer-export takes ``path`` as an ONNX (the engine step), by its suffix."""
    return Path(path).suffix.lower() == ".onnx"


def missing_export_module(exc: ModuleNotFoundError, checkpoint: PathLike) -> Exception:
    """The one-line error for a checkpoint export without the ``export`` extra; ``exc`` itself when
    what is missing is not one of its modules (a bug, which keeps its traceback)."""
    name = (exc.name or "").split(".")[0]
    if name not in EXPORT_MODULES:
        return exc
    return GlimmerError(
        f"{checkpoint}: exporting a checkpoint needs the export extra (torch, onnx) and {name} is "
        "not installed: pip install 'glimmer-edge[export]' (on the drone, build engines from the "
        "exported ONNX instead: glimmer-export NAME.onnx --fp16)"
    )


@dataclasses.dataclass
class OnnxSource:
    """An ``.onnx`` made by glimmer-export, read without the onnx package: its path, artifact base
    name (``NAME`` of ``NAME.int8.onnx``) and metadata."""

    path: Path
    name: str
    meta: ModelMeta
    kind: str = "onnx"

    @property
    def task(self) -> str:
        return self.meta.task


def onnx_source(path: Path) -> OnnxSource:
    """``path``'s metadata, read from its protobuf by the runtime (no onnx package)."""
    path = Path(path)
    if not path.is_file():
        raise GlimmerError(f"{path}: no such file")
    meta = ModelMeta.from_props(read_onnx_metadata(path), str(path))
    name = path.name[: -len(".onnx")]
    for suffix in (".int8", ".fp16", ".fp32"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return OnnxSource(path=path, name=name, meta=meta)


def build_onnx_engines(source: Any, settings: ExportSettings, log: Log = say) -> Dict[str, Any]:
    """The on-target engine step (``glimmer-export NAME.onnx --fp16|--int8``): engines from an ONNX
    that glimmer-export made, with the metadata it carries."""
    if not (settings.fp16 or settings.int8):
        raise GlimmerError(
            f"{source.path} is already an ONNX: give --fp16 or --int8 to build a TensorRT engine"
        )
    meta = source.meta
    if settings.int8 and meta.precision != "int8" and settings.int8_mode != "calibrator":
        raise GlimmerError(
            f"{source.path} is not an INT8 (Q/DQ) ONNX: use NAME.int8.onnx, or --int8-mode "
            "calibrator --calib DIR"
        )
    if settings.int8 and settings.int8_mode == "calibrator" and not settings.calib:
        raise GlimmerError("--int8-mode calibrator needs --calib DIR")
    usable, reason = trt_engines.tensorrt_status()
    if not usable:
        raise GlimmerError(f"cannot build a TensorRT engine here: {reason}")
    out = Path(settings.out) if settings.out else source.path.parent
    name = settings.name or source.name
    from .artifacts import Staging

    with Staging(out) as staging:
        built = _onnx_engine_jobs(source, settings, meta, out, name, staging, log)
        staging.commit()
    for record in built:
        record["path"] = str(staging.final(Path(record["path"])))
    return {
        "tool": "glimmer-export",
        "source": {"path": str(source.path), "kind": source.kind, "task": meta.task},
        "engines": {"built": built, "deferred": False},
    }


def _onnx_engine_jobs(
    source: Any, settings: ExportSettings, meta: Any, out: Path, name: str, staging: Any, log: Log
) -> List[Dict[str, Any]]:
    """Build the engines of the on-target step into ``staging``."""
    jobs: List[Dict[str, Any]] = []
    if settings.fp16:
        jobs.append(_job(source.path, staging.path(f"{name}.fp16.engine"), "fp16", meta))
    if settings.int8:
        job = _job(source.path, staging.path(f"{name}.int8.engine"), "int8", meta)
        if settings.int8_mode == "calibrator":
            from glimmer.calibration.dataset import CalibrationSet, calibration_batch

            calib = CalibrationSet(
                Path(settings.calib),
                meta,
                settings.calib_count,
                calibration_batch(settings.calib_count, meta),
            )
            job["calibrator"] = trt_calibrator(calib, out / f"{name}.calib.cache")
        jobs.append(job)
    return trt_engines.build_engines(
        jobs, meta, out, dynamic_batch=meta.batch is None, max_batch=settings.max_batch, log=log
    )
