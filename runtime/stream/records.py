"""What glimmer-run writes per frame, as data other programs read: JSON lines or CSV rows.

The keys follow ultralytics' ``Results.summary()`` (``name``, ``class`` as the numeric id,
``confidence``, ``box`` as ``x1 y1 x2 y2``), so code written against ``yolo predict`` output reads
ours. Every JSON line and the run report carry ``schema_version``; the JSON Schemas that define them
ship beside this module (``schemas/frame.schema.json``, ``schemas/report.schema.json``) and change
their major version only when a key changes meaning or goes away.

CSV is one row per detection (a frame without detections still gets one row, its detection columns
empty, so every frame is accounted for) or one row per classified frame.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

SCHEMA_VERSION = "1.0"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
FORMATS = ("jsonl", "csv")

CLASSIFY_COLUMNS = [
    "index",
    "timestamp",
    "file",
    "name",
    "class",
    "confidence",
    "alert_name",
    "alert_confidence",
    "alert_frames",
    "end_to_end_ms",
]
DETECT_COLUMNS = [
    "index",
    "timestamp",
    "file",
    "count",
    "name",
    "class",
    "confidence",
    "x1",
    "y1",
    "x2",
    "y2",
    "end_to_end_ms",
]


def frame_record(
    index: int,
    timestamp: float,
    prediction: Dict[str, Any],
    latency_ms: Dict[str, float],
    file: Optional[str] = None,
) -> Dict[str, Any]:
    """One frame's JSON object (``schemas/frame.schema.json``)."""
    record: Dict[str, Any] = {"schema_version": SCHEMA_VERSION, "index": index}
    if file is not None:
        record["file"] = file
    record["timestamp"] = round(timestamp, 6)
    record["latency_ms"] = {k: round(v, 3) for k, v in latency_ms.items()}
    record["predictions"] = prediction
    return record


def format_for(path: Path, requested: Optional[str]) -> str:
    """``requested`` if given, else from the file's suffix (``.csv``), else JSON lines."""
    if requested:
        return requested
    return "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"


def csv_columns(task: str) -> List[str]:
    return DETECT_COLUMNS if task == "detect" else CLASSIFY_COLUMNS


def csv_rows(record: Dict[str, Any]) -> List[List[Any]]:
    """The CSV rows of one frame record, in :func:`csv_columns` order."""
    pred = record["predictions"]
    head = [record["index"], record["timestamp"], record.get("file", "")]
    e2e = record["latency_ms"].get("end_to_end", "")
    if pred.get("task") == "detect":
        detections = pred.get("detections") or []
        head.append(len(detections))
        if not detections:
            return [head + ["", "", "", "", "", "", "", e2e]]
        return [
            head
            + [d["name"], d["class"], d["confidence"]]
            + [d["box"][k] for k in ("x1", "y1", "x2", "y2")]
            + [e2e]
            for d in detections
        ]
    alert = pred.get("alert") or {}
    return [
        head
        + [pred["name"], pred["class"], pred["confidence"]]
        + [alert.get("name", ""), alert.get("confidence", ""), alert.get("frames", "")]
        + [e2e]
    ]


def load_schema(name: str) -> Dict[str, Any]:
    """``frame`` or ``report``: the JSON Schema shipped with the runtime."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))
