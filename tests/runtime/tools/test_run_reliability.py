"""glimmer-run never loses data: outputs that alias inputs or each other, unwritable folders, stop
signals (real signals to a real glimmer-run), full disks (a real tmpfs where this machine can mount
one, fault injection always), two runs on one output (two real processes), a closed stdout (a real
pipe closed early). Models are small ONNX graphs built with onnx.helper, so this runs on the
drone's Python 3.8 environment too."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
from tiny_onnx import colour_classifier

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream import sinks as sinks_mod
from glimmer.runtime.tools import run as run_mod
from glimmer.runtime.tools.bench import main as bench_main
from glimmer.runtime.tools.run import main
from glimmer.train.synthetic import CLASSES, make_scene_video

FRAMES = 24
GLIMMER_RUN = str(Path(sys.executable).parent / "glimmer-run")
ERROR = "glimmer-run: error: "


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A colour classifier (mean RGB -> logits) with our metadata and a 24-frame MJPEG clip."""
    root = tmp_path_factory.mktemp("reliability")
    rng = np.random.default_rng(0)
    meta = ModelMeta(
        task="classify", name="colours", class_names=list(CLASSES), input_size=(32, 32)
    )
    model = colour_classifier(
        root / "m.onnx", rng.normal(0, 4, (3, len(CLASSES))), np.zeros(len(CLASSES)), meta
    )
    clip = make_scene_video(
        root / "clip.avi",
        ["Fire", "Normal", "Flood", "Earthquake"],
        frames_per_label=FRAMES // 4,
        size=(160, 96),
        fps=12.0,
        fourcc="MJPG",
    )
    return root, model, clip


def run(argv, capsys=None):
    """(exit code, stdout, stderr) of glimmer-run in this process."""
    code = run_cli("glimmer-run", main, [str(a) for a in argv])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(ERROR) and "Traceback" not in err, err
    return lines[0]


def read_jsonl(path: Path) -> List[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    count = 0
    while cap.isOpened() and cap.grab():
        count += 1
    cap.release()
    return count


def leftovers(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if glimmer-run gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(run_mod, "open_backend", refuse)


# -- outputs that alias inputs, or each other ------------------------------------------------------
@pytest.mark.parametrize(
    "flag, target, other",
    [
        ("--output", "model", "--model"),
        ("--report", "model", "--model"),
        ("--save", "clip", "--source"),
        ("--output", "clip", "--source"),
        ("--output", "model-symlink", "--model"),
        ("--output", "model-hardlink", "--model"),
    ],
)
def test_an_output_that_is_an_input_is_refused_before_the_model_loads(
    work, tmp_path, capsys, no_model_load, flag, target, other
):
    root, model, clip = work
    if target == "model-symlink":
        path = tmp_path / "alias.onnx"
        path.symlink_to(model)
    elif target == "model-hardlink":
        path = tmp_path / "alias.onnx"
        os.link(str(model), str(path))
    else:
        path = {"model": model, "clip": clip}[target]
    before = {p: p.read_bytes() for p in (model, clip)}
    code, out, err = run(["--model", model, "--source", clip, flag, path], capsys)
    assert code == 1 and out == ""
    line = one_error(err)
    assert f"{flag} {path} is the {other} " in line, line
    assert {p: p.read_bytes() for p in (model, clip)} == before


def test_an_output_on_an_engines_sidecar_is_refused(work, tmp_path, capsys, no_model_load):
    """A TensorRT engine's metadata lives beside it (NAME.json): --report NAME.json would replace
    it, and the engine would no longer load."""
    root, _, clip = work
    engine, sidecar = tmp_path / "m.engine", tmp_path / "m.json"
    engine.write_bytes(b"engine")
    sidecar.write_text("{}")
    code, _, err = run(["--model", engine, "--source", clip, "--report", sidecar], capsys)
    assert code == 1
    assert f"--report {sidecar} is the --model's sidecar {sidecar}" in one_error(err)
    assert sidecar.read_text() == "{}"


def test_two_outputs_on_one_file_are_refused(work, tmp_path, capsys, no_model_load):
    root, model, clip = work
    same = tmp_path / "out.json"
    code, _, err = run(
        ["--model", model, "--source", clip, "--output", same, "--report", same], capsys
    )
    assert code == 1
    assert "--report " in one_error(err) and "and --output " in err and "same file" in err
    assert not same.exists()


def test_bench_json_on_the_model_is_refused(work, capsys):
    root, model, _ = work
    before = model.read_bytes()
    code = run_cli("glimmer-bench", bench_main, ["--model", str(model), "--json", str(model)])
    err = capsys.readouterr().err
    assert code == 1 and f"--json {model} is the --model {model}" in err
    assert model.read_bytes() == before


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder no file can be created in: a read-only tmpfs as root (root ignores mode bits),
    mode 0555 otherwise."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"root, and no read-only mount possible: {done.stderr.strip()}")
        yield where
        subprocess.run(["umount", str(where)], check=True)
    else:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)


@pytest.mark.parametrize("flag", ["--report", "--output", "--save"])
def test_an_unwritable_output_folder_fails_before_the_run(
    work, read_only_dir, capsys, no_model_load, flag
):
    root, model, clip = work
    target = read_only_dir / ("out.mp4" if flag == "--save" else "out.json")
    code, out, err = run(["--model", model, "--source", clip, flag, target], capsys)
    assert code == 1 and out == ""
    assert f"{flag} {target}: cannot write in {read_only_dir}" in one_error(err)


# -- stop signals -----------------------------------------------------------------------------
def start_run(work, tmp_path: Path, *extra, name: str = "r", **popen) -> subprocess.Popen:
    """A real glimmer-run on the clip played forever, writing JSON lines, video and report."""
    root, model, clip = work
    argv = [GLIMMER_RUN, "--model", model, "--source", clip, "--loop", "0", "--threads", "1"]
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([str(a) for a in argv + list(extra)], text=True, **popen)


def wait_for_lines(path: Path, proc: subprocess.Popen, at_least: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"glimmer-run ended early ({proc.returncode}): {proc.stderr.read()}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {at_least} JSON lines in {timeout} s")


@pytest.mark.parametrize(
    "signum, code, words",
    [
        (signal.SIGTERM, 143, "SIGTERM"),
        (signal.SIGHUP, 129, "SIGHUP"),
        (signal.SIGINT, 130, "Ctrl-C"),
    ],
)
def test_a_stop_signal_finishes_the_outputs_and_exits_128_plus_n(
    work, tmp_path, signum, code, words
):
    out, video, report = tmp_path / "r.jsonl", tmp_path / "v.mp4", tmp_path / "report.json"
    proc = start_run(
        work, tmp_path, "--output", out, "--save", video, "--report", report, stdout=subprocess.PIPE
    )
    try:
        wait_for_lines(out, proc, 30)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    lines = read_jsonl(out)
    data = json.loads(report.read_text())
    assert data["interrupted"] and data["stopped_by"] == words
    assert data["frames"] == len(lines) >= 30
    assert [r["index"] for r in lines] == list(range(len(lines)))
    assert video_frames(video) == len(lines)
    assert f"stopped by {words}" in stdout
    assert leftovers(tmp_path) == []


def test_a_stop_signal_before_the_pipeline_aborts_at_once(work, tmp_path, capsys, monkeypatch):
    """A SIGTERM during the model load (or an engine build) has nothing to finish: exit 143 at
    once, an existing output file untouched, no lock file left."""
    root, model, clip = work
    out = tmp_path / "r.jsonl"
    out.write_text('{"earlier": "run"}\n')
    loaded = []

    def slow_load(*args, **kwargs):
        loaded.append(True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this
        raise AssertionError("SIGTERM did not stop the model load")

    monkeypatch.setattr(run_mod, "open_backend", slow_load)
    started = time.monotonic()
    code, _, err = run(["--model", model, "--source", clip, "--output", out], capsys)
    assert loaded and code == 143 and time.monotonic() - started < 20
    assert "glimmer-run: interrupted (SIGTERM)" in err and "Traceback" not in err
    assert out.read_text() == '{"earlier": "run"}\n'
    assert leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back


# -- one writer per output --------------------------------------------------------------------
def test_a_second_run_on_the_same_output_is_refused_naming_the_first(work, tmp_path):
    out = tmp_path / "shared.jsonl"
    first = start_run(work, tmp_path, "--output", out)
    try:
        wait_for_lines(out, first, 20)
        second = start_run(work, tmp_path, "--output", out, "--report", tmp_path / "second.json")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        line = one_error(err)
        assert f"--output {out}: another run is writing it (pid {first.pid} (" in line, line
        assert "glimmer-run" in line and str(out) in line.split("(pid", 1)[1]
        assert not (tmp_path / "second.json").exists()
        count = out.read_text().count("\n")
        wait_for_lines(out, first, count + 20)  # the first run goes on, its file whole
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143
    lines = read_jsonl(out)
    assert [r["index"] for r in lines] == list(range(len(lines)))
    assert leftovers(tmp_path) == []


# -- a closed stdout --------------------------------------------------------------------------
def test_a_closed_stdout_silences_the_console_and_the_files_complete(work, tmp_path):
    out, video, report = tmp_path / "r.jsonl", tmp_path / "v.mp4", tmp_path / "report.json"
    config = tmp_path / "deploy.toml"
    config.write_text("[runtime]\nprint_interval = 0.0\n")  # a line per frame: EPIPE for sure
    root, model, clip = work
    argv = [GLIMMER_RUN, "--config", config, "--model", model, "--source", clip, "--loop", "10"]
    argv += ["--output", out, "--save", video, "--report", report, "--threads", "1"]
    proc = subprocess.Popen(
        [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first.startswith("model ")
    assert proc.returncode == 0 and "Traceback" not in err, err
    lines = read_jsonl(out)
    assert [r["index"] for r in lines] == list(range(10 * FRAMES))
    assert json.loads(report.read_text())["frames"] == 10 * FRAMES
    assert video_frames(video) == 10 * FRAMES


# -- full disks -------------------------------------------------------------------------------
class _Budget:
    def __init__(self, size: int) -> None:
        self.left = size


class _FullDiskFile:
    """A file object whose disk holds ``budget`` bytes: a write that does not fit writes what
    fits (a short write), the next raises ENOSPC, as a real full disk does."""

    def __init__(self, fh, budget: _Budget) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data) -> int:
        if self._budget.left <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = min(len(data), self._budget.left)
        self._budget.left -= n
        return self._fh.write(bytes(data[:n]))

    def __getattr__(self, name):
        return getattr(self._fh, name)


def install_full_disk(monkeypatch, where: Path, size: int) -> None:
    """Outputs under ``where`` behave as on a disk of ``size`` bytes: JSON lines fail with ENOSPC,
    cv2.VideoWriter silently stops writing (as it does on a full disk), the report's write fails."""
    budget = _Budget(size)
    real_open, real_writer = sinks_mod.open_lines, cv2.VideoWriter

    def under(path) -> bool:
        return os.path.realpath(str(path)).startswith(os.path.realpath(str(where)) + os.sep)

    def open_lines(path):
        fh = real_open(path)
        return _FullDiskFile(fh, budget) if under(path) else fh

    class SilentlyFullWriter:
        def __init__(self, path, *args):
            self._writer, self._full = real_writer(path, *args), under(path)

        def write(self, image):
            if self._full and budget.left <= 0:
                return  # what OpenCV does when the disk is full: nothing, and no error
            budget.left -= image.nbytes // 20 if self._full else 0
            self._writer.write(image)

        def __getattr__(self, name):
            return getattr(self._writer, name)

    monkeypatch.setattr(sinks_mod, "open_lines", open_lines)
    monkeypatch.setattr(cv2, "VideoWriter", SilentlyFullWriter)
    monkeypatch.setattr(
        run_mod, "atomic_write_text", _enospc_under(under, run_mod.atomic_write_text)
    )


def _enospc_under(under, real):
    def write(path, text):
        if under(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, text)

    return write


@pytest.fixture(params=["tmpfs", "fault-injection"])
def small_disk(request, tmp_path, monkeypatch):
    """(folder, how): a 64 KiB tmpfs where this machine lets us mount one (root), else, and always
    in the ``fault-injection`` case, the same limits injected into the writers."""
    where = tmp_path / "small"
    where.mkdir()
    how = request.param
    if how == "tmpfs":
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            how = "fault-injection"
            print(f"full disk: no tmpfs ({done.stderr.strip() or 'mount failed'}), fault injection")
    if how == "fault-injection":
        install_full_disk(monkeypatch, where, 64 * 1024)
    print(f"full disk: {how}")
    try:
        yield where, how
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(where)], check=True)


def test_a_full_disk_under_the_json_lines_keeps_complete_lines_and_fails(
    work, tmp_path, small_disk, capsys
):
    where, how = small_disk
    root, model, clip = work
    out, report = where / "r.jsonl", tmp_path / "report.json"
    code, _, err = run(
        ["--model", model, "--source", clip, "--loop", "40", "--output", out, "--report", report],
        capsys,
    )
    assert code == 1, err
    line = one_error(err)
    assert f"--output {out}: write failed after " in line and "No space left on device" in line
    text = out.read_text()
    assert text.endswith("\n")
    lines = read_jsonl(out)  # every line whole
    assert 10 < len(lines) < 40 * FRAMES
    assert f"the file keeps the {len(lines)} complete lines" in line
    assert [r["index"] for r in lines] == list(range(len(lines)))
    assert not report.exists()  # the run failed: no report claims it finished


def noise_clip(path: Path, frames: int = 12) -> Path:
    """Incompressible frames: a few of them fill a 64 KiB disk."""
    rng = np.random.default_rng(1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (320, 240))
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.release()
    return path


def test_a_full_disk_under_the_video_saves_nothing_under_its_name(
    work, tmp_path, small_disk, capsys
):
    where, how = small_disk
    root, model, _ = work
    clip = noise_clip(tmp_path / "noise.avi")
    video, out = where / "v.mp4", tmp_path / "r.jsonl"
    code, _, err = run(
        ["--model", model, "--source", clip, "--save", video, "--output", out], capsys
    )
    assert code == 1, err
    line = one_error(err)
    assert f"--save {video}: " in line and ("not saved" in line or "nothing saved" in line), line
    assert sorted(p.name for p in where.iterdir()) == []  # no video, no .partial, no lock
    assert len(read_jsonl(out)) >= 1  # the JSON lines elsewhere keep what was processed


def test_a_full_disk_under_the_report_is_one_line(work, tmp_path, small_disk, capsys):
    where, how = small_disk
    root, model, clip = work
    report = where / "report.json"
    if how == "tmpfs":  # fill it, leaving no room for the report
        with open(str(where / "filler"), "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
            except OSError:
                pass
    code, _, err = run(["--model", model, "--source", clip, "--report", report], capsys)
    assert code == 1
    line = one_error(err)
    assert f"--report {report}: cannot write: No space left on device" in line, line
    assert not report.exists() and not [p for p in where.iterdir() if p.name.startswith(".")]
