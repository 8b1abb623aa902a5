"""The on-device commands in the drone's install: Python 3.8, the runtime set only (numpy, OpenCV,
ONNX Runtime, tomli, tomlkit < 0.14; no torch, no onnx package), run as a user would run them:
glimmer-run, glimmer-bench, glimmer-check (--update-baseline too), the engine step
``glimmer-export NAME.onnx --fp16``, glimmer-doctor and the Python API. No TensorRT there: the
engine step and glimmer-doctor say so in one line.

``make test`` builds that install in ``.venv-drone`` from pyenv's Python 3.8 when the machine has
one (JetPack 5's interpreter) and points ``GLIMMER_DRONE_PYTHON`` at it; without it these tests are
skipped and say why.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from glimmer.export.api import export
from glimmer.models.checkpoint import save_checkpoint
from glimmer.models.glimmernet import GlimmerNet
from glimmer.train.synthetic import CLASSES, make_scene_dataset

DRONE = os.environ.get("GLIMMER_DRONE_PYTHON")
pytestmark = pytest.mark.skipif(
    not DRONE,
    reason="no drone-like install: GLIMMER_DRONE_PYTHON unset "
    "(make test sets it when pyenv has Python 3.8)",
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("drone")
    torch.manual_seed(0)
    net = GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1))
    save_checkpoint(root / "tiny.pt", net, "glimmernet", CLASSES, (64, 64))
    make_scene_dataset(root / "data", {"Train": 4, "Val": 2}, size=64)
    data = root / "data"
    export(
        root / "tiny.pt",
        out=root,
        int8=True,
        calib=data / "Train",
        calib_count=8,
        val=data / "Val",
        dilation_mode="aligned",
        latency_runs=3,
        log=lambda line: None,
    )
    return root


def drone(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args),
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=""),
    )


def tool(name: str) -> str:
    return str(Path(DRONE).parent / name)


def last_line(done: subprocess.CompletedProcess) -> str:
    """The one error line a command ends with; never a traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


def python_says(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return drone(DRONE, "-c", code, cwd=cwd)


def test_the_interpreter_is_the_drones(artifacts):
    done = drone(
        DRONE,
        "-c",
        "import sys, importlib.util as u; print(sys.version_info[:2], "
        "[m for m in ('torch', 'onnx', 'ultralytics') if u.find_spec(m)])",
        cwd=artifacts,
    )
    assert done.stdout.strip() == "(3, 8) []", done.stderr


@pytest.mark.parametrize("model", ["tiny.onnx", "tiny.int8.onnx"])
def test_glimmer_run_and_bench_on_python38(artifacts, model):
    run = drone(
        tool("glimmer-run"),
        "--model",
        model,
        "--source",
        "data/Val/Fire",
        "--headless",
        "--report",
        f"{model}.report.json",
        cwd=artifacts,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "frames 2 " in run.stdout and (artifacts / f"{model}.report.json").is_file()
    bench = drone(tool("glimmer-bench"), "--model", model, "--iters", "5", cwd=artifacts)
    assert bench.returncode == 0 and "model-only" in bench.stdout, bench.stderr[-2000:]


def test_glimmer_check_and_the_python_api_on_python38(artifacts):
    (artifacts / "deploy.toml").write_text(
        '[checks.int8]\nmodel = "tiny.int8.onnx"\nreference = "tiny.onnx"\ndata = "data/Val"\n'
        "max_drop = 1.0\n"
    )
    check = drone(tool("glimmer-check"), "--config", "deploy.toml", cwd=artifacts)
    assert check.returncode == 0 and "PASS" in check.stdout, check.stdout + check.stderr[-2000:]
    code = (
        "import os, glimmer\n"
        "frame = 'data/Val/Fire/' + sorted(os.listdir('data/Val/Fire'))[0]\n"
        "with glimmer.load('tiny.int8.onnx') as m:\n"
        "    print(m(frame)['name'])\n"
        "print(len(list(glimmer.run('data/Val/Fire', 'tiny.onnx'))))\n"
    )
    api = drone(DRONE, "-c", code, cwd=artifacts)
    assert api.returncode == 0, api.stderr[-2000:]
    label, frames = api.stdout.split()
    assert label in CLASSES and frames == "2"


def test_a_user_mistake_is_one_line_on_python38(artifacts):
    done = drone(
        tool("glimmer-run"), "--model", "missing.onnx", "--source", "data/Val/Fire", cwd=artifacts
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("glimmer-run: error: ")


# -- the engine step: glimmer-export NAME.onnx imports only the runtime --------------------------
@pytest.mark.parametrize("argv", [["tiny.onnx", "--fp16"], ["tiny.int8.onnx", "--int8"]])
def test_the_engine_step_runs_in_the_runtime_only_install(artifacts, argv):
    done = drone(tool("glimmer-export"), *argv, cwd=artifacts)
    assert done.returncode == 1 and done.stdout == ""
    assert last_line(done).startswith(
        "glimmer-export: error: cannot build a TensorRT engine here: TensorRT is not installed"
    )
    assert not list(artifacts.glob("*.engine"))


def test_a_checkpoint_on_the_drone_names_the_export_extra(artifacts):
    done = drone(tool("glimmer-export"), "tiny.pt", cwd=artifacts)
    assert done.returncode == 1
    line = last_line(done)
    assert line.startswith("glimmer-export: error: tiny.pt: exporting a checkpoint needs the ")
    assert (
        "pip install 'glimmer-edge[export]'" in line and "glimmer-export NAME.onnx --fp16" in line
    )


# -- glimmer-check --update-baseline on Python 3.8's tomlkit ---------------------------------------
BASELINE = """\
# the drone's profile
[checks.acc]            # accuracy of the INT8 model
model = "tiny.int8.onnx"
data = "data/Val"
min_f1_weighted = 0.0   # floor

[checks.speed]
model = "tiny.onnx"
data = "data/Val/Fire"
frames = 4
min_fps = 0.01          # FPS floor
"""


def test_update_baseline_with_an_older_tomlkit_on_python38(artifacts):
    version = python_says("import tomlkit; print(tomlkit.__version__)", artifacts)
    assert version.returncode == 0, (
        "the drone install lacks tomlkit: make drone installs 'tomlkit<0.14' (the newest needs "
        "Python 3.9)"
    )
    assert tuple(int(v) for v in version.stdout.split(".")[:2]) < (0, 14), version.stdout
    path = artifacts / "baseline.toml"
    path.write_text(BASELINE)
    done = drone(
        tool("glimmer-check"),
        "--config",
        "baseline.toml",
        "--update-baseline",
        "--margin",
        "0.2",
        cwd=artifacts,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    acc = re.search(r"^baseline acc: min_f1_weighted = ([0-9.]+) ", done.stdout, re.M)
    fps = re.search(r"^baseline speed: min_fps = ([0-9.]+)", done.stdout, re.M)
    assert acc and fps, done.stdout
    after = path.read_text()
    # comments and layout kept, the bounds replaced, the speed check given this device
    assert after.startswith("# the drone's profile\n[checks.acc]            # accuracy of the")
    assert f"\nmin_f1_weighted = {acc.group(1)}   # floor\n" in after, after
    assert re.search(
        rf"^min_fps = {re.escape(fps.group(1))}          # FPS floor\ndevice = \"", after, re.M
    ), after


@pytest.mark.parametrize(
    "fake,message",
    [
        ("None", "--update-baseline needs tomlkit, which is not installed: "),
        (
            "types.SimpleNamespace(__version__='0.10.2')",
            "--update-baseline needs tomlkit >= 0.11, found 0.10.2: ",
        ),
    ],
)
def test_update_baseline_without_a_usable_tomlkit_is_one_line(artifacts, fake, message):
    (artifacts / "baseline.toml").write_text(BASELINE)
    code = (
        "import sys, types\n"
        f"sys.modules['tomlkit'] = {fake}\n"
        "from glimmer.runtime.core.console import run_cli\n"
        "from glimmer.runtime.tools.check import main\n"
        "sys.exit(run_cli('glimmer-check', main, ['--config', 'baseline.toml', "
        "'--update-baseline']))\n"
    )
    done = python_says(code, artifacts)
    assert done.returncode == 1 and done.stdout == ""  # refused before measuring anything
    assert last_line(done) == (
        f"glimmer-check: error: {message}pip install 'glimmer-edge[check]', or just pip install "
        "'tomlkit>=0.11'"
    )


# -- glimmer-doctor ------------------------------------------------------------------------------
def doctor_command() -> list:
    """The console script, or the module where the install predates the entry point."""
    script = Path(tool("glimmer-doctor"))
    return [str(script)] if script.is_file() else [DRONE, "-m", "glimmer.runtime.tools.doctor"]


def test_glimmer_doctor_on_python38_without_tensorrt(artifacts):
    done = drone(*doctor_command(), "--out", "doc", "--iters", "5", "--warmup", "1", cwd=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    trt = [line for line in lines if line.startswith("TensorRT: not available (")]
    assert len(trt) == 1 and trt[0].endswith("): engine checks skipped"), done.stdout
    assert any(line.startswith("ONNX Runtime CPU: PASS vs PyTorch (recorded)") for line in lines)
    report = json.loads((artifacts / "doc" / "doctor.json").read_text())
    assert report["verdict"] == "pass" and report["tensorrt"]["ran"] is False
    assert report["platform"]["python"]["version"].startswith("3.8.")
    assert report["platform"]["numpy"].startswith("1.")
    assert report["onnxruntime"]["vs_recorded"]["passed"]  # PyTorch 2.x's outputs, ORT on 3.8
    assert (artifacts / "doc" / "doctor.md").read_text().startswith("# glimmer-doctor\n\n**PASS**")
    # an exported model instead of the reference: no recorded outputs, still a pass
    done = drone(
        *doctor_command(), "--model", "tiny.onnx", "--out", "doc2", "--iters", "3", cwd=artifacts
    )
    assert done.returncode == 0 and "ONNX Runtime CPU: ran (nothing to compare with)" in done.stdout


def test_glimmer_doctor_require_tensorrt_is_one_line_on_python38(artifacts):
    done = drone(
        *doctor_command(), "--out", "doc3", "--iters", "2", "--require-tensorrt", cwd=artifacts
    )
    assert done.returncode == 1
    assert last_line(done).startswith(
        "glimmer-doctor: error: --require-tensorrt: TensorRT is not available here (TensorRT is "
        "not installed"
    )
    assert json.loads((artifacts / "doc3" / "doctor.json").read_text())["verdict"] == "fail"
