"""glimmer-bench on a tiny exported GlimmerNet and a fixed-head detector: the trtexec fields of
--json, the machine description, the chart, and --compare with available and unavailable peers
(the export peers registered by monkeypatching discovery until pyproject.toml declares them)."""

import json

import numpy as np
import pytest
from tiny_onnx import add_meta, export_tiny_glimmernet, fixed_detector

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.tools import peers as bench_peers
from glimmer.runtime.tools.bench import main
from glimmer.train.synthetic import CLASSES

TRTEXEC = ("min_ms", "max_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A GlimmerNet (depths 1,1,1,1) at 64 px with a dynamic batch, extra.config in its metadata."""
    # exported by torch, absent from the runtime-only Python 3.8 suite: its tests skip there
    pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("bench")
    path = root / "tiny.onnx"
    net = export_tiny_glimmernet(path, dynamic_batch=True)
    add_meta(
        path,
        ModelMeta(
            task="classify",
            name="glimmernet",
            class_names=list(CLASSES),
            input_size=(64, 64),
            batch=None,
            extra={"arch": "glimmernet", "config": net.config.to_dict()},
        ),
    )
    return root, path


def bench(argv, capsys):
    code = run_cli("glimmer-bench", main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_trtexec_fields_machine_and_both_figures(tiny, capsys):
    root, model = tiny
    code, out, err = bench(
        [
            "--model",
            model,
            "--iters",
            30,
            "--warmup",
            3,
            "--batch",
            2,
            "--threads",
            1,
            "--json",
            root / "b.json",
            "--plot",
            root / "b.png",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((root / "b.json").read_text())
    mo = report["model_only"]
    assert set(TRTEXEC) <= set(mo["latency_ms"]) and mo["latency_ms"]["count"] == 30
    assert len(mo["samples_ms"]) == 30 and mo["batch"] == 2
    assert (
        mo["latency_ms"]["min_ms"]
        <= mo["latency_ms"]["median_ms"]
        <= mo["latency_ms"]["p99_ms"]
        <= mo["latency_ms"]["max_ms"]
    )
    assert mo["throughput_images_per_s"] == pytest.approx(2 * mo["throughput_qps"], rel=1e-3)
    e2e = report["end_to_end"]
    assert e2e["frames"] == 30 and e2e["throughput_fps"] > 0
    assert (
        set(TRTEXEC) <= set(e2e["stages"]["end_to_end"])
        and e2e["stages"]["inference"]["count"] == 30
    )
    machine = report["machine"]
    assert (
        machine["cores"] >= 1
        and machine["threads"] == 1
        and machine["onnxruntime"] != "not installed"
    )
    assert {"cpu", "gpu", "tensorrt", "device"} <= set(machine)
    assert "| model-only (batch 2) |" in out and "FPS" in out
    assert (root / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unavailable_peers_are_reported_not_crashed(tiny, capsys, monkeypatch):
    root, model = tiny
    monkeypatch.setattr(
        bench_peers, "_entry_points", lambda: {}
    )  # as before pyproject declares them
    code, out, err = bench(
        [
            "--model",
            model,
            "--iters",
            5,
            "--warmup",
            1,
            "--no-end-to-end",
            "--compare",
            "torch,onnx-naive,ultralytics",
            "--json",
            root / "u.json",
        ],
        capsys,
    )
    assert code == 0, err
    peers = {p["name"]: p for p in json.loads((root / "u.json").read_text())["compare"]}
    assert peers["torch"]["status"].startswith("unavailable: not registered")
    assert (
        peers["onnx-naive"]["status"]
        == "unavailable: give the plain export's file as onnx-naive=PATH.onnx"
    )
    assert "| torch | unavailable: not registered" in out


def test_a_peer_whose_import_fails_registers_as_unavailable(tiny, capsys, monkeypatch):
    root, model = tiny

    class BrokenEntryPoint:
        value = "glimmer.export.bench_peers:TorchPeer"

        def load(self):
            raise ImportError("libtorch_cpu.so: cannot open shared object file")

    monkeypatch.setattr(bench_peers, "_entry_points", lambda: {"torch": BrokenEntryPoint()})
    code, out, _ = bench(
        ["--model", model, "--iters", 3, "--warmup", 0, "--no-end-to-end", "--compare", "torch"],
        capsys,
    )
    assert code == 0
    assert (
        "| torch | unavailable: cannot import glimmer.export.bench_peers:TorchPeer: "
        "ImportError: libtorch_cpu.so" in out
    )


def test_torch_and_naive_onnx_peers_timed_on_the_same_input(tiny, capsys, monkeypatch):
    from glimmer.export.bench_peers import TorchPeer, UltralyticsPeer

    root, model = tiny
    monkeypatch.setattr(bench_peers, "_entry_points", lambda: {})
    monkeypatch.setitem(bench_peers.BUILTIN, "torch", TorchPeer)
    monkeypatch.setitem(bench_peers.BUILTIN, "ultralytics", UltralyticsPeer)
    code, out, err = bench(
        [
            "--model",
            model,
            "--iters",
            8,
            "--warmup",
            1,
            "--threads",
            1,
            "--no-end-to-end",
            "--compare",
            f"torch,onnx-naive={model},ultralytics",
            "--json",
            root / "c.json",
            "--plot",
            root / "c.png",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((root / "c.json").read_text())
    peers = {p["name"]: p for p in report["compare"]}
    for name in ("torch", "onnx-naive"):
        assert peers[name]["status"] == "ok" and len(peers[name]["samples_ms"]) == 8
        ratio = (
            peers[name]["latency_ms"]["median_ms"] / report["model_only"]["latency_ms"]["median_ms"]
        )
        assert peers[name]["ratio_to_glimmer"] == pytest.approx(ratio, rel=1e-2)
    assert "rebuilt from extra.config" in peers["torch"]["label"]
    assert (
        peers["ultralytics"]["status"]
        == "unavailable: the ultralytics predictor is compared for detectors only"
    )
    assert "x |" in out


def test_ultralytics_predictor_peer_on_a_detector(tmp_path, capsys, monkeypatch):
    # the peer times ultralytics' own predictor, absent from the runtime-only Python 3.8 suite
    pytest.importorskip("ultralytics")
    from glimmer.export.bench_peers import UltralyticsPeer

    monkeypatch.setattr(bench_peers, "_entry_points", lambda: {})
    monkeypatch.setitem(bench_peers.BUILTIN, "ultralytics", UltralyticsPeer)
    head = np.zeros((1, 6, 2), np.float32)
    head[0, :, 0] = [20, 20, 16, 16, 0.9, 0.0]
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    code, out, err = bench(
        [
            "--model",
            model,
            "--iters",
            5,
            "--warmup",
            1,
            "--no-end-to-end",
            "--compare",
            "ultralytics",
            "--json",
            tmp_path / "d.json",
        ],
        capsys,
    )
    assert code == 0, err
    report = json.loads((tmp_path / "d.json").read_text())
    peer = report["compare"][0]
    assert peer["status"] == "ok" and peer["scope"] == "frame" and len(peer["samples_ms"]) == 5
    assert report["frame_sequential"]["latency_ms"]["count"] == 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--compare", "toch"], "--compare: unknown peer 'toch' (did you mean 'torch'?)"),
        (["--iters", "0"], "--iters must be at least 1, got 0"),
        (["--source", "nowhere.mp4"], "nowhere.mp4"),
    ],
)
def test_bad_flags_are_one_error_line(tiny, capsys, argv, message):
    _, model = tiny
    code, out, err = bench(["--model", model, *argv], capsys)
    lines = err.strip().splitlines()
    assert (
        code == 1
        and len(lines) == 1
        and lines[0].startswith("glimmer-bench: error: ")
        and message in lines[0]
    )


def test_fixed_batch_mismatch_is_refused(tmp_path, capsys):
    head = np.zeros((1, 6, 1), np.float32)
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    code, _, err = bench(["--model", model, "--batch", 4], capsys)
    assert code == 1 and "--batch 4: the model has a fixed batch of 1" in err


def test_bench_and_check_modules_stay_on_the_runtime_floor():
    """Importing them (and discovering peers) pulls in no torch, ultralytics or upper layer."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import glimmer.runtime.tools.bench, glimmer.runtime.tools.check, "
        "glimmer.runtime.tools.regression\n"
        "import glimmer.runtime.tools.evaluate, glimmer.runtime.tools.baseline, "
        "glimmer.runtime.tools.peers as p\n"
        "p.discover()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ultralytics') or\n"
        "             m.startswith(('glimmer.export', 'glimmer.models', 'glimmer.train', "
        "'glimmer.calibration')))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_outputs_are_checked_before_the_model_loads_and_write_failures_are_one_line(
    tmp_path, capsys, monkeypatch
):
    """--json / --plot on the model or the source, or with each other, are refused before any
    timing; a write that fails (a full disk) is one line, not a traceback."""
    import errno
    import os

    from glimmer.runtime.tools import bench as bench_mod

    head = np.zeros((1, 6, 1), np.float32)
    model = fixed_detector(tmp_path / "det.onnx", head, ["car", "person"])
    before = model.read_bytes()
    for argv, message in (
        (["--json", model], f"--json {model} is the --model {model}"),
        (["--plot", model], f"--plot {model} is the --model {model}"),
        (
            ["--json", tmp_path / "r.json", "--plot", tmp_path / "r.json"],
            f"--plot {tmp_path / 'r.json'} and --json {tmp_path / 'r.json'} are the same file",
        ),
        (["--json", tmp_path], f"--json {tmp_path}: is a folder"),
    ):
        code, out, err = bench(["--model", model, *argv], capsys)
        assert code == 1 and out == "" and err.startswith("glimmer-bench: error: "), err
        assert message in err and len(err.strip().splitlines()) == 1
    assert model.read_bytes() == before

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(bench_mod, "atomic_write_text", full)
    target = tmp_path / "r.json"
    code, out, err = bench(
        ["--model", model, "--iters", 3, "--warmup", 0, "--json", target], capsys
    )
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"glimmer-bench: error: --json {target}: cannot write: No space left on device"
    )
