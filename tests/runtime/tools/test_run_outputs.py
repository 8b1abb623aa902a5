"""glimmer.runtime.core.outputs: the checks glimmer-run, glimmer-bench and glimmer-check make on
their outputs before any work, and the one-writer lock (an OS lock, released when its owner dies
however it dies)."""

import os
import subprocess
import sys

import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.outputs import OutputLock, lock_outputs, lock_path, preflight


def test_preflight_names_both_flags_for_an_output_on_an_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    hard = tmp_path / "hard.onnx"
    os.link(str(model), str(hard))
    for alias in (model, link, hard, tmp_path / "sub" / ".." / "m.onnx"):
        with pytest.raises(GlimmerError, match=r"^--output .* is the --model .*m\.onnx"):
            preflight([("--output", alias)], [("--model", model)])
    preflight([("--output", tmp_path / "r.jsonl")], [("--model", model), ("--meta", None)])
    assert model.read_bytes() == b"model" and not (tmp_path / "r.jsonl").exists()


def test_preflight_refuses_a_folder_and_creates_missing_folders(tmp_path):
    with pytest.raises(GlimmerError, match="--json .*: is a folder, give a file name"):
        preflight([("--json", tmp_path)], [])
    preflight([("--json", tmp_path / "new" / "deep" / "r.json")], [])
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())


def test_a_second_lock_on_one_output_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "r.jsonl"
    with OutputLock(out, "--output"):
        assert lock_path(out).read_text().split("\n")[0] == str(os.getpid())
        with pytest.raises(GlimmerError) as caught:
            OutputLock(out, "--output").acquire()
        assert f"--output {out}: another run is writing it (pid {os.getpid()} (" in str(
            caught.value
        )
        # all-or-nothing: the first output locked is released when a later one is refused
        with pytest.raises(GlimmerError):
            lock_outputs([("--save", tmp_path / "v.mp4"), ("--output", out)])
        OutputLock(tmp_path / "v.mp4", "--save").acquire().release()
    assert not lock_path(out).exists()  # released: the lock file goes with it
    assert not out.exists()  # the lock never touches the output itself


def test_a_lock_left_by_a_killed_owner_does_not_block(tmp_path):
    out = tmp_path / "r.jsonl"
    code = (
        "import os, sys\n"
        "from glimmer.runtime.core.outputs import OutputLock\n"
        f"OutputLock({str(out)!r}, '--output').acquire()\n"
        "print('locked', flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "locked\n" and done.returncode == -9
    assert lock_path(out).exists()  # left behind by SIGKILL ...
    OutputLock(out, "--output").acquire().release()  # ... and no obstacle


def test_a_fifo_output_is_written_as_is_without_lock_or_probe(tmp_path):
    """``--output /dev/stdout`` or a named pipe: no temporary, no lock file, no truncation."""
    import threading

    from glimmer.runtime.stream.sinks import FrameResult, JsonLinesSink

    fifo = tmp_path / "results.fifo"
    os.mkfifo(str(fifo))
    preflight([("--output", fifo)], [])
    assert lock_outputs([("--output", fifo)]) == []
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    sink = JsonLinesSink(fifo)
    sink.write(FrameResult(0, 0.5, {"task": "classify", "name": "Fire"}, {"inference": 1.0}))
    sink.close()
    reader.join(timeout=30)
    assert received and '"name": "Fire"' in received[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.fifo"]
