"""glimmer-run on a REAL RTSP camera: GStreamer's RTSP server (tests/helpers/rtsp_server.py, run by
the system Python that python3-gi belongs to) streams a live test pattern on 127.0.0.1; the real
glimmer-run reads it through OpenCV's FFmpeg. The camera then freezes (SIGSTOP: connection open,
no packets), is killed and restarted on the same port; glimmer-run must report the stall, reconnect,
resume and finish with a complete report.

Needs Debian's packages (the CI installs them); without them the test skips and says which.
"""

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import pytest

from glimmer.runtime.core.metadata import ModelMeta

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).resolve().parents[2] / "helpers" / "rtsp_server.py"
APT_LINE = (
    "apt-get install -y --no-install-recommends python3-gi gir1.2-gst-rtsp-server-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly"
)
MODULE = "glimmer.runtime.tools.run"
STALL_S = 1.5
MARGIN_S = 3.0  # scheduling slack on a shared 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspCamera:
    """The server script as a child process: ``start()`` waits for its READY line (or skips the
    test with the reason it printed); ``freeze()`` / ``kill()`` are real signals."""

    def __init__(self, port: int, codec: str) -> None:
        self.port, self.codec = port, codec
        self.proc: Optional[subprocess.Popen] = None
        self.url = f"rtsp://127.0.0.1:{port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--codec", self.codec],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line.startswith("MISSING"):
            self.kill()
            pytest.skip(f"RTSP camera: {line[len('MISSING ') :]}; install with: {APT_LINE}")
        assert line == f"READY {self.url}", f"the RTSP server did not start: {line!r}"

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL ends a stopped process too
            self.proc.wait(timeout=10)


@pytest.fixture
def rtsp_camera(request):
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip(f"RTSP camera: no system Python at {SYSTEM_PYTHON}; install with: {APT_LINE}")
    if "FFMPEG:" not in cv2.getBuildInformation().replace(" ", ""):
        pytest.skip(f"OpenCV {cv2.__version__} has no FFmpeg: it cannot read RTSP")
    camera = RtspCamera(free_port(), request.param)
    camera.start()
    yield camera
    camera.kill()


class Lines:
    """A child's stderr, collected line by line on a thread so the test can wait on a line."""

    def __init__(self, stream) -> None:
        self.lines: List[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, prefix: str, timeout: float) -> float:
        """Seconds until a line starting with ``prefix`` arrived (fails after ``timeout``)."""
        started = time.monotonic()
        while not any(line.startswith(prefix) for line in self.lines):
            assert time.monotonic() - started < timeout, f"no {prefix!r} in {self.lines}"
            time.sleep(0.02)
        return time.monotonic() - started

    def join(self) -> List[str]:
        self._thread.join(timeout=10)
        return self.lines


def count_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("rtsp_camera", ["jpeg", "h264"], indirect=True)
def test_glimmer_run_survives_a_frozen_then_restarted_rtsp_camera(rtsp_camera, tmp_path):
    from tiny_onnx import colour_classifier

    meta = ModelMeta(
        task="classify", name="colours", class_names=["Normal", "Fire"], input_size=(32, 32)
    )
    model = colour_classifier(tmp_path / "m.onnx", np.eye(3, 2), np.zeros(2), meta)
    config = tmp_path / "deploy.toml"
    config.write_text(
        f"[runtime]\nstall_timeout = {STALL_S}\nconnect_timeout = 2.0\nreconnects = 5\n"
    )
    out, report_path = tmp_path / "results.jsonl", tmp_path / "report.json"
    script = Path(sys.executable).parent / "glimmer-run"  # the installed one, as users run it
    command = [str(script)] if script.exists() else [sys.executable, "-m", MODULE]
    proc = subprocess.Popen(
        command
        + ["--model", str(model), "--source", rtsp_camera.url, "--config", str(config)]
        + ["--max-frames", "40", "--output", str(out), "--report", str(report_path)]
        + ["--threads", "1", "--headless"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = Lines(proc.stderr)
    try:
        deadline = time.monotonic() + 60
        while count_lines(out) < 3:  # streaming
            assert proc.poll() is None, err.join()
            assert time.monotonic() < deadline, "no frames from the RTSP camera"
            time.sleep(0.05)
        before = count_lines(out)
        assert before < 40

        rtsp_camera.freeze()  # the camera hangs: its connection stays open, no packets
        took = err.wait_for(f"stream stalled: no frame from {rtsp_camera.url} for 1.5 s", 20)
        assert took < STALL_S + MARGIN_S

        rtsp_camera.kill()  # then it is power-cycled: same address, a new server
        rtsp_camera.start()
        err.wait_for(f"stream resumed: {rtsp_camera.url} delivers frames again", 30)
        assert proc.wait(timeout=60) == 0, err.join()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.join()
    assert not any("Traceback" in line or "error:" in line for line in lines), lines
    report = json.loads(report_path.read_text())
    # --max-frames counts frames taken; the latency schedule may drop a taken one for a newer
    assert before < report["frames"] == count_lines(out) <= 40, report
    # every interruption is one line and one stall (a busy machine may add a short one while
    # the restarted camera's stream settles), every reopen one reconnect
    interruptions = [line for line in lines if line.startswith(("stream stalled:", "stream lost:"))]
    resumed = [line for line in lines if line.startswith("stream resumed:")]
    assert report["stalls"] == len(interruptions) >= 1, lines
    assert report["reconnects"] >= len(resumed) >= 1, lines
    assert interruptions[0].endswith("; reconnecting (attempt 1/5)")
    indices = [json.loads(line)["index"] for line in out.read_text().splitlines()]
    assert indices == sorted(set(indices))  # one stream, numbered on across the reconnect
