"""Where results go: JSON lines, an annotated video, a window, the console (docs/runtime.md,
"Outputs users expect").

- JSON lines (or CSV, :mod:`glimmer.runtime.stream.records`): one object per frame (index,
  timestamp, per-stage latency, predictions; ``file`` for a still image), written straight to the
  OS per frame so a crash or a pulled battery loses nothing already processed. A failed write (a
  full disk, an I/O error) cuts the file back to its last complete frame and stops the run with
  one line.
- Annotated video: written under a temporary name beside the target and renamed when the run ends,
  so a half-written file never carries the name a user asked for. ``cv2.VideoWriter`` reports no
  write errors, so free space is watched while writing and the finished file is read back (it
  opens, holds every frame, its last frame decodes) before it gets its name.
- Window: only when asked (``--show``) and when a display exists; never over SSH by accident
  (display code that fails headless is a common complaint with such tools).
- Console: predictions at most every ``interval`` seconds (alerts always), a live status line;
  when stdout's reader goes away (``| head``) it falls silent and the run goes on.
"""

import csv
import errno
import io
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from glimmer.runtime.core.console import StatusLine, mute_stdout
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.stream.records import csv_columns, csv_rows, frame_record

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
_GREEN, _RED, _WHITE, _BLACK = (60, 200, 60), (40, 40, 230), (255, 255, 255), (0, 0, 0)
#: below this much free space beside a video being written, its writes are failing unseen
MIN_FREE_BYTES = 16 * 1024


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
    #: the image's path, for a still source (a folder or an image); None for video and cameras
    file: Optional[str] = None


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


def open_lines(path: Path):
    """``path`` opened for writing, unbuffered (each line reaches the OS when written), without
    truncating at open: the caller truncates once it holds the output's lock."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o666)
    fh = os.fdopen(fd, "wb", buffering=0)
    if stat.S_ISREG(os.fstat(fd).st_mode):  # not /dev/stdout or a FIFO
        fh.truncate(0)
    return fh


class JsonLinesSink(Sink):
    """One JSON object per line and frame (:func:`records.frame_record`), written as produced;
    only complete frames stay."""

    def __init__(self, path: Path, flag: str = "--output") -> None:
        self.path = Path(path)
        self.flag = flag
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open_lines(self.path)
        except OSError as exc:
            raise GlimmerError(f"{flag} {self.path}: cannot write: {exc.strerror}") from None
        self.lines = 0  # frames written
        self._size = 0  # bytes of complete frames

    @staticmethod
    def record(result: FrameResult) -> Dict[str, Any]:
        """The frame's versioned record (``schemas/frame.schema.json``)."""
        return frame_record(
            result.index, result.timestamp, result.prediction, result.latency_ms, result.file
        )

    def encode(self, result: FrameResult) -> str:
        """One frame's text: a JSON line."""
        return json.dumps(self.record(result)) + "\n"

    def write(self, result: FrameResult) -> None:
        self._append(self.encode(result))
        self.lines += 1

    def _append(self, text: str) -> None:
        """Write all of ``text`` or, on a failed write, cut back to the last complete frame."""
        data = memoryview(text.encode("utf-8"))
        done = 0
        try:
            while done < len(data):
                wrote = self._fh.write(data[done:])
                if not wrote:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                done += wrote
        except OSError as exc:
            kept = self._cut()
            raise GlimmerError(
                f"{self.flag} {self.path}: write failed after {self.lines} frames "
                f"({exc.strerror or exc}); {kept}"
            ) from None
        self._size += done

    def _cut(self) -> str:
        """Truncate to the last complete line (freeing the space a partial one took)."""
        try:
            self._fh.truncate(self._size)
            return f"the file keeps the {self.lines} complete lines"
        except OSError as exc:
            return f"and it could not be cut back to its complete lines ({exc.strerror or exc})"

    def close(self, complete: bool = True) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                raise GlimmerError(
                    f"{self.flag} {self.path}: closing failed ({exc.strerror or exc})"
                ) from None


class CsvSink(JsonLinesSink):
    """The same frames as CSV (:func:`records.csv_rows`): a header, then one row per detection or
    classified frame, for a spreadsheet or pandas; the JSON lines keep everything else."""

    def __init__(self, path: Path, task: str, flag: str = "--output") -> None:
        super().__init__(path, flag)
        self._append(self._csv([csv_columns(task)]))  # the file starts empty (open_lines)

    @staticmethod
    def _csv(rows: List[List[Any]]) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        return out.getvalue()

    def encode(self, result: FrameResult) -> str:
        return self._csv(csv_rows(self.record(result)))


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
        text = "{} {:.2f}".format(pred["name"], pred["confidence"])
        if alert:
            cv2.rectangle(out, (0, 0), (w - 1, h - 1), _RED, max(4, thick * 3))
            text += "  ALERT: {}".format(alert["name"])
        label(text, 8, int(30 * scale), _RED if alert else _GREEN)
    else:
        for det in pred.get("detections", []):
            x1, y1, x2, y2 = (int(round(det["box"][k])) for k in ("x1", "y1", "x2", "y2"))
            cv2.rectangle(out, (x1, y1), (x2, y2), _GREEN, thick)
            label("{} {:.2f}".format(det["name"], det["confidence"]), x1, y1, _GREEN)
    if fps:
        label(f"{fps:.1f} FPS", 8, h - 8, _WHITE)
    return out


def video_frames(path: Path, expected: int) -> int:
    """How many of ``expected`` frames the video at ``path`` gives back: 0 when it does not open,
    ``expected`` only when its header says so and its last frame decodes (a file cut short by a
    full disk can still open with the header's count: MJPEG AVI, Matroska)."""
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count != expected or expected == 0:
            return max(0, min(count, expected))
        cap.set(cv2.CAP_PROP_POS_FRAMES, expected - 1)
        ok, frame = cap.read()
        return expected if ok and frame is not None else expected - 1
    finally:
        cap.release()


def free_bytes(folder: Path) -> Optional[int]:
    """Free space in ``folder`` for this user; None when it cannot be asked."""
    try:
        return shutil.disk_usage(str(folder)).free
    except OSError:
        return None


class VideoSink(Sink):
    """Annotated frames into a video file via ``cv2.VideoWriter``, renamed into place at the end
    once read back whole."""

    needs_frames = True

    def __init__(self, path: Path, fps: float = 30.0, flag: str = "--save") -> None:
        self.path = Path(path)
        self.flag = flag
        suffix = self.path.suffix.lower()
        if suffix not in FOURCC:
            raise GlimmerError(
                "{} {}: unsupported video type {!r} (use {})".format(
                    flag, self.path, suffix or "none", ", ".join(sorted(FOURCC))
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
            raise GlimmerError(f"{flag} {self.path}: cannot write there: {exc.strerror}") from None
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
                raise GlimmerError(
                    f"{self.flag} {self.path}: OpenCV cannot write this video type here"
                )
        self._writer.write(image)
        self.frames += 1
        free = free_bytes(self._tmp.parent)
        if free is not None and free < MIN_FREE_BYTES:
            raise GlimmerError(
                f"{self.flag} {self.path}: the disk is full ({free} bytes free) after "
                f"{self.frames} frames; stopped, the video was not saved"
            )

    def close(self, complete: bool = True) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if complete and self.frames and self._tmp.exists():
            got = video_frames(self._tmp, self.frames)
            if got != self.frames:
                free = free_bytes(self._tmp.parent)
                full = free is not None and free < MIN_FREE_BYTES
                self._remove_tmp()
                raise GlimmerError(
                    f"{self.flag} {self.path}: the written video reads back incomplete ({got} of "
                    f"{self.frames} frames){'; the disk is full' if full else ''}; removed, "
                    "nothing saved under that name"
                )
            try:
                # mkstemp made it owner-only; give the video the permissions any new file gets.
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(str(self._tmp), 0o666 & ~umask)
                os.replace(str(self._tmp), str(self.path))
            except OSError as exc:
                self._remove_tmp()
                raise GlimmerError(
                    f"{self.flag} {self.path}: cannot put the video in place ({exc.strerror})"
                ) from None
        else:
            self._remove_tmp()

    def _remove_tmp(self) -> None:
        try:
            self._tmp.unlink()
        except OSError:
            pass


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
        #: True once stdout's reader has gone: the run goes on, silently
        self.muted = False

    def write(self, result: FrameResult) -> None:
        if self.muted:
            return
        try:
            self._write(result)
        except BrokenPipeError:
            self.muted = True
            self.status.enabled = False
            if self.stream is sys.stdout:
                mute_stdout()

    def _write(self, result: FrameResult) -> None:
        now = time.monotonic()
        alert = result.prediction.get("alert")
        label = result.prediction.get("name")
        if (
            (alert and alert.get("new"))
            or label != self._last_label
            or now - self._last_print >= self.interval_s
        ):
            self._last_print, self._last_label = now, label
            self.status.close()
            where = f"  {result.file}" if result.file is not None else ""
            self.stream.write(
                f"frame {result.index:>6}  t={result.timestamp:8.2f}s  "
                f"{self.summarize(result.prediction)}{where}\n"
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
        try:
            self.status.close()
        except (BrokenPipeError, ValueError):
            pass
