"""Glimmer Edge: from a trained checkpoint to live camera inference on a drone's companion computer.

Subpackages, lowest layer first (imports only point down):
``runtime`` (no torch, Python 3.8) <- ``calibration`` <- ``export`` <- ``train``; ``models`` is
torch only.

The Python API, imported on first use so that ``import glimmer`` loads nothing heavy and only
``export`` needs torch:

- ``glimmer.load(path, backend="auto", ...)`` -> a :class:`~glimmer.runtime.api.Model`:
  ``model(frame)``;
- ``glimmer.run(source, model, ...)`` -> per-frame results over a file, folder or camera;
- ``glimmer.bench(model, ...)`` -> glimmer-bench's report;
- ``glimmer.export(checkpoint, **settings)`` -> glimmer-export's report
  (settings: :class:`~glimmer.export.api.ExportSettings`).
"""

import importlib
import sys
import types
from typing import Any, List

__version__ = "0.1.0"

_LAZY = {
    "load": "glimmer.runtime.api",
    "run": "glimmer.runtime.api",
    "bench": "glimmer.runtime.api",
    "Model": "glimmer.runtime.api",
    "ExportSettings": "glimmer.export.api",
}


class _ExportPackage(types.ModuleType):
    """``glimmer.export``, the subpackage, which called is the export."""

    def __call__(self, checkpoint: Any, **settings: Any) -> Any:
        """Export ``checkpoint`` with ``settings`` (ExportSettings fields) -> the report dict."""
        return importlib.import_module("glimmer.export.api").export(checkpoint, **settings)


class _Glimmer(types.ModuleType):
    """Importing a submodule sets it as an attribute of its parent, so a function named ``export``
    would be replaced by the subpackage on first import: the subpackage is made callable instead,
    whenever and however it is imported, without importing it (or torch) here."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "export" and isinstance(value, types.ModuleType):
            value.__class__ = _ExportPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Glimmer


def __getattr__(name: str) -> Any:
    if name == "export":
        importlib.import_module("glimmer.export")  # its __init__ is empty: no torch until called
        return globals()["export"]
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'glimmer' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY) | {"export"})
