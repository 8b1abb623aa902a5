"""export-report.json: what glimmer-export made, and the evidence that it is right.

One entry per artifact with path, size, sha256, op counts, agreement with PyTorch (max abs
difference, top-1 or box/score agreement) and ONNX Runtime CPU latency; plus the dilation-lowering
choice with both timings, INT8 calibration and accuracy, and what happened about TensorRT engines.
Written atomically, so a reader never sees half a report.

An export's files are made in a hidden staging folder inside the output folder, under their final
names, and moved into place together only once every one of them is complete (:class:`Staging`): a
failure at any step (a check, INT8, an engine build) leaves the previous export untouched.
"""

import datetime
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from glimmer.runtime.core.files import atomic_write_text, sha256_file

REPORT_NAME = "export-report.json"


def artifact_entry(
    path: Path,
    kind: str,
    model: Optional[Any] = None,
    verification: Optional[Dict[str, Any]] = None,
    latency: Optional[Dict[str, Any]] = None,
    *,
    final_path: Optional[Path] = None,
) -> Dict[str, Any]:
    """Describe one written file (``final_path``: where it will live once a staged file is
    committed)."""
    path = Path(path)
    entry: Dict[str, Any] = {
        "path": str(final_path or path),
        "kind": kind,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    if model is not None:  # an onnx.ModelProto; onnx is imported only then (the drone has none)
        from .onnx_export import op_histogram, unsupported_ops

        entry["opset"] = max(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None
        )
        entry["op_counts"] = op_histogram(model)
        entry["nodes"] = len(model.graph.node)
        entry["ops_outside_tensorrt_8_4"] = unsupported_ops(model)
    if verification is not None:
        entry["vs_pytorch"] = verification
    if latency is not None:
        entry["onnxruntime_cpu_latency"] = latency
    return entry


def machine() -> Dict[str, Any]:
    import onnxruntime

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def write_report(out_dir: Path, report: Dict[str, Any]) -> Path:
    """Write ``out_dir/export-report.json`` atomically and return its path."""
    report = dict(report)
    report.setdefault(
        "created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    report.setdefault("machine", machine())
    path = Path(out_dir) / REPORT_NAME
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    return path


class Staging:
    """A hidden folder inside ``out`` where an export's files are written under their final names;
    :meth:`commit` moves them into ``out`` (one ``os.replace`` each, same filesystem, report last),
    and leaving the ``with`` removes whatever was not committed."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.dir: Optional[Path] = None

    def __enter__(self) -> "Staging":
        self.out.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=".glimmer-export-", dir=str(self.out)))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.dir is not None:
            shutil.rmtree(str(self.dir), ignore_errors=True)
            self.dir = None

    def path(self, name: str) -> Path:
        """Where to write the artifact that will be ``out/name``."""
        assert self.dir is not None, "Staging used outside its with-block"
        return self.dir / name

    def final(self, staged: Path) -> Path:
        """``out/NAME`` for a staged ``NAME``."""
        return self.out / Path(staged).name

    def commit(self) -> List[Path]:
        """Move every staged file into ``out``, the report last; returns the final paths."""
        assert self.dir is not None, "Staging used outside its with-block"
        staged = sorted(self.dir.iterdir(), key=lambda p: (p.name == REPORT_NAME, p.name))
        moved = []
        for path in staged:
            os.replace(str(path), str(self.out / path.name))
            moved.append(self.out / path.name)
        return moved
