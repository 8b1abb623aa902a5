"""The runtime from Python: load a model, run it over a source, benchmark it.

What glimmer-run and glimmer-bench do, for notebooks and scripts, built from the same pieces (the
backend factory, the Preprocessor, the task postprocessors, the sources and the Pipeline), so a
prediction from code is the one the drone makes. No torch: this ships to the drone (Python 3.8).

    with load("glimmernet.onnx") as model:
        prediction = model(frame)                  # one BGR uint8 HxWx3 frame
    for result in run("frames/", "glimmernet.onnx", max_frames=100):
        print(result.index, result.prediction["name"])
    report = bench("glimmernet.onnx", iters=50)
"""

import contextlib
import queue
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np

from glimmer.runtime.backends.base import Backend
from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import read_image
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.stream.classify import ClassifySettings
from glimmer.runtime.stream.detect import DetectSettings
from glimmer.runtime.stream.pipeline import Pipeline, build_task, check_one_frame
from glimmer.runtime.stream.schedule import SCHEDULES
from glimmer.runtime.stream.sinks import FrameResult, Sink
from glimmer.runtime.stream.sources import Source, SourceOptions, open_source

PathLike = Union[str, Path]
TaskSettings = Union[None, ClassifySettings, DetectSettings, Mapping[str, Any]]
Log = Callable[[str], None]
_DONE = object()


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _settings(kind: type, value: TaskSettings, base: Optional[Mapping[str, Any]] = None) -> Any:
    """A task's settings from an instance, or from ``base`` with a mapping of its fields laid
    over."""
    if isinstance(value, kind):
        return value
    if value is None or isinstance(value, Mapping):
        fields = getattr(kind, "__dataclass_fields__", {})
        unknown = sorted(set(value or {}) - set(fields))
        if unknown:
            raise GlimmerError(
                f"unknown {kind.__name__} field {unknown[0]!r} (known: {', '.join(fields)})"
            )
        return kind(**dict(base or {}, **(value or {})))
    raise GlimmerError(
        f"expected {kind.__name__} or a dict of its fields, got {type(value).__name__}"
    )


def _frame(frame: Any) -> np.ndarray:
    """One BGR uint8 HxWx3 image (an image file's path is read as OpenCV reads it)."""
    if isinstance(frame, (str, Path)):
        image = read_image(Path(frame)) if Path(frame).is_file() else None
        if image is None:
            raise GlimmerError(f"{frame}: not a readable image")
        return image
    if not isinstance(frame, np.ndarray):
        raise GlimmerError(f"expected a BGR uint8 HxWx3 numpy image, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise GlimmerError(
            f"expected a BGR uint8 HxWx3 image, got {frame.dtype} of shape {list(frame.shape)}"
        )
    return frame


class _Closing:
    """``with ...:`` support for what has a ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Model(_Closing):
    """An activated backend with its model's preprocessing and task: ``model(frame)`` -> prediction.

    The prediction is the runtime's own: for a classifier ``label``, ``score`` and ``top`` (class
    names and probabilities, best first); for a detector ``count`` and ``detections`` (``class``,
    ``index``, ``score``, ``box`` as x1, y1, x2, y2 in frame pixels). Frames are independent unless
    the classify settings ask for smoothing (then ``reset()`` starts a new stream).
    """

    def __init__(
        self,
        backend: Backend,
        path: PathLike,
        classify: TaskSettings = None,
        detect: TaskSettings = None,
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        self.meta: ModelMeta = backend.meta
        self.postprocess = build_task(
            self.meta,
            _settings(ClassifySettings, classify, {"smoothing": 0.0}),
            _settings(DetectSettings, detect),
        )
        self._preprocess = Preprocessor(self.meta)
        self._dtype = np.dtype(check_one_frame(backend, str(self.path)).dtype)

    @property
    def task(self) -> str:
        """``classify`` or ``detect``, from the model's metadata."""
        return self.meta.task

    @property
    def class_names(self) -> List[str]:
        return list(self.meta.class_names)

    def __call__(self, frame: Any) -> Dict[str, Any]:
        """The prediction for one BGR uint8 HxWx3 frame (or an image file's path)."""
        batch, transforms = self._preprocess([_frame(frame)])
        outputs = self.backend.infer(batch.astype(self._dtype, copy=False))
        return self.postprocess(outputs, transforms)[0]

    def reset(self) -> None:
        """Forget the stream state (classifier smoothing and alert counters)."""
        self.postprocess.reset()

    def describe(self) -> str:
        return self.backend.describe()

    def close(self) -> None:
        self.backend.close()

    def __repr__(self) -> str:
        return (
            f"<glimmer Model {self.path.name}: {self.meta.task}, "
            f"{len(self.meta.class_names)} classes, "
            f"input {self.meta.input_size[0]}x{self.meta.input_size[1]}, {self.backend.describe()}>"
        )


def load(
    path: PathLike,
    backend: str = "auto",
    *,
    cache_dir: Optional[PathLike] = None,
    threads: Optional[int] = None,
    int8_kernels: str = "auto",
    classify: TaskSettings = None,
    detect: TaskSettings = None,
    log: Log = _stderr,
    half: bool = False,
    device: Optional[str] = None,
    cuda_graph: bool = True,
    dla_core: Optional[int] = None,
) -> Model:
    """Open ``path`` (``.onnx`` with our metadata, or ``.engine``) as glimmer-run would.

    Args:
        backend: ``auto``, ``onnxruntime`` or ``tensorrt`` (an ONNX is built into an engine once).
        cache_dir, threads, int8_kernels: as glimmer-run's ``--cache-dir``, ``--threads``,
            ``--int8-kernels``.
        classify, detect: task settings (a dict of their fields); classification is not smoothed
            across calls unless ``classify={"smoothing": ...}``.
        log: where engine-build progress goes.
        half, device, cuda_graph, dla_core: as glimmer-run's ``--half``, ``--device``,
            ``--no-cuda-graph`` (``cuda_graph=False``) and ``--dla-core``
            (:func:`glimmer.runtime.backends.factory.open_backend`).
    """
    opened = open_backend(
        Path(path),
        backend,
        cache_dir=Path(cache_dir) if cache_dir else None,
        threads=threads,
        int8_kernels=int8_kernels,
        log=log,
        half=half,
        device=device,
        cuda_graph=cuda_graph,
        dla_core=dla_core,
    )
    opened.activate()
    try:
        return Model(opened, path, classify, detect)
    except BaseException:
        opened.close()
        raise


class _Handoff(Sink):
    """Hands the pipeline's results to the iterating thread; a stop from there ends the run."""

    def __init__(self, keep_frames: bool) -> None:
        self.needs_frames = keep_frames
        self._queue = queue.Queue(maxsize=4)  # type: queue.Queue
        self._stopped = threading.Event()

    def put(self, item: Any) -> None:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        self.stop_requested = True

    def write(self, result: FrameResult) -> None:
        self.put(result)

    def get(self, worker: threading.Thread) -> Any:
        while True:
            try:
                return self._queue.get(timeout=0.1)
            except queue.Empty:
                if not worker.is_alive() and self._queue.empty():
                    return _DONE

    def stop(self) -> None:
        self.stop_requested = True
        self._stopped.set()


class Run(_Closing):
    """The per-frame results of :func:`run`, in frame order; ``report`` (glimmer-run's FPS and
    latency report) once the source has ended. ``close()`` (or leaving a ``with``) stops early."""

    def __init__(self, frames: Callable[["Run"], Iterator[FrameResult]]) -> None:
        self.report: Optional[Dict[str, Any]] = None
        self._frames = frames(self)

    def __iter__(self) -> "Run":
        return self

    def __next__(self) -> FrameResult:
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()


def run(
    source: Union[PathLike, int, Source],
    model: Union[PathLike, Model],
    *,
    backend: str = "auto",
    cache_dir: Optional[PathLike] = None,
    threads: Optional[int] = None,
    int8_kernels: str = "auto",
    classify: TaskSettings = None,
    detect: TaskSettings = None,
    max_frames: Optional[int] = None,
    duration: Optional[float] = None,
    loop: int = 1,
    flip: str = "none",
    width: Optional[int] = None,
    height: Optional[int] = None,
    rate: Optional[float] = None,
    keep_frames: bool = False,
    schedule: str = "auto",
    log: Log = _stderr,
    half: bool = False,
    device: Optional[str] = None,
    cuda_graph: bool = True,
    dla_core: Optional[int] = None,
) -> Run:
    """Iterate ``model`` over ``source`` through glimmer-run's pipeline: one
    :class:`~glimmer.runtime.stream.sinks.FrameResult` per frame (``index``, ``timestamp``,
    ``prediction``, ``latency_ms``; ``frame`` too with ``keep_frames``).

    ``source`` is what glimmer-run's ``--source`` takes (a file, a folder of images, a camera index
    or URI) or an open :class:`Source`; ``model`` a path (opened here and closed at the end, with
    ``backend``, ``cache_dir``, ``threads``, ``int8_kernels``, ``half``, ``device``, ``cuda_graph``,
    ``dla_core``) or a loaded :class:`Model` (left open). Classification is smoothed over the
    stream as glimmer-run does (``classify`` changes it).
    ``schedule`` is glimmer-run's: ``auto`` (newest frame first on a camera or stream, every frame
    of a file), ``latency`` or ``throughput``.
    Nothing is opened until the first result is asked for; settings are checked at once.
    """
    options = SourceOptions(width=width, height=height, rate=rate, loop=loop, flip=flip)
    classify_settings = _settings(ClassifySettings, classify)
    detect_settings = _settings(DetectSettings, detect)
    if schedule not in SCHEDULES:
        raise GlimmerError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    for name, value in (("max_frames", max_frames), ("duration", duration)):
        if value is not None and value <= 0:
            raise GlimmerError(f"{name} must be positive, got {value}")

    def frames(handle: Run) -> Iterator[FrameResult]:
        with contextlib.ExitStack() as stack:
            src = source if isinstance(source, Source) else open_source(str(source), options)
            stack.callback(src.close)
            if isinstance(model, Model):
                path, opened = model.path, model.backend
            else:
                path = Path(model)
                opened = open_backend(
                    path,
                    backend,
                    cache_dir=Path(cache_dir) if cache_dir else None,
                    threads=threads,
                    int8_kernels=int8_kernels,
                    log=log,
                    half=half,
                    device=device,
                    cuda_graph=cuda_graph,
                    dla_core=dla_core,
                )
                stack.enter_context(opened)
            meta = opened.meta
            handoff = _Handoff(keep_frames)
            pipeline = Pipeline(
                src,
                opened,
                build_task(
                    meta, classify_settings, detect_settings, still=getattr(src, "still", False)
                ),
                [handoff],
                max_frames=max_frames,
                duration=duration,
                schedule=schedule,
            )
            outcome: Dict[str, Any] = {}

            def work() -> None:
                try:
                    outcome["report"] = pipeline.run()
                except BaseException as exc:  # re-raised on the iterating thread
                    outcome["error"] = exc
                finally:
                    handoff.put(_DONE)

            worker = threading.Thread(target=work, name="glimmer-run", daemon=True)
            worker.start()
            try:
                while True:
                    item = handoff.get(worker)
                    if item is _DONE:
                        break
                    yield item
            finally:
                handoff.stop()
                worker.join()
            if "error" in outcome:
                raise outcome["error"]
            handle.report = dict(
                outcome["report"],
                model=str(path),
                model_name=meta.name,
                task=meta.task,
                backend=opened.describe(),
                source=src.description,
            )

    return Run(frames)


_BENCH_RENAMED = {"end_to_end": "no_end_to_end"}  # a positive name for the negative flag
_BENCH_CLI_ONLY = ("model", "synthetic", "no_end_to_end", "json", "plot", "verbose")


def bench(model: Union[PathLike, Model], **options: Any) -> Dict[str, Any]:
    """glimmer-bench's report for ``model`` (a path, or a loaded :class:`Model`'s path): model-only
    and end-to-end latency and throughput, the machine, and peers with ``compare``.

    ``options`` are glimmer-bench's flags with underscores: ``source``, ``batch``, ``warmup``,
    ``iters``, ``threads``, ``backend``, ``cache_dir``, ``int8_kernels``, ``compare`` and
    ``end_to_end=False`` (model-only figures only); omitted ones take the CLI's defaults.
    """
    from glimmer.runtime.tools import bench as tool

    path = model.path if isinstance(model, Model) else Path(model)
    args = tool.build_parser().parse_args(["--model", str(path)])
    known = sorted(set(vars(args)) - set(_BENCH_CLI_ONLY) | set(_BENCH_RENAMED))
    for name, value in options.items():
        if name not in known:
            raise GlimmerError(f"unknown bench option {name!r} (known: {', '.join(known)})")
        if name == "end_to_end":
            args.no_end_to_end = not value
        elif name == "cache_dir":
            args.cache_dir = Path(value) if value else None
        else:
            setattr(args, name, str(value) if name == "source" and value is not None else value)
    tool._check_args(args)
    return tool.run(args)
