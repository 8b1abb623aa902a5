"""A real MJPEG-over-HTTP camera on 127.0.0.1 for the live-source tests: multipart/x-mixed-replace
JPEG frames at a set rate, each frame's number drawn into it as a 4x4 grid of black and white
cells (16 bits, row-major, most significant first), coarse enough to survive JPEG and a resize."""

import http.server
import socketserver
import threading
import time
from types import SimpleNamespace
from typing import Dict, Iterator, List

import cv2
import numpy as np
import pytest

BITS = 16


def numbered_frame(number: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A BGR frame whose 4x4 cells spell ``number`` in binary (white = 1)."""
    cells = np.array([(number >> (BITS - 1 - i)) & 1 for i in range(BITS)], np.uint8)
    grid = (cells.reshape(4, 4) * 255).astype(np.uint8)
    image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


def read_number(image: np.ndarray) -> int:
    """The number :func:`numbered_frame` drew, read from the centres of the cells of ``image``
    (HxW, any scale: a frame's grey level or a preprocessed channel)."""
    h, w = image.shape[:2]
    level = (float(image.max()) + float(image.min())) / 2.0
    bits = [
        image[int((r + 0.5) * h / 4), int((c + 0.5) * w / 4)] > level
        for r in range(4)
        for c in range(4)
    ]
    return sum(int(b) << (BITS - 1 - i) for i, b in enumerate(bits))


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 2.0  # a client that stops reading cannot hold a handler thread for ever

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: MjpegServer = self.server  # type: ignore[assignment]
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        start, number = time.perf_counter(), 0
        try:
            while not server.stopping.is_set():
                data = server.jpeg(number)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(data)
                    + data
                    + b"\r\n"
                )
                server.sent[self.client_address[1]] = number + 1
                number += 1
                delay = start + number / server.fps - time.perf_counter()
                if delay > 0:
                    server.stopping.wait(delay)
        except OSError:  # the client went away (or stopped reading)
            pass


class MjpegServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """Serves numbered frames at ``fps`` to every client, from the first frame on."""

    daemon_threads = False  # so that server_close() joins the handler threads
    block_on_close = True

    def __init__(self, fps: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fps = fps
        self.stopping = threading.Event()
        self.sent: Dict[int, int] = {}  # client port -> frames sent
        self._cache: List[bytes] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/stream.mjpg"

    def jpeg(self, number: int) -> bytes:
        while len(self._cache) <= number:
            ok, buf = cv2.imencode(".jpg", numbered_frame(len(self._cache)))
            self._cache.append(buf.tobytes())
        return self._cache[number]


@pytest.fixture
def numbering() -> SimpleNamespace:
    """``frame(number, width, height)`` draws a number into a frame; ``read(image)`` reads it."""
    return SimpleNamespace(frame=numbered_frame, read=read_number)


@pytest.fixture
def mjpeg_server() -> Iterator[MjpegServer]:
    """A 50 FPS numbered MJPEG stream; closed (handlers ended, socket closed) within 5 s after the
    test, or the test fails. Skips where this OpenCV cannot read MJPEG over HTTP."""
    server = MjpegServer(fps=50.0)
    thread = threading.Thread(target=server.serve_forever, name="mjpeg-server", daemon=True)
    thread.start()
    try:
        cap = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG)
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        cap.release()
        if not ok or frame is None:
            pytest.skip(f"OpenCV {cv2.__version__} cannot read MJPEG over HTTP (no FFmpeg?)")
        assert read_number(frame[:, :, 1]) == 0
        yield server
    finally:
        started = time.perf_counter()
        server.stopping.set()
        server.shutdown()
        server.server_close()  # joins the handler threads (block_on_close)
        thread.join(timeout=5.0)
        assert not thread.is_alive() and time.perf_counter() - started < 5.0
