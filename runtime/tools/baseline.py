"""``glimmer-check --update-baseline``: measured values written back into deploy.toml, for this
device.

Each bound of a measured check becomes the measured value with the user's margin of slack in the
safe direction (``--margin 0.1``: ``min_fps = 0.9 * measured``, ``max_p99_ms = 1.1 * measured``),
rounded outwards so the rounding never tightens it. A speed check's ``device`` is set to this
machine (speed belongs to the hardware); an accuracy check gets one only if it already had one
(its figures belong to the model file, the same on every machine that runs it).
``max_drop`` is a tolerance the user chooses, not a measurement, and is left as written.

The file is edited with tomlkit, which round-trips TOML: comments, blank lines, key order and
the formatting of every untouched value stay byte-for-byte; the result is written atomically, to
the file itself when deploy.toml is a symlink (the link stays a link, the file keeps its mode).
tomlkit is imported only here (the ``check`` extra), and any tomlkit from 0.11 works: Python 3.8
(JetPack 5) cannot install the newest.
"""

import math
import os
from pathlib import Path
from typing import Any, Dict, List

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_edit_text
from glimmer.runtime.core.outputs import preflight
from glimmer.runtime.tools.regression import METRIC, CheckResult

#: decimals kept per measured metric
DECIMALS = {"fps": 1, "p99_ms": 2, "accuracy": 4, "f1_weighted": 4, "map50": 4, "map50_95": 4}
#: the oldest tomlkit this module is tested with
TOMLKIT_MIN = (0, 11)
_TOMLKIT_HINT = "pip install 'glimmer-edge[check]', or just pip install 'tomlkit>=0.11'"


def require_tomlkit() -> Any:
    """The tomlkit module, or one GlimmerError naming the ``check`` extra (missing or too old)."""
    try:
        import tomlkit
    except ImportError:
        raise GlimmerError(
            f"--update-baseline needs tomlkit, which is not installed: {_TOMLKIT_HINT}"
        ) from None
    version = str(getattr(tomlkit, "__version__", "0"))
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        parts = TOMLKIT_MIN  # a development version: trust it
    if parts < TOMLKIT_MIN:
        raise GlimmerError(
            f"--update-baseline needs tomlkit >= 0.11, found {version}: {_TOMLKIT_HINT}"
        )
    return tomlkit


def check_writable(path: Path) -> None:
    """One line now, not after the measurements, when the file behind ``path`` cannot be
    replaced (a read-only file or folder)."""
    real = Path(os.path.realpath(str(path)))
    if not os.access(str(real), os.W_OK):
        raise GlimmerError(f"--update-baseline: {real} is read-only")
    preflight([("--update-baseline", real)], [])


def with_margin(key: str, measured: float, margin: float) -> float:
    """The new bound for ``key``: ``measured`` loosened by ``margin``, rounded outwards."""
    metric, direction = METRIC[key]
    scale = 10 ** DECIMALS.get(metric, 4)
    if direction == "min":
        return math.floor(measured * (1.0 - margin) * scale) / scale
    return math.ceil(measured * (1.0 + margin) * scale) / scale


def _set(table, key: str, value) -> None:
    """Replace a value in place (tomlkit keeps its comment), or add it after the last key, before
    the comments and blank lines that introduce the next table."""
    if key in table:
        table[key] = value
        return
    keys = list(table.keys())
    container = getattr(table, "value", None)
    if keys and hasattr(container, "_insert_after"):
        container._insert_after(keys[-1], key, value)
    else:
        table[key] = value


def update_baseline(
    path: Path, results: List[CheckResult], margin: float, device: str
) -> Dict[str, Dict[str, float]]:
    """Write new bounds for every measured check; returns {check: {key: new value}}."""
    tomlkit = require_tomlkit()
    if not 0.0 <= margin < 1.0:
        raise GlimmerError(f"--margin must be in [0, 1), got {margin}")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        from glimmer.runtime.tools.config import not_utf8

        raise GlimmerError(not_utf8(Path(path), exc)) from None
    except OSError as exc:
        raise GlimmerError(f"--config {path}: cannot read: {exc.strerror or exc}") from None
    doc = tomlkit.parse(text)
    changes: Dict[str, Dict[str, float]] = {}
    for result in results:
        if result.status in ("ERROR", "SKIPPED") or not result.measured:
            continue
        table = doc["checks"][result.check.name]
        new: Dict[str, float] = {}
        for key in result.check.bounds:
            if key == "max_drop":
                continue
            new[key] = with_margin(key, result.measured[METRIC[key][0]], margin)
            _set(table, key, new[key])
        if result.check.kind == "speed" or result.check.device is not None:
            _set(table, "device", device)  # speed belongs to the machine; accuracy to the model
        changes[result.check.name] = new
    if changes:
        try:
            atomic_edit_text(path, tomlkit.dumps(doc))
        except OSError as exc:
            raise GlimmerError(
                f"--update-baseline: cannot write {path}: {exc.strerror or exc}"
            ) from None
    return changes
