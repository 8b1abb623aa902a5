"""Every package pyproject.toml asks for is used: an unused requirement costs every install (on
the drone too) and hides which code needs what. Tools are used by the Makefile, libraries by an
import."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# distribution name -> the module it is imported as (or the command the Makefile runs)
IMPORT_NAMES = {
    "opencv-python-headless": "cv2",
    "onnxruntime-gpu": "onnxruntime",
    "tensorrt-cu12": "tensorrt",
    "cuda-python": "cuda",
    "faster-coco-eval": "faster_coco_eval",
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "paho-mqtt": "paho",
    "pyserial": "serial",
}
TOOLS = {"ruff", "vermin"}
# Pinned for what another requirement pulls in, not imported by us: ultralytics needs torchvision,
# and only the torchvision built for the pinned torch imports beside it; its multi-GPU workers need
# cloudpickle, which it would otherwise try to pip-install at run time.
PINS = {"torchvision", "cloudpickle"}


def _requirements():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    for group, lines in groups.items():
        for line in lines:
            name = re.match(r"[A-Za-z0-9_.\-]+", line).group(0).lower()
            if name != "glimmer-edge":  # an extra of our own
                yield group, name


def _imported_modules():
    found = set()
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in ("build", "demo") for part in path.parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and (
                getattr(node.func, "id", "") == "import_module"
                or getattr(node.func, "attr", "") in ("import_module", "importorskip")
            ):
                if node.args and isinstance(node.args[0], ast.Constant):
                    found.add(str(node.args[0].value).split(".")[0])
    return found


def test_every_requirement_is_imported_or_run():
    imported = _imported_modules()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    unused = []
    for group, name in _requirements():
        if name in PINS:
            continue
        if name in TOOLS:
            if f"/{name} " not in makefile:
                unused.append(f"{group}: {name} (no Makefile use)")
            continue
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        if module not in imported:
            unused.append(f"{group}: {name} (nothing imports {module})")
    assert not unused, "requirements nothing uses: " + "; ".join(unused)
