"""The pipelined runner: source -> preprocess -> backend -> task postprocess -> sinks, overlapped.

Two schedules. ``throughput`` (files and folders under ``auto``) processes every frame, in order,
with three stages running at once, joined by small bounded queues:

    capture thread      next(source) (decode, or the newest live frame), then preprocess
    inference thread(s) backend.infer, and nothing else
    calling thread      task postprocess, sinks, meter (and Ctrl-C, which Python delivers here)

OpenCV's decode and resize, numpy's array maths and ONNX Runtime / TensorRT all release the GIL,
so on two cores decoding and preprocessing the next frame overlaps inference of the current one; a
plain loop leaves one core idle for most of each frame. Preprocessing sits with capture, not with
inference, so that when the model is the slowest stage the inference thread never does anything
but infer, and end-to-end FPS approaches model-only FPS. Bounded queues keep memory flat and keep
live sources fresh (a queue of one: the grabber thread overwrites what the pipeline has no room
for). Files yield every frame, in order: capture numbers the frames and the calling thread puts
results back in that order before postprocessing.

A backend that can run several frames at once (``backend.concurrency`` > 1: ONNX Runtime on the CPU
with fewer intra-op threads than cores) gets that many inference threads: a small model on two
cores is too short to spread over both cores inside one run, but two frames in flight keep both
busy.

``latency`` (live sources under ``auto``) queues nothing: each stage takes the newest frame when
it is free (:mod:`glimmer.runtime.stream.schedule`), so a result is about one preprocessing and
inference time old instead of a queue's worth of them.

Stopping: Ctrl-C, SIGTERM and SIGHUP arrive as requests (:mod:`glimmer.runtime.core.signals`)
that the output loop takes between frames, never inside one: reading stops, the frames in flight
are finished, every sink is closed complete, and the report counts exactly the frames the sinks
were given. A second request drops what is still in flight.

Stills (``source.still``: a folder of images) carry each image's file name into the results.
"""

import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from glimmer.runtime.backends.base import Backend, TensorSpec
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import LetterboxTransform, Preprocessor
from glimmer.runtime.core.signals import describe, route_stops
from glimmer.runtime.stream.classify import Classifier, ClassifySettings
from glimmer.runtime.stream.detect import Detector, DetectSettings
from glimmer.runtime.stream.meter import Meter
from glimmer.runtime.stream.schedule import AUTO, LATENCY, LatencyFirst, resolve_schedule
from glimmer.runtime.stream.sinks import FrameResult, Sink
from glimmer.runtime.stream.sources import Source
from glimmer.runtime.stream.task import Task

_END = object()
_WAKE = object()  # no item: a stop request is waiting to be handled


class _EventOr:
    """An Event-like "set" that is also true while ``extra()`` is (a pending stop request), for
    waits written against an Event."""

    def __init__(self, event: threading.Event, extra: Callable[[], bool]) -> None:
        self._event, self._extra = event, extra

    def is_set(self) -> bool:
        return self._event.is_set() or self._extra()


def build_task(
    meta: ModelMeta,
    classify: Optional[ClassifySettings] = None,
    detect: Optional[DetectSettings] = None,
    still: bool = False,
) -> Task:
    """The :class:`Task` the model's metadata asks for (never a flag); ``still``: the frames are
    unrelated images, each judged alone (a classifier then neither smooths nor alerts)."""
    if meta.task == "classify":
        settings = classify or ClassifySettings()
        return Classifier(meta, settings.for_stills() if still else settings)
    if meta.task == "detect":
        return Detector(meta, detect)
    raise GlimmerError(f"metadata task {meta.task!r} has no postprocessor")


def check_one_frame(backend: Backend, origin: str = "the model") -> TensorSpec:
    """The input spec; frames run one at a time, so a fixed batch above 1 is refused."""
    spec = backend.inputs[0]
    if isinstance(spec.shape[0], int) and spec.shape[0] > 1:
        raise GlimmerError(
            f"{origin}: input {spec.name!r} has a fixed batch of {spec.shape[0]}; frames are run "
            "one at a time (export with batch 1 or a dynamic batch)"
        )
    return spec


class SourceFailed(GlimmerError):
    """The source failed for good (a live stream that did not come back) after frames were
    processed: those frames' outputs are complete, and ``report`` covers them."""

    def __init__(self, error: GlimmerError, report: Dict[str, Any]) -> None:
        super().__init__(str(error))
        self.report = report


@dataclass
class _Item:
    seq: int
    index: int
    timestamp: float
    frame: Optional[np.ndarray]
    captured: float
    latency: Dict[str, float] = field(default_factory=dict)
    batch: Optional[np.ndarray] = None
    transform: Optional[LetterboxTransform] = None
    outputs: Optional[List[np.ndarray]] = None
    file: Optional[str] = None


class Pipeline:
    """Runs one source through one activated backend until the source ends or a limit is reached.

    Args:
        source: frames to process (files: all of them, in order; live: the newest).
        backend: an activated :class:`Backend`.
        task: the model's :class:`Task` (a Classifier or Detector, see :func:`build_task`).
        sinks: result consumers, called in frame order on the calling thread.
        max_frames: stop after this many frames (throughput: read; latency: taken by an
            inference thread, so dropped frames do not count).
        duration: stop reading after this many seconds.
        queue_size: throughput schedule: frames in flight between two stages (default: 4 for
            files, 1 for live).
        workers: inference threads (default: ``backend.concurrency``, else 1).
        schedule: ``latency``, ``throughput`` or ``auto`` (latency for live sources, throughput
            for files); latency on a file is an error.
    """

    def __init__(
        self,
        source: Source,
        backend: Backend,
        task: Task,
        sinks: Sequence[Sink] = (),
        max_frames: Optional[int] = None,
        duration: Optional[float] = None,
        queue_size: Optional[int] = None,
        meter: Optional[Meter] = None,
        workers: Optional[int] = None,
        schedule: str = AUTO,
    ) -> None:
        self.requested_schedule = schedule
        self.schedule = resolve_schedule(schedule, source.live, source.description)
        self.source = source
        self.backend = backend
        self.task = task
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.duration = duration
        self.meter = meter or Meter()
        self.workers = max(1, int(workers or getattr(backend, "concurrency", 1) or 1))
        self._pending: Dict[int, _Item] = {}
        self._next_seq = 0
        self._ends = 0
        size = queue_size or (1 if source.live else 4)
        self._queues = [queue.Queue(maxsize=size) for _ in range(2)]
        self._stop_reading = threading.Event()
        self._abort = threading.Event()
        self._errors: List[BaseException] = []
        self._keep_frames = any(s.needs_frames for s in self.sinks)
        self.preprocess = Preprocessor(backend.meta)
        self._dtype = np.dtype(check_one_frame(backend).dtype)
        self.interrupted = False
        #: the signal that stopped the run (SIGINT for Ctrl-C), None when it ran to its end
        self.stop_signal: Optional[int] = None
        #: the source's failure (a stream lost for good); set, the run ends as at the source's end
        self.source_error: Optional[GlimmerError] = None
        self._stop_requests: List[int] = []  # appended by a signal handler: no locks there
        self._stops_handled = 0
        self._latency: Optional[LatencyFirst] = None
        self._names = getattr(source, "name_of", None) if getattr(source, "still", False) else None

    # -- stopping ------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the run to stop (safe from a signal handler: it only records the request). The
        first request stops reading and finishes the frames in flight; a second drops them."""
        self._stop_requests.append(signum)

    def _stop_pending(self) -> bool:
        return self._stops_handled < len(self._stop_requests)

    def _handle_stops(self) -> None:
        while self._stop_pending():
            signum = self._stop_requests[self._stops_handled]
            self._stops_handled += 1
            if self._stops_handled == 1:
                self.interrupted = True
                self.stop_signal = signum
                self._stop_reading.set()
                self._release_live_source()
            else:
                self._abort.set()

    # -- plumbing ------------------------------------------------------------------------------
    def _put(self, q: "queue.Queue", item: Any) -> bool:
        while not self._abort.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fail(self, exc: BaseException) -> None:
        self._errors.append(exc)
        self._abort.set()
        self._stop_reading.set()

    def _capture(self) -> None:
        out = self._queues[0]
        try:
            started = time.perf_counter()
            self.meter.start(started)
            count = 0
            while not self._stop_reading.is_set():
                if self.max_frames is not None and count >= self.max_frames:
                    break
                if self.duration is not None and time.perf_counter() - started >= self.duration:
                    break
                item = self._read_one(count)
                if item is None:
                    break
                self._do_preprocess(item)
                if not self._put(out, item):
                    return
                count += 1
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            self._fail(exc)
        finally:
            for _ in range(self.workers):
                self._put(out, _END)

    def _read_one(self, seq: int) -> Optional[_Item]:
        """The source's next frame as the ``seq``-th item read; None at its end, or when the source
        failed (a stream lost for good): the frames already read are then finished and written
        like at a normal end, and :meth:`run` raises the failure after, with the report."""
        t0 = time.perf_counter()
        try:
            frame, timestamp, index = next(self.source)
        except StopIteration:
            return None
        except GlimmerError as exc:
            self.source_error = exc
            return None
        t1 = time.perf_counter()
        item = _Item(seq, index, timestamp, frame, t1, {"capture": (t1 - t0) * 1e3})
        if self._names is not None:
            item.file = self._names(index)
        return item

    def _get(self, q: "queue.Queue", wake: bool = False) -> Any:
        """The next item; after an abort, the end as soon as the queue runs dry; with ``wake``,
        ``_WAKE`` while a stop request waits."""
        while True:
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                if self._abort.is_set():
                    return _END
                if wake and self._stop_pending():
                    return _WAKE

    def _stage(
        self, work: Callable[[_Item], None], q_in: "queue.Queue", q_out: "queue.Queue"
    ) -> None:
        try:
            while True:
                item = self._get(q_in)
                if item is _END:
                    break
                if self._abort.is_set():
                    continue
                work(item)
                if not self._put(q_out, item):
                    break
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            self._fail(exc)
        finally:
            self._put(q_out, _END)

    def _do_preprocess(self, item: _Item) -> None:
        t0 = time.perf_counter()
        batch, transforms = self.preprocess([item.frame])
        item.batch = batch if batch.dtype == self._dtype else batch.astype(self._dtype)
        item.transform = transforms[0]
        if not self._keep_frames:
            item.frame = None
        item.latency["preprocess"] = (time.perf_counter() - t0) * 1e3

    def _do_infer(self, item: _Item) -> None:
        t0 = time.perf_counter()
        item.outputs = self.backend.infer(item.batch)
        item.batch = None
        item.latency["inference"] = (time.perf_counter() - t0) * 1e3

    # -- the calling thread --------------------------------------------------------------------
    def _finish(self, item: _Item) -> None:
        t0 = time.perf_counter()
        prediction = self.task(item.outputs, [item.transform])[0]
        t1 = time.perf_counter()
        item.latency["postprocess"] = (t1 - t0) * 1e3
        item.latency["end_to_end"] = (t1 - item.captured) * 1e3
        result = FrameResult(
            item.index,
            item.timestamp,
            prediction,
            dict(item.latency),
            item.frame,
            self.meter.recent_fps,
            item.file,
        )
        for sink in self.sinks:
            sink.write(result)
            if sink.stop_requested:
                self._stop_reading.set()
        t2 = time.perf_counter()
        latency = item.latency
        latency["output"] = (t2 - t1) * 1e3
        latency["end_to_end"] = (t2 - item.captured) * 1e3
        latency["processing"] = sum(
            latency.get(k, 0.0) for k in ("preprocess", "inference", "postprocess", "output")
        )
        if self.source.live:  # a file's timestamps are media time, not when the frame was taken
            latency["frame_age"] = (time.time() - item.timestamp) * 1e3
        self.meter.add_frame(latency, t2)
        self._count_dropped()

    def _count_dropped(self) -> None:
        by = {"source": self.source.dropped}
        if self._latency is not None:
            by.update(self._latency.dropped_by())
        self.meter.dropped_by = by
        self.meter.dropped = sum(by.values())

    def _drain(self) -> None:
        """Results in capture order until every inference thread has ended."""
        last = self._queues[1]
        while self._ends < self.workers:
            self._handle_stops()
            item = self._get(last, wake=True)
            if item is _WAKE:
                continue
            if item is _END:
                self._ends += 1
                continue
            if self._abort.is_set():
                continue
            self._pending[item.seq] = item
            while self._next_seq in self._pending:
                ready = self._pending.pop(self._next_seq)
                self._next_seq += 1  # first, so a Ctrl-C inside _finish cannot stall the order
                self._finish(ready)

    def _latency_drain(self) -> None:
        """The latency schedule's output loop, taking stop requests between results."""
        assert self._latency is not None
        results = self._latency.results
        wake = _EventOr(self._abort, self._stop_pending)
        while True:
            self._handle_stops()
            item = results.take(wake)  # type: ignore[arg-type]
            if item is None:
                if self._stop_pending() and not self._abort.is_set():
                    continue
                return
            self._finish(item)

    def _release_live_source(self) -> None:
        # A live source's close() wakes a capture thread waiting for a frame; a file's capture is
        # not thread-safe, so it is closed only after the capture thread has ended.
        if self.source.live:
            self.source.close()

    def _throughput_threads(self) -> List[threading.Thread]:
        q0, q1 = self._queues
        threads = [threading.Thread(target=self._capture, name="glimmer-capture", daemon=True)]
        threads += [
            threading.Thread(
                target=self._stage,
                args=(self._do_infer, q0, q1),
                name=f"glimmer-infer-{i}",
                daemon=True,
            )
            for i in range(self.workers)
        ]
        return threads

    def run(self) -> Dict[str, Any]:
        """Process until the end, a limit, a stop key or a stop signal; returns the report."""
        with route_stops(self.request_stop):
            return self._run()

    def _run(self) -> Dict[str, Any]:
        if self.schedule == LATENCY:
            self._latency = LatencyFirst(self)
            threads, drain = self._latency.threads(), self._latency_drain
        else:
            threads, drain = self._throughput_threads(), self._drain
        for thread in threads:
            thread.start()
        complete = False
        try:
            try:
                drain()
            except KeyboardInterrupt:
                # Only where Ctrl-C could not be routed here (an application's own SIGINT
                # handler): stop reading, finish the few frames in flight, report.
                self.interrupted = True
                self.stop_signal = self.stop_signal or signal.SIGINT
                self._stop_reading.set()
                self._release_live_source()
                drain()
            complete = True
        except KeyboardInterrupt:
            self._abort.set()  # a second Ctrl-C: drop what is in flight
            complete = True
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._stop_reading.set()
            if not complete:
                self._abort.set()
            self._release_live_source()
            for thread in threads:
                thread.join(timeout=10.0)
            self.source.close()
            self._count_dropped()
            closing = self._close_sinks(complete and not self._errors)
        if self._errors:
            raise self._errors[0]
        if closing:
            raise closing[0]
        report = self._report()
        if self.source_error is not None:
            raise SourceFailed(self.source_error, report)
        return report

    def _close_sinks(self, complete: bool) -> List[BaseException]:
        """Close every sink, even after one fails (a failing video must not leave the JSON lines
        open); the failures, in sink order."""
        failures: List[BaseException] = []
        for sink in self.sinks:
            try:
                sink.close(complete=complete and not failures)
            except Exception as exc:  # raised after the others are closed
                failures.append(exc)
        return failures

    def _report(self) -> Dict[str, Any]:
        report = self.meter.report()
        report["interrupted"] = self.interrupted
        report["stopped_by"] = describe(self.stop_signal) if self.interrupted else None
        report["inference_threads"] = self.workers
        report["schedule"] = self.schedule
        report["schedule_requested"] = self.requested_schedule
        # read with defaults: sources without a watchdog have none of these
        report["stalls"] = int(getattr(self.source, "stalls", 0) or 0)
        report["reconnects"] = int(getattr(self.source, "reconnects", 0) or 0)
        report["source_warnings"] = [str(w) for w in getattr(self.source, "warnings", None) or []]
        return report
