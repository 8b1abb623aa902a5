"""export-report.json: what glimmer-export made, and the evidence that it is right.

One entry per artifact with path, size, sha256, op counts, agreement with PyTorch (max abs
difference, top-1 or box/score agreement) and ONNX Runtime CPU latency; plus the dilation-lowering
choice with both timings, INT8 calibration and accuracy, and what happened about TensorRT engines.
Written atomically, so a reader never sees half a report.
"""

import datetime
import json
import platform
from pathlib import Path
from typing import Any, Dict, Optional

import onnx

from glimmer.runtime.core.files import atomic_write_text, sha256_file

from .onnx_export import op_histogram, unsupported_ops

REPORT_NAME = "export-report.json"


def artifact_entry(
    path: Path,
    kind: str,
    model: Optional[onnx.ModelProto] = None,
    verification: Optional[Dict[str, Any]] = None,
    latency: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Describe one written file."""
    path = Path(path)
    entry: Dict[str, Any] = {
        "path": str(path),
        "kind": kind,
        "size_bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }
    if model is not None:
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
