"""The on-device commands in the drone's install: Python 3.8, the runtime set only (numpy, OpenCV,
ONNX Runtime; no torch, no onnx package), run as a user would run them.

``make test`` builds that install in ``.venv-drone`` from pyenv's Python 3.8 when the machine has
one (JetPack 5's interpreter) and points ``GLIMMER_DRONE_PYTHON`` at it; without it these tests are
skipped and say why.
"""

import os
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
        "    print(m(frame)['label'])\n"
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
