"""Measure a compression stage: params, GFLOPs, mAP (ultralytics val), ONNX Runtime CPU latency.

The pipeline's summary (one row per stage) is printed as a markdown table and written as JSON and
a PNG chart. Each stage is exported to ONNX by glimmer-export's own path
(:func:`glimmer.export.api.export`: Conv+BN fused, Detect head in export mode, torch.onnx, our
metadata, checked against PyTorch) and timed in a session set up as glimmer-run sets it, so the
latency column is what the deployed file costs.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from glimmer.models.yolo import offline, yolo
from glimmer.runtime.core.files import atomic_path, atomic_write_text

from .yolo import count_params, gflops, load_detector

COLUMNS = (
    ("stage", "stage"),
    ("params", "params"),
    ("gflops", "GFLOPs"),
    ("map50", "mAP50"),
    ("map50_95", "mAP50-95"),
    ("ort_ms", "ORT CPU ms"),
)


def validate(weights: Path, data: Path, imgsz: int, batch: int, out: Path) -> Dict[str, float]:
    """mAP50 and mAP50-95 on the dataset's val split, via ultralytics' DetectionValidator."""
    with offline():
        metrics = yolo(weights).val(
            data=str(data),
            imgsz=imgsz,
            batch=batch,
            device="cpu",
            workers=0,
            plots=False,
            project=str(out.parent.resolve()),
            name=out.name,
            exist_ok=True,
            verbose=False,
        )
    return {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}


def write_onnx(weights: Path, imgsz: int, batch: int = 1) -> Path:
    """``<weights>.onnx`` beside the .pt, made by glimmer-export itself (checked against
    PyTorch)."""
    import shutil
    import tempfile

    from glimmer.export.api import export

    weights = Path(weights)
    path = weights.with_suffix(".onnx")
    with tempfile.TemporaryDirectory(prefix="glimmer-compress-") as tmp:
        export(
            weights,
            out=tmp,
            name=weights.stem,
            img_size=imgsz,
            batch=batch,
            latency_runs=1,
            log=lambda _line: None,
        )
        shutil.move(str(Path(tmp) / f"{weights.stem}.onnx"), str(path))
    return path


def ort_latency(
    onnx_path: Path, runs: int = 20, warmup: int = 3, threads: Optional[int] = None
) -> float:
    """Median ONNX Runtime CPU latency in ms for one call on random input of the model's shape."""
    from glimmer.runtime.backends.ort.session import make_session
    from glimmer.runtime.core.timing import median_ms

    sess = make_session(onnx_path, threads=threads)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random(
        [d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32
    )
    return median_ms(lambda: sess.run(None, {inp.name: x}), runs, warmup)


def measure(
    stage: str,
    weights: Path,
    data: Optional[Path],
    imgsz: int,
    batch: int,
    out: Path,
    latency_runs: int = 20,
) -> Dict[str, Any]:
    model, _ = load_detector(weights)
    row: Dict[str, Any] = {
        "stage": stage,
        "weights": str(weights),
        "params": count_params(model),
        "gflops": round(gflops(model, imgsz), 3),
        "imgsz": imgsz,
    }
    if data is not None:
        row.update(validate(weights, data, imgsz, batch, out / f"val-{stage}"))
    row["ort_ms"] = round(ort_latency(write_onnx(weights, imgsz), runs=latency_runs), 2)
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    def cell(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if key == "params":
            return f"{v:,}"
        if key in ("map50", "map50_95"):
            return f"{v:.3f}"
        return str(v)

    lines = [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "|".join("---" if k == "stage" else "---:" for k, _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(k, r.get(k)) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def write_summary(rows: List[Dict[str, Any]], out: Path) -> Dict[str, Path]:
    """``summary.json`` and ``summary.png`` (one bar panel per measure) in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = out / "summary.json"
    atomic_write_text(json_path, json.dumps({"stages": rows}, indent=2))
    keys = [(k, h) for k, h in COLUMNS[1:] if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.4))
    names = [r["stage"] for r in rows]
    for ax, (k, h) in zip(np.atleast_1d(axes), keys):
        vals = [r.get(k) or 0 for r in rows]
        ax.bar(
            names, vals, color=["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(rows)]
        )
        ax.set_title(h)
        if k in ("map50", "map50_95"):
            ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("YOLOv8 compression: per stage")
    fig.tight_layout()
    png_path = out / "summary.png"
    with atomic_path(png_path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=110)
    plt.close(fig)
    return {"json": json_path, "png": png_path}
