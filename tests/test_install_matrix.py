"""The install matrix of docs/install.md, checked with pip's resolver: each row's extras with its
constraints file, for the row's Python and platform, from the index's wheels alone. Nothing here is
a Jetson, a GPU or TensorRT: this proves that the pins exist and fit together, not that they run.

Two limits of `pip install --dry-run --python-version --platform`, and how this works around them:

- pip evaluates environment markers for the interpreter running pip, not for the target
  (https://github.com/pypa/pip/issues/11664), so our own requirements are read from pyproject.toml
  and their markers evaluated here for the target (the project itself is not handed to pip).
  Markers inside our dependencies' own requirements are still evaluated by pip for this machine.
- PyPI's tensorrt packages are source-only stubs that fetch NVIDIA's wheels when built, so they
  cannot resolve with --only-binary: their pins are checked against the extra's range (offline) and
  for existence on the index instead.

The resolver tests need the package index (PyPI, or PIP_INDEX_URL): they are marked slow. pip's
config files are ignored so that a machine's local mirrors or constraints cannot change the answer.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Never in an install without the export/train extras; on a Jetson, never TensorRT, OpenCV or a
# GPU ONNX Runtime from pip either (JetPack's own builds, or NVIDIA's Jetson wheel).
NEVER = {"torch", "torchvision", "onnx", "onnxscript", "ultralytics"}
NEVER_ON_JETSON = {"opencv-python", "opencv-python-headless", "opencv-contrib-python"}
NEVER_ON_JETSON |= {"onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13"}


@dataclass(frozen=True)
class Row:
    name: str
    python: str
    machine: str
    glibc: int  # the newest manylinux_2_<glibc> tag the target accepts
    extras: Tuple[str, ...]
    constraints: Optional[str]
    jetson: bool = False


ROWS = [
    # JetPack 5.1: Ubuntu 20.04 (glibc 2.31), Python 3.8; JetPack 6: Ubuntu 22.04 (2.35), 3.10
    Row(
        "jetpack5",
        "3.8",
        "aarch64",
        31,
        ("jetson", "ort", "check", "mavlink", "mqtt"),
        "jetpack5.txt",
        True,
    ),
    Row("jetpack6", "3.10", "aarch64", 35, ("jetson", "ort", "check"), "jetpack6.txt", True),
    Row("x86-pascal", "3.10", "x86_64", 35, ("trt-pascal", "ort", "check"), "x86-pascal.txt"),
    Row("x86", "3.11", "x86_64", 35, ("trt-x86", "ort-gpu", "check"), "x86.txt"),
    Row("cpu", "3.11", "x86_64", 35, ("ort", "check"), "x86.txt"),
    # The published requirements alone must keep JetPack 5 below NumPy 1.24.
    Row("jetpack5-unpinned", "3.8", "aarch64", 31, ("jetson", "ort", "check"), None, True),
]
PINNED = [r for r in ROWS if r.constraints]


def environment(python: str, machine: str, system: str = "Linux") -> Dict[str, str]:
    platform = {"Linux": "linux", "Windows": "win32", "Darwin": "darwin"}[system]
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": python,
        "python_full_version": python + ".0",
        "platform_machine": machine,
        "platform_system": system,
        "sys_platform": platform,
        "os_name": "nt" if system == "Windows" else "posix",
    }


def requirements(extras, env) -> List[Requirement]:
    """Our requirements for the runtime set plus ``extras`` (self-references expanded), keeping
    those whose marker holds in ``env``; markers removed."""
    out, todo, seen = [], [None, *extras], set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        group = (
            PYPROJECT["dependencies"]
            if extra is None
            else PYPROJECT["optional-dependencies"][extra]
        )
        for line in group:
            req = Requirement(line)
            if canonicalize_name(req.name) == canonicalize_name(PYPROJECT["name"]):
                todo += sorted(req.extras)
            elif req.marker is None or req.marker.evaluate(dict(env, extra="")):
                req.marker = None
                out.append(req)
    return out


def pins(name: str) -> Dict[str, str]:
    out = {}
    for line in (ROOT / "constraints" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            specs = list(req.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", (
                f"{name}: not an exact pin: {line}"
            )
            out[canonicalize_name(req.name)] = specs[0].version
    return out


def is_tensorrt(req: Requirement) -> bool:
    return canonicalize_name(req.name).startswith("tensorrt")


def pip_env() -> Dict[str, str]:
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY"}
    keep |= {"PIP_CACHE_DIR", "PIP_DEFAULT_TIMEOUT", "PIP_RETRIES"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=pip_env(),
    )


def test_markers_keep_opencv_and_onnxruntime_everywhere_but_a_jetson():
    for system, machine in [("Linux", "x86_64"), ("Windows", "AMD64"), ("Darwin", "arm64")]:
        env = environment("3.11", machine, system)
        names = {r.name for r in requirements(("ort-gpu",), env)}
        assert {"opencv-python-headless", "onnxruntime-gpu"} <= names, (system, machine)
        names = {r.name for r in requirements(("ort", "trt-x86"), env)}
        assert {"onnxruntime", "tensorrt-cu12", "cuda-python"} <= names, (system, machine)
    jetson = environment("3.10", "aarch64")
    names = {r.name for r in requirements(("ort-gpu", "trt-x86", "trt-pascal"), jetson)}
    assert names.isdisjoint(NEVER_ON_JETSON), names
    assert "onnxruntime" in {r.name for r in requirements(("ort",), jetson)}


def test_jetson_extra_matches_the_jetpack_cuda_major():
    # Python 3.8 is JetPack 5 (CUDA 11.4), 3.10 JetPack 6 (CUDA 12.x)
    for python, ok, wrong in [("3.8", "11.8.2", "12.2.1"), ("3.10", "12.2.1", "11.8.2")]:
        reqs = requirements(("jetson",), environment(python, "aarch64"))
        (req,) = [r for r in reqs if r.name == "cuda-python"]
        assert req.specifier.contains(ok) and not req.specifier.contains(wrong), (python, req)


def test_onnxruntime_is_an_extra_and_dev_takes_the_cpu_build():
    assert not any("onnxruntime" in r for r in PYPROJECT["dependencies"])
    dev = {r.name for r in requirements(("dev",), environment("3.11", "x86_64"))}
    assert "onnxruntime" in dev and "onnxruntime-gpu" not in dev


@pytest.mark.parametrize("row", PINNED, ids=lambda r: r.name)
def test_every_requirement_of_a_row_has_an_exact_pin_within_its_range(row):
    pinned = pins(row.constraints)
    for req in requirements(row.extras, environment(row.python, row.machine)):
        name = canonicalize_name(req.name)
        assert name in pinned, f"{row.constraints} lacks a pin for {req}"
        assert req.specifier.contains(pinned[name], prereleases=True), (str(req), pinned[name])


@pytest.mark.slow
@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_row_resolves_from_wheels(row, tmp_path):
    reqs = requirements(row.extras, environment(row.python, row.machine))
    platforms = [f"manylinux_2_{y}_{row.machine}" for y in range(17, row.glibc + 1)]
    platforms.append(f"manylinux2014_{row.machine}")
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--only-binary=:all:"]
    args += [f"--platform={p}" for p in platforms]
    args += ["--python-version", row.python, "--implementation", "cp"]
    args += ["--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json")]
    if row.constraints:
        args += ["-c", str(ROOT / "constraints" / row.constraints)]
    done = pip(*args, *[str(r) for r in reqs if not is_tensorrt(r)])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    got = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
        for i in report["install"]
    }

    assert not NEVER & set(got), sorted(NEVER & set(got))
    if row.jetson:
        assert not NEVER_ON_JETSON & set(got), sorted(NEVER_ON_JETSON & set(got))
        limit = "1.24" if row.python == "3.8" else "2"  # np.bool (TensorRT 8.5); NumPy 1.x ABI
        assert Requirement(f"numpy<{limit}").specifier.contains(got["numpy"]), got["numpy"]
    if row.constraints:
        pinned = pins(row.constraints)
        wrong = {n: (v, pinned[n]) for n, v in got.items() if n in pinned and v != pinned[n]}
        assert not wrong, wrong


@pytest.mark.slow
@pytest.mark.parametrize(
    "row",
    [
        r
        for r in PINNED
        if any(is_tensorrt(q) for q in requirements(r.extras, environment(r.python, r.machine)))
    ],
    ids=lambda r: r.name,
)
def test_tensorrt_pin_is_on_the_index(row):
    pinned = pins(row.constraints)
    for req in requirements(row.extras, environment(row.python, row.machine)):
        if is_tensorrt(req):
            done = pip("index", "versions", req.name)
            assert done.returncode == 0, done.stderr[-2000:]
            available = done.stdout.split("Available versions:", 1)[1].splitlines()[0]
            assert pinned[canonicalize_name(req.name)] in [v.strip() for v in available.split(",")]
