"""Live sources that never hang, against real servers on 127.0.0.1 (no mocked capture):

- a real MJPEG-over-HTTP camera (tests/runtime/stream/conftest.py) that stalls with its connection
  open: the stall is reported within the stall timeout, the stream reconnects and resumes, or, when
  the camera stops answering, glimmer-run ends with one error line and a non-zero exit;
- a TCP server that accepts and never answers (tests/helpers/silent_server.py): the open fails
  within the connect timeout (FFmpeg's own default is 30 s), and a real SIGINT to a glimmer-run
  blocked in that open ends it at once with exit code 130.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from silent_server import SilentServer

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.sources import SourceOptions, open_source

STALL_S = 1.0
MARGIN_S = 3.0  # scheduling slack on a shared 2-core machine; the bounds under test are 1-2 s


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def glimmer_threads(name, before=()):
    return [t for t in threading.enumerate() if t.name == name and t not in before]


def glimmer_run_command():
    """The installed glimmer-run of this environment (its console script), run for real."""
    script = Path(sys.executable).parent / "glimmer-run"
    return [str(script)] if script.exists() else [sys.executable, "-m", "glimmer.runtime.tools.run"]


@pytest.fixture
def tiny_model(tmp_path):
    from tiny_onnx import colour_classifier

    meta = ModelMeta(
        task="classify", name="colours", class_names=["Normal", "Fire"], input_size=(32, 32)
    )
    return colour_classifier(tmp_path / "m.onnx", np.eye(3, 2), np.zeros(2), meta)


def deploy_toml(tmp_path, **runtime):
    lines = ["[runtime]"] + [f"{key} = {value!r}" for key, value in runtime.items()]
    path = tmp_path / "deploy.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_stalled_mjpeg_stream_is_reported_reconnected_and_resumes(mjpeg_server, numbering):
    opts = SourceOptions(stall_timeout_s=STALL_S, connect_timeout_s=2.0, retries=3, backoff_s=0.1)
    before = set(threading.enumerate())
    src = open_source(mjpeg_server.url, opts)
    try:
        first = [numbering.read(next(src)[0][:, :, 1]) for _ in range(3)]
        assert first == sorted(first) and src.stalls == 0
        # The camera stalls: its connection stays open and no further frame comes on it.
        mjpeg_server.fps = 1e-4
        stalled_at = time.monotonic()
        wait_for(lambda: src.stalls == 1)
        took = time.monotonic() - stalled_at
        assert STALL_S - 0.1 <= took < STALL_S + MARGIN_S
        # It recovers: new connections stream again (the stalled one stays silent).
        mjpeg_server.fps = 50.0
        wait_for(lambda: src.reconnects == 1)
        numbers, indices = [], []
        while len(numbers) < 5:
            frame, _, index = next(src)
            numbers.append(numbering.read(frame[:, :, 1]))
            indices.append(index)
        assert numbers[-1] < 100  # numbered from 0 again: the new connection's frames
        assert indices == sorted(set(indices)) and src.stalls == 1 and src.reconnects == 1
    finally:
        src.close()
    # the abandoned reader ended when FFmpeg's read timeout returned its read; nothing leaks
    wait_for(lambda: not glimmer_threads("glimmer-reader", before), timeout=10.0)
    assert not glimmer_threads("glimmer-grabber", before)
    assert not glimmer_threads("glimmer-open", before)


def test_glimmer_run_on_a_stream_that_stalls_for_good_ends_non_zero(
    mjpeg_server, tiny_model, tmp_path
):
    config = deploy_toml(tmp_path, stall_timeout=STALL_S, connect_timeout=1.0, reconnects=2)
    probes = set(mjpeg_server.sent)  # the fixture's own check
    out, report, video = tmp_path / "r.jsonl", tmp_path / "report.json", tmp_path / "v.avi"
    proc = subprocess.Popen(
        glimmer_run_command()
        + ["--model", str(tiny_model), "--source", mjpeg_server.url, "--config", str(config)]
        + ["--threads", "1", "--headless", "--output", str(out), "--report", str(report)]
        + ["--save", str(video)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # glimmer-run is streaming once its connection has had a few frames
        wait_for(lambda: any(n > 5 for p, n in mjpeg_server.sent.items() if p not in probes), 60)
        mjpeg_server.fps = 1e-4  # the open connection goes quiet ...
        mjpeg_server.shutdown()  # ... and new ones are accepted by the kernel, never answered
        stalled_at = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    took = time.monotonic() - stalled_at
    lines = [line for line in err.splitlines() if line.strip()]
    url = mjpeg_server.url
    assert proc.returncode == 1, err
    assert f"stream stalled: no frame from {url} for 1.0 s; reconnecting (attempt 1/2)" in lines
    assert lines[-1].startswith(
        f"glimmer-run: error: {url}: the stream stopped delivering frames (no frame for 1.0 s) "
        "and 2 reconnect attempts over "
    )
    # nothing already produced is lost: the frames before the loss are in every output
    written = json.loads(report.read_text())
    frames = written["frames"]
    assert frames > 0 and frames == len(out.read_text().splitlines())
    assert written["stalls"] == 1 and written["source_error"] in lines[-1]
    assert cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT) == frames
    assert lines[-1].endswith(
        "failed (last: no answer within 1.0 s (connect timeout); check the address and that the "
        f"camera is reachable) (the {frames} frames before it are in the outputs and the report)"
    )
    assert "Traceback" not in err
    # stall 1 s, back-off 0.5 s + open 1 s, back-off 1 s + open 1 s, then exit
    assert took < 4.5 + MARGIN_S + 2.0


def test_an_rtsp_address_that_never_answers_fails_within_the_connect_timeout():
    before = set(threading.enumerate())
    with SilentServer() as server:
        started = time.monotonic()
        with pytest.raises(GlimmerError) as info:
            open_source(server.url(), SourceOptions(connect_timeout_s=1.0))
        took = time.monotonic() - started
        assert server.accepted.is_set()  # it did connect: the camera just never answered
        assert 1.0 <= took < 1.0 + MARGIN_S  # FFmpeg alone waits 30 s
        assert str(info.value) == (
            f"{server.url()}: no answer within 1.0 s (connect timeout); check the address and "
            "that the camera is reachable"
        )
        # FFmpeg's own open timeout (set a little longer) ends the abandoned open soon after
        wait_for(lambda: not glimmer_threads("glimmer-open", before), timeout=10.0)


def test_ctrl_c_ends_glimmer_run_blocked_in_an_open_at_once(tiny_model, tmp_path):
    config = deploy_toml(tmp_path, connect_timeout=60.0)
    with SilentServer() as server:
        proc = subprocess.Popen(
            glimmer_run_command()
            + ["--model", str(tiny_model), "--source", server.url(), "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.accepted.wait(60), "glimmer-run never connected"
            time.sleep(0.5)  # well inside FFmpeg's open now, which would wait 60 s
            assert proc.poll() is None
            os.kill(proc.pid, signal.SIGINT)
            interrupted_at = time.monotonic()
            out, err = proc.communicate(timeout=30)
            took = time.monotonic() - interrupted_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err
    assert took < 2.0, f"exit took {took:.1f} s after SIGINT"
    assert err.strip().splitlines()[-1] == "glimmer-run: interrupted"
    assert "Traceback" not in err
