"""Helpers shared by the compression tests and their conftest (a plain module, not a test)."""

from pathlib import Path
from typing import Dict, List, NamedTuple


class InterruptedRun(NamedTuple):
    out: Path
    argv: List[str]
    mtimes: Dict[str, int]  # file (relative to out) -> mtime_ns, between the two runs
    distill_csv: str  # the interrupted distillation's results.csv, between the two runs


def pipeline_argv(data: Path, out: Path, epochs: int = 2) -> List[str]:
    return [
        "pipeline",
        "--model",
        "yolov8n.yaml",
        "--data",
        str(data),
        "--epochs",
        str(epochs),
        "--imgsz",
        "64",
        "--batch",
        "4",
        "--workers",
        "0",
        "--out",
        str(out),
    ]


def mtimes(out: Path) -> Dict[str, int]:
    return {
        str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()
    }
