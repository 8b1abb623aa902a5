"""Per-stage latency statistics and throughput, reported in trtexec's vocabulary.

trtexec reports Throughput (qps) and, for Latency, H2D, GPU compute and D2H, min / max / mean /
median / p90 / p95 / p99 (docs/tensorrt.md, "Measuring"). We do
the same for the camera pipeline's stages and say what each figure includes (``STAGES``).

For a live source the report separates how old a result is when written (``frame_age``, from
the capture timestamp) from the work done on it (``processing``): the difference is waiting, which
the schedule decides and the model does not.

Samples live in fixed-size ring buffers allocated up front, so a run of days uses the same memory
as a run of seconds: means and counts cover the whole run, percentiles the last ``window`` frames.
"""

import time
from typing import Any, Dict, List, Optional

import numpy as np

from glimmer.runtime.core.timing import latency_stats

#: stage -> what its figure includes
STAGES = {
    "capture": "waiting for and decoding the next frame in the source (for live sources: the wait "
    "for a fresh frame from the grabber thread)",
    "preprocess": "resize or letterbox, channel order, scaling and normalisation, HWC->NCHW",
    "inference": "the backend's infer call: ONNX Runtime session.run, or TensorRT host->device "
    "copy + enqueue + device->host copy + synchronize",
    "postprocess": "softmax, smoothing and alert, or decode + NMS + rescale to frame pixels",
    "output": "writing the sinks: JSON line, annotated video frame, window, console",
    "end_to_end": "from the frame leaving the source to its results written, including time "
    "spent waiting in the pipeline's queues",
    "processing": "the work done on the frame: preprocess + inference + postprocess + output, "
    "without waits",
    "frame_age": "live sources: from the frame's capture timestamp (the grabber's clock) to its "
    "results written: processing plus every wait, what the results' staleness is",
}


class StageStats:
    """Samples in milliseconds: running count / sum / min / max, and a ring of the newest."""

    def __init__(self, window: int = 100_000) -> None:
        self._ring = np.zeros(window, dtype=np.float64)
        self.count = 0
        self.total = 0.0
        self.minimum = float("inf")
        self.maximum = 0.0

    def add(self, ms: float) -> None:
        self._ring[self.count % len(self._ring)] = ms
        self.count += 1
        self.total += ms
        self.minimum = min(self.minimum, ms)
        self.maximum = max(self.maximum, ms)

    def recent(self) -> np.ndarray:
        return self._ring[: min(self.count, len(self._ring))]

    def summary(self) -> Dict[str, float]:
        if not self.count:
            return {"count": 0}
        # percentiles over the recent window; count, mean, min and max over every sample
        out = latency_stats(self.recent(), digits=None)
        out.update(
            count=self.count,
            mean_ms=self.total / self.count,
            min_ms=self.minimum,
            max_ms=self.maximum,
        )
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


class Meter:
    """Collects one latency sample per stage per frame, and the frame count over wall time."""

    def __init__(self, window: int = 100_000) -> None:
        self.stages = {name: StageStats(window) for name in STAGES}
        self.frames = 0
        self.dropped = 0
        self.dropped_by: Dict[str, int] = {}
        self._start: Optional[float] = None
        self._last: Optional[float] = None
        self._recent_ends: List[float] = []

    def start(self, now: Optional[float] = None) -> None:
        """Marks the start of the run (the wall clock for FPS starts here)."""
        if self._start is None:
            self._start = time.perf_counter() if now is None else now

    def add_frame(self, latency_ms: Dict[str, float], now: Optional[float] = None) -> None:
        """Records one finished frame; ``latency_ms`` maps stage names to milliseconds."""
        now = time.perf_counter() if now is None else now
        self.start(now)
        for name, ms in latency_ms.items():
            if name in self.stages:
                self.stages[name].add(float(ms))
        self.frames += 1
        self._last = now
        self._recent_ends.append(now)
        if len(self._recent_ends) > 64:
            del self._recent_ends[:-32]

    @property
    def wall_s(self) -> float:
        if self._start is None or self._last is None:
            return 0.0
        return self._last - self._start

    @property
    def fps(self) -> float:
        """Frames finished per second of wall time since :meth:`start` (trtexec's Throughput)."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def recent_fps(self) -> float:
        """Throughput over the last few dozen frames, for a live status line."""
        ends = self._recent_ends
        if len(ends) < 2 or ends[-1] <= ends[0]:
            return self.fps
        return (len(ends) - 1) / (ends[-1] - ends[0])

    def report(self) -> Dict[str, Any]:
        """The whole report as a JSON-ready dict: figures and what each includes."""
        return {
            "frames": self.frames,
            "frames_dropped": self.dropped,
            "frames_dropped_by": dict(self.dropped_by),
            "wall_s": round(self.wall_s, 3),
            "fps": round(self.fps, 2),
            "fps_includes": "frames finished / wall time from the first frame read to the last "
            "frame's results written (throughput, as trtexec's qps)",
            "stages": {
                name: dict(stats.summary(), includes=STAGES[name])
                for name, stats in self.stages.items()
            },
        }


def format_report(report: Dict[str, Any]) -> str:
    """The report as a fixed-width table with a legend of what each stage includes."""
    lines = [
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}".format(
            "stage (ms)", "mean", "median", "p90", "p99", "min", "max"
        )
    ]
    for name, stats in report["stages"].items():
        if not stats.get("count"):
            continue
        lines.append(
            "{:<12} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f}".format(
                name,
                stats["mean_ms"],
                stats["median_ms"],
                stats["p90_ms"],
                stats["p99_ms"],
                stats["min_ms"],
                stats["max_ms"],
            )
        )
    by = ", ".join(f"{k} {v}" for k, v in report.get("frames_dropped_by", {}).items() if v)
    lines.append(
        "frames {}  dropped {}{}  wall {:.2f} s  throughput {:.1f} FPS{}".format(
            report["frames"],
            report["frames_dropped"],
            f" ({by})" if by else "",
            report["wall_s"],
            report["fps"],
            f"  schedule {report['schedule']}" if report.get("schedule") else "",
        )
    )
    if report.get("stalls") or report.get("reconnects"):
        lines.append(
            "source  stalls {}  reconnects {}".format(
                report.get("stalls", 0), report.get("reconnects", 0)
            )
        )
    for warning in report.get("source_warnings") or []:
        lines.append(f"source warning: {warning}")
    lines.append("")
    for name, stats in report["stages"].items():
        if stats.get("count"):
            lines.append(f"  {name}: {stats['includes']}")
    lines.append(f"  FPS: {report['fps_includes']}")
    return "\n".join(lines)
