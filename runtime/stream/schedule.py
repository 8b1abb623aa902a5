"""Latency-first scheduling for live sources: every stage takes the newest frame when it is free.

The throughput schedule (:mod:`glimmer.runtime.stream.pipeline`) keeps every stage busy by
queueing frames between stages. That is right for a file, whose every frame must be processed,
but on a camera a frame then waits behind each busy stage, and when the model is the bottleneck
each result describes a scene two to three inference times old. Here nothing waits in a queue:

    reader thread       next(source) (the grabber's newest frame), then, only when an inference
                        thread is expected free before a newer frame could be ready, preprocess
    inference thread(s) take the newest frame (preprocessing it first if the reader did not),
                        infer, hand the result on
    calling thread      the newest finished result: postprocess, sinks, meter

A newer frame replaces one no inference thread has taken yet, and a finished result older than
one already written is discarded; both are counted as dropped. An inference thread that becomes
free waits for a frame the reader is still preprocessing rather than take an older one (the wait
is shorter than the frame interval it gains), and never takes a frame twice, so results come out
with strictly increasing frame indices. What overlaps inference is what cannot age the frame it
takes next: decoding (the grabber), preprocessing the newest frame shortly before a thread is free,
and postprocessing and output of the previous result.
"""

import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from glimmer.runtime.core.errors import GlimmerError

AUTO, LATENCY, THROUGHPUT = "auto", "latency", "throughput"
SCHEDULES = (AUTO, LATENCY, THROUGHPUT)


def resolve_schedule(schedule: str, live: bool, source: str) -> str:
    """``latency`` or ``throughput`` for ``schedule`` on a live or file ``source``."""
    if schedule not in SCHEDULES:
        raise GlimmerError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if schedule == AUTO:
        return LATENCY if live else THROUGHPUT
    if schedule == LATENCY and not live:
        raise GlimmerError(
            f"schedule latency needs a live source (a camera or stream), and {source} is a file "
            "or folder, whose every frame is processed in order: use schedule auto or throughput"
        )
    return schedule


def describe_schedule(schedule: str, requested: str) -> str:
    """The start-up line's words for a resolved schedule."""
    how = {
        LATENCY: "each stage takes the newest frame when free, older frames dropped",
        THROUGHPUT: "every frame read, stages overlapped through queues",
    }[schedule]
    return f"{schedule} ({'auto: ' if requested == AUTO else ''}{how})"


class _Mean:
    """An exponential moving average; ``None`` until the first sample."""

    def __init__(self, weight: float = 0.2) -> None:
        self.weight = weight
        self.value: Optional[float] = None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class NewestFrame:
    """The one frame between the reader and the inference threads.

    Also the forecast that decides whether preprocessing a frame ahead can pay off: only when an
    inference thread is expected free before the next frame could arrive and be preprocessed.
    Otherwise the frame is left raw (a newer one will most likely replace it); a thread that finds
    it raw after all preprocesses it itself, which costs one preprocessing time, not a stale frame.
    """

    def __init__(self, workers: int, max_frames: Optional[int] = None) -> None:
        self.workers = workers
        self.max_frames = max_frames
        self.dropped = 0
        self.taken = 0
        self.closed = False
        self._cond = threading.Condition()
        self._item: Any = None
        self._ready = False  # preprocessed
        self._preparing = False  # being preprocessed by the reader
        self._busy_since: Dict[int, float] = {}
        self._last_arrival: Optional[float] = None
        self._interval, self._preprocess, self._inference = _Mean(), _Mean(), _Mean()

    def put(self, item: Any) -> None:
        """The reader's newest frame; replaces (and counts) one no thread has taken."""
        with self._cond:
            now = time.perf_counter()
            if self._last_arrival is not None:
                self._interval.add(now - self._last_arrival)
            self._last_arrival = now
            if self.closed:
                return
            if self._item is not None:
                self.dropped += 1
            self._item, self._ready, self._preparing = item, False, False
            self._cond.notify_all()

    def claim_ahead(self, item: Any) -> bool:
        """Whether the reader should preprocess ``item`` now (it then owns it until
        :meth:`ready`)."""
        with self._cond:
            if self._item is not item or not self._worth_preparing(time.perf_counter()):
                return False
            self._preparing = True
            return True

    def _worth_preparing(self, now: float) -> bool:
        interval, pre, infer = self._interval.value, self._preprocess.value, self._inference.value
        if len(self._busy_since) < self.workers or None in (interval, pre, infer):
            return True  # a thread is free now, or too little is known yet to wait
        free_in = min(self._busy_since.values()) + infer - now  # type: ignore[operator]
        return free_in <= interval + pre  # type: ignore[operator]

    def ready(self, item: Any) -> None:
        """The reader finished preprocessing ``item``."""
        with self._cond:
            if self._item is item:
                self._ready, self._preparing = True, False
                self._cond.notify_all()

    def take(self, worker: int, abort: threading.Event) -> Optional[Tuple[Any, bool]]:
        """``(item, preprocessed)`` once a frame is there (waiting out one being preprocessed);
        None at the end: reader done, ``max_frames`` taken, or an abort."""
        with self._cond:
            while not abort.is_set():
                if self._item is not None and not self._preparing and not self._limit_reached():
                    item, ready = self._item, self._ready
                    self._item = None
                    self.taken += 1
                    self._busy_since[worker] = time.perf_counter()
                    return item, ready
                if self.closed or self._limit_reached():
                    self.closed = True
                    return None
                self._cond.wait(0.1)
        return None

    def _limit_reached(self) -> bool:
        return self.max_frames is not None and self.taken >= self.max_frames

    def done(self, worker: int, latency_ms: Dict[str, float]) -> None:
        """``worker`` finished inference; its stage times feed the forecast."""
        with self._cond:
            self._busy_since.pop(worker, None)
            self._preprocess.add(latency_ms.get("preprocess", 0.0) / 1e3)
            self._inference.add(latency_ms.get("inference", 0.0) / 1e3)

    def close(self) -> None:
        """No more frames: threads take what is left, then end."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class NewestResult:
    """Finished frames for the output stage: it takes the newest; any older one is dropped."""

    def __init__(self, workers: int) -> None:
        self.dropped = 0
        self._workers = workers
        self._ended = 0
        self._last = -1
        self._item: Any = None
        self._cond = threading.Condition()

    def put(self, item: Any) -> None:
        with self._cond:
            newest = self._item.seq if self._item is not None else self._last
            if item.seq <= newest:
                self.dropped += 1
                return
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def end(self) -> None:
        """One inference thread has ended."""
        with self._cond:
            self._ended += 1
            self._cond.notify_all()

    def take(self, abort: threading.Event) -> Any:
        """The newest result, or None once every inference thread has ended (or on an abort)."""
        with self._cond:
            while not abort.is_set():
                if self._item is not None:
                    item, self._item = self._item, None
                    self._last = item.seq
                    return item
                if self._ended >= self._workers:
                    return None
                self._cond.wait(0.1)
        return None


class LatencyFirst:
    """The latency schedule's threads and output loop for ``pipeline`` (a
    :class:`~glimmer.runtime.stream.pipeline.Pipeline`, whose stage functions, limits, stop
    events and error handling it uses)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.frames = NewestFrame(pipeline.workers, pipeline.max_frames)
        self.results = NewestResult(pipeline.workers)

    def dropped_by(self) -> Dict[str, int]:
        """Frames dropped where: ``schedule`` (a newer frame came before a thread was free),
        ``result`` (inferred, but a newer result was written first)."""
        return {"schedule": self.frames.dropped, "result": self.results.dropped}

    def threads(self) -> List[threading.Thread]:
        out = [threading.Thread(target=self._read, name="glimmer-reader", daemon=True)]
        out += [
            threading.Thread(target=self._infer, args=(i,), name=f"glimmer-infer-{i}", daemon=True)
            for i in range(self.pipeline.workers)
        ]
        return out

    def _read(self) -> None:
        p = self.pipeline
        try:
            started = time.perf_counter()
            p.meter.start(started)
            seq = 0
            while not p._stop_reading.is_set() and not self.frames.closed:
                if p.duration is not None and time.perf_counter() - started >= p.duration:
                    break
                item = p._read_one(seq)
                if item is None:
                    break
                seq += 1
                self.frames.put(item)
                if self.frames.claim_ahead(item):
                    p._do_preprocess(item)
                    self.frames.ready(item)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            p._fail(exc)
        finally:
            self.frames.close()

    def _infer(self, worker: int) -> None:
        p = self.pipeline
        try:
            while True:
                taken = self.frames.take(worker, p._abort)
                if taken is None:
                    break
                item, preprocessed = taken
                if not preprocessed:
                    p._do_preprocess(item)
                p._do_infer(item)
                self.frames.done(worker, item.latency)
                self.results.put(item)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            p._fail(exc)
        finally:
            self.results.end()

    def drain(self) -> None:
        """Results on the calling thread until every inference thread has ended."""
        while True:
            item = self.results.take(self.pipeline._abort)
            if item is None:
                return
            self.pipeline._finish(item)
