"""Where results go: JSON lines, an annotated video, a window, the console (docs/runtime.md,
"Outputs users expect").

- JSON lines: one object per frame (index, timestamp, per-stage latency, predictions), flushed per
  frame so a crash or a pulled battery loses nothing already processed.
- Annotated video: written under a temporary name beside the target and renamed when the run ends,
  so a half-written file never carries the name a user asked for.
- Window: only when asked (``--show``) and when a display exists; never over SSH by accident
  (display code that fails headless is a common complaint with such tools).
- Console: predictions at most every ``interval`` seconds (alerts always), a live status line.
"""

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from glimmer.runtime.core.console import StatusLine
from glimmer.runtime.core.errors import GlimmerError

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
_GREEN, _RED, _WHITE, _BLACK = (60, 200, 60), (40, 40, 230), (255, 255, 255), (0, 0, 0)


def _cv2():
    from glimmer.runtime.core.preprocess import _cv2 as load

    return load()


@dataclass
class FrameResult:
    """One frame's way through the pipeline; ``frame`` is kept only when a sink draws on it."""

    index: int
    timestamp: float
    prediction: Dict[str, Any]
    latency_ms: Dict[str, float] = field(default_factory=dict)
    frame: Optional[np.ndarray] = None
    fps: float = 0.0


class Sink:
    """Receives every result in frame order, on the pipeline's output thread."""

    #: whether results must carry the original frame
    needs_frames = False
    #: set when the user asked to stop (a key in the window)
    stop_requested = False

    def write(self, result: FrameResult) -> None:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        """End of run; ``complete`` is False when the run failed."""


class JsonLinesSink(Sink):
    """One JSON object per line and frame, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(str(self.path), "w", encoding="utf-8")
        except OSError as exc:
            raise GlimmerError(f"--output {self.path}: cannot write: {exc.strerror}") from None
        self.lines = 0

    def write(self, result: FrameResult) -> None:
        record = {
            "index": result.index,
            "timestamp": round(result.timestamp, 6),
            "latency_ms": {k: round(v, 3) for k, v in result.latency_ms.items()},
            "predictions": result.prediction,
        }
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self, complete: bool = True) -> None:
        if not self._fh.closed:
            self._fh.close()


def annotate(frame: np.ndarray, pred: Dict[str, Any], fps: float = 0.0) -> np.ndarray:
    """A copy of ``frame`` with the prediction drawn: label (+ alert border) or boxes, and FPS."""
    cv2 = _cv2()
    out = frame.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(w, h) / 720.0)
    thick = max(1, int(round(2 * scale)))

    def label(text: str, x: int, y: int, colour) -> None:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
        y = max(y, th + base)
        cv2.rectangle(out, (x, y - th - base), (x + tw + 4, y + 2), colour, -1)
        cv2.putText(
            out,
            text,
            (x + 2, y - base // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6 * scale,
            _BLACK if colour != _RED else _WHITE,
            thick,
            cv2.LINE_AA,
        )

    if pred.get("task") == "classify":
        alert = pred.get("alert")
        text = "{} {:.2f}".format(pred["label"], pred["score"])
        if alert:
            cv2.rectangle(out, (0, 0), (w - 1, h - 1), _RED, max(4, thick * 3))
            text += "  ALERT: {}".format(alert["class"])
        label(text, 8, int(30 * scale), _RED if alert else _GREEN)
    else:
        for det in pred.get("detections", []):
            x1, y1, x2, y2 = (int(round(v)) for v in det["box"])
            cv2.rectangle(out, (x1, y1), (x2, y2), _GREEN, thick)
            label("{} {:.2f}".format(det["class"], det["score"]), x1, y1, _GREEN)
    if fps:
        label(f"{fps:.1f} FPS", 8, h - 8, _WHITE)
    return out


class VideoSink(Sink):
    """Annotated frames into a video file via ``cv2.VideoWriter``, renamed into place at the end."""

    needs_frames = True

    def __init__(self, path: Path, fps: float = 30.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise GlimmerError(
                "--save {}: unsupported video type {!r} (use {})".format(
                    self.path, suffix or "none", ", ".join(sorted(FOURCC))
                )
            )
        self.fps = fps if fps and fps > 0 else 30.0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # The temporary keeps the suffix: OpenCV picks the container from it.
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.stem}.", suffix=f".partial{suffix}", dir=str(self.path.parent)
            )
            os.close(fd)
        except OSError as exc:
            raise GlimmerError(f"--save {self.path}: cannot write there: {exc.strerror}") from None
        self._tmp = Path(tmp)
        self._writer = None
        self.frames = 0

    def write(self, result: FrameResult) -> None:
        if result.frame is None:
            return
        cv2 = _cv2()
        image = annotate(result.frame, result.prediction, result.fps)
        if self._writer is None:
            h, w = image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                raise GlimmerError(f"--save {self.path}: OpenCV cannot write this video type here")
        self._writer.write(image)
        self.frames += 1

    def close(self, complete: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if complete and self.frames and self._tmp.exists():
            # mkstemp made it owner-only; give the video the permissions any new file gets.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(str(self._tmp), 0o666 & ~umask)
            os.replace(str(self._tmp), str(self.path))
        elif self._tmp.exists():
            self._tmp.unlink()


def display_available() -> Optional[str]:
    """None when a window can open, else the reason it cannot."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display (DISPLAY is not set: over SSH use ssh -X, or run without --show)"
    info = _cv2().getBuildInformation()
    gui = [line for line in info.splitlines() if line.strip().startswith("GUI:")]
    if gui and gui[0].split(":", 1)[1].strip().upper() in ("NONE", "NO"):
        return "this OpenCV has no GUI support (a -headless build)"
    return None


class DisplaySink(Sink):
    """A window with the overlay; ``q`` or Esc stops the run."""

    needs_frames = True

    def __init__(self, title: str = "glimmer-run") -> None:
        reason = display_available()
        if reason:
            raise GlimmerError(f"--show: {reason}")
        self.title = title
        self._opened = False

    def write(self, result: FrameResult) -> None:
        if result.frame is None:
            return
        cv2 = _cv2()
        try:
            cv2.imshow(self.title, annotate(result.frame, result.prediction, result.fps))
            self._opened = True
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as exc:
            raise GlimmerError(
                f"--show: cannot open a window: {str(exc).strip().splitlines()[-1]}"
            ) from None
        if key in (ord("q"), 27):
            self.stop_requested = True

    def close(self, complete: bool = True) -> None:
        if self._opened:
            _cv2().destroyWindow(self.title)
            self._opened = False


class ConsoleSink(Sink):
    """Predictions on stdout when the label changes, an alert starts, or ``interval_s`` has passed;
    a live status line on a terminal's stderr."""

    def __init__(
        self, summarize, interval_s: float = 1.0, stream=None, status: Optional[StatusLine] = None
    ) -> None:
        self.summarize = summarize
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stdout
        self.status = status if status is not None else StatusLine()
        self._last_print = -1e9
        self._last_status = -1e9
        self._last_label: Optional[str] = None
        self.printed: List[int] = []

    def write(self, result: FrameResult) -> None:
        now = time.monotonic()
        alert = result.prediction.get("alert")
        label = result.prediction.get("label")
        if (
            (alert and alert.get("new"))
            or label != self._last_label
            or now - self._last_print >= self.interval_s
        ):
            self._last_print, self._last_label = now, label
            self.status.close()
            self.stream.write(
                f"frame {result.index:>6}  t={result.timestamp:8.2f}s  "
                f"{self.summarize(result.prediction)}\n"
            )
            self.stream.flush()
            self.printed.append(result.index)
        if now - self._last_status >= 0.2:
            self._last_status = now
            lat = result.latency_ms
            self.status.update(
                "frame {}  {:.1f} FPS  inference {:.2f} ms  end-to-end {:.2f} ms".format(
                    result.index, result.fps, lat.get("inference", 0.0), lat.get("end_to_end", 0.0)
                )
            )

    def close(self, complete: bool = True) -> None:
        self.status.close()
