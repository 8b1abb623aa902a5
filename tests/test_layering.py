"""The layering, enforced: imports only point down, no module cycles, and the runtime (what ships to
the drone) imports without torch, onnx or ultralytics.

Every import statement counts, those inside functions too: a lazy import is still a dependency.
"""

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "runtime": "runtime",
    "calibration": "calibration",
    "export": "export",
    "models": "models",
    "train": "train",
}
#: which top-level packages each one may import (models sits beside calibration/export, on the
#: runtime)
ALLOWED = {
    "runtime": {"runtime"},
    "calibration": {"runtime", "calibration"},
    "models": {"runtime", "models"},
    "export": {"runtime", "calibration", "models", "export"},
    "train": {"runtime", "calibration", "models", "export", "train"},
}
#: inside the runtime, a subpackage may import only those at its own level or below
RUNTIME_LEVELS = {"core": 0, "backends": 1, "stream": 2, "tools": 3, "api": 4}


def modules() -> Dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join(("glimmer", package) + parts)] = path
    return found


def imports(name: str, path: Path) -> Set[str]:
    """Every glimmer module ``name`` imports (absolute or relative, at any depth of the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("glimmer."))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.startswith("glimmer."):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
    return out


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {
        name: {m for m in imports(name, path) if m in known and m != name}
        for name, path in known.items()
    }


def test_the_graph_is_read():
    edges = graph()
    assert len(edges) > 60 and sum(map(len, edges.values())) > 150
    assert "glimmer.runtime.core.errors" in edges["glimmer.runtime.core.console"]
    # a lazy import inside a function counts
    assert "glimmer.runtime.backends.ort.runner" in edges["glimmer.runtime.backends.factory"]


def test_imports_point_down():
    wrong = []
    for name, targets in graph().items():
        layer = name.split(".")[1]
        for target in targets:
            if target.split(".")[1] not in ALLOWED[layer]:
                wrong.append(f"{name} -> {target}")
            elif layer == "runtime" == target.split(".")[1] and len(name.split(".")) > 2:
                level = RUNTIME_LEVELS.get(name.split(".")[2], 0)
                if (
                    len(target.split(".")) > 2
                    and RUNTIME_LEVELS.get(target.split(".")[2], 0) > level
                ):
                    wrong.append(
                        f"{name} -> {target} "
                        "(runtime subpackages: core < backends < stream < tools)"
                    )
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = graph()
    state: Dict[str, int] = {}
    cycles = []

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert not cycles, "\n".join(cycles)


def test_every_runtime_module_imports_without_torch_onnx_or_ultralytics():
    names = sorted(n for n in modules() if n.startswith("glimmer.runtime"))
    code = (
        "import importlib, sys\n"
        "for blocked in ('torch', 'torchvision', 'onnx', 'onnxscript', 'ultralytics'):\n"
        "    sys.modules[blocked] = None\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-2000:]


def test_no_test_module_imports_another():
    """Shared test code lives in tests/helpers or a conftest.py, never in another test module."""
    tests = ROOT / "tests"
    names = {p.stem for p in tests.rglob("test_*.py")}
    wrong = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            )
            wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in found if name in names]
    assert not wrong, "\n".join(wrong)
