"""Measure a compression stage: params, GFLOPs, mAP (ultralytics val), ONNX Runtime CPU latency.

The pipeline's summary (one row per stage) is printed as a markdown table and written as JSON,
markdown and a PNG chart. Each stage is exported to ONNX by glimmer-export's own path
(:func:`glimmer.export.api.export`: Conv+BN fused, Detect head in export mode, torch.onnx, our
metadata, checked against PyTorch). All stages are then timed together, interleaved over many
rounds in sessions set up as glimmer-run's (:func:`time_stages`): one noisy timing per stage, one
after another, once made three identical architectures differ by half their latency. Now each
median comes with its noise, and differences within it are ties, by the same rule as every
comparison in glimmer.
"""

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from glimmer.models.yolo import offline, yolo
from glimmer.runtime.core.files import atomic_path, atomic_write_text
from glimmer.runtime.core.timing import Comparison

from .yolo import count_params, gflops, load_detector

WARMUP = 5  # untimed calls per stage before the first round
#: what the table's mAP is; glimmer-check's COCO mAP of the deployed ONNX agrees with it on the
#: same boxes to within glimmer.runtime.tools.evaluate.MAP_AGREEMENT
MAP_DEFINITION = (
    "ultralytics val (DetectionValidator on the PyTorch weights: rectangular batches, conf 0.001, "
    "IoU 0.7, up to 300 detections per image; AP from a linearly interpolated 101-point curve)"
)
COLUMNS = (
    ("stage", "stage"),
    ("params", "params"),
    ("gflops", "GFLOPs"),
    ("map50", "mAP50"),
    ("map50_95", "mAP50-95"),
    ("ort_ms", "ORT CPU ms"),  # median of the interleaved round medians, ± their noise
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
    return {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "map_definition": MAP_DEFINITION,
    }


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


def time_stages(
    onnx: Mapping[str, Path],
    runs: int,
    preference: Sequence[str] = (),
    threads: Optional[int] = None,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Every stage's ONNX timed interleaved (the project's one timer,
    :func:`glimmer.runtime.core.timing.compare_latency`): ``runs`` calls per stage spread over
    rounds, each round running every stage in a changing order, so load hits them all alike; the
    spread of a stage's round medians is its noise. Sessions are set up as glimmer-run's."""
    from glimmer.runtime.backends.ort.session import make_session
    from glimmer.runtime.core.timing import MIN_CALLS_PER_ROUND, compare_latency, plan_rounds

    # many short rounds: the medians' uncertainty shrinks with the number of rounds, the noise (the
    # spread of one round's median) does not, so same-architecture stages land within it
    rounds, calls = plan_rounds(runs, rounds=max(1, runs // MIN_CALLS_PER_ROUND))
    candidates: Dict[str, Callable[[], Any]] = {}
    for stage, path in onnx.items():
        sess = make_session(path, threads=threads)
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).random(
            [d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32
        )
        candidates[stage] = lambda s=sess, n=inp.name, x=x: s.run(None, {n: x})
    log(
        f"== timing {len(candidates)} ONNX models in ONNX Runtime (CPU), interleaved: "
        f"{rounds} rounds x {calls} calls each"
    )
    return compare_latency(candidates, preference, rounds=rounds, calls=calls, warmup=WARMUP)


def measure(
    stage: str, weights: Path, data: Optional[Path], imgsz: int, batch: int, out: Path
) -> Dict[str, Any]:
    """A stage's row: params, GFLOPs, mAP on val, and its ONNX beside the weights (timed later,
    with every other stage, by :func:`time_stages`)."""
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
    row["onnx"] = str(write_onnx(weights, imgsz))
    return row


def add_latency(rows: List[Dict[str, Any]], cmp: Comparison) -> None:
    """Each timed row's median and noise (ms) from the interleaved comparison."""
    for r in rows:
        if r["stage"] in cmp.median_ms:
            r["ort_ms"] = cmp.median_ms[r["stage"]]
            r["ort_noise_ms"] = cmp.noise_ms[r["stage"]]


def markdown(rows: List[Dict[str, Any]], chosen: Optional[str] = None) -> str:
    """The per-stage table; the shipped stage is marked."""

    def cell(key: str, r: Dict[str, Any]) -> str:
        v = r.get(key)
        if key == "stage":
            return f"**{v}** (shipped)" if v == chosen else str(v)
        if v is None:
            return "-"
        if key == "params":
            return f"{v:,}"
        if key in ("map50", "map50_95"):
            return f"{v:.3f}"
        if key == "ort_ms":
            noise = r.get("ort_noise_ms")
            return f"{v:.2f}" + ("" if noise is None else f" ± {noise:.2f}")
        return str(v)

    lines = [
        "| " + " | ".join(h for _, h in COLUMNS) + " |",
        "|" + "|".join("---" if k == "stage" else "---:" for k, _ in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(cell(k, r) for k, _ in COLUMNS) + " |" for r in rows]
    if any(r.get("map50") is not None for r in rows):
        lines += ["", f"mAP: {MAP_DEFINITION}"]
    return "\n".join(lines)


def write_summary(
    rows: List[Dict[str, Any]],
    out: Path,
    extra: Dict[str, Any],
    text: str,
    histogram: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> Dict[str, Path]:
    """``summary.json`` (rows + ``extra``), ``summary.md`` (``text``) and ``summary.png``: one bar
    panel per measure (latency with its noise as error bars; the shipped stage outlined) and the
    |gamma| histogram before / after sparse training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .gammas import plot_histogram

    json_path, md_path = out / "summary.json", out / "summary.md"
    atomic_write_text(json_path, json.dumps(dict(stages=rows, **extra), indent=2))
    atomic_write_text(md_path, text + "\n")
    chosen = (extra.get("final") or {}).get("stage")
    keys = [(k, h) for k, h in COLUMNS[1:] if any(r.get(k) is not None for r in rows)]
    panels = len(keys) + (histogram is not None)
    cols = min(3, panels)
    fig, axes = plt.subplots(
        (panels + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.5 * ((panels + cols - 1) // cols))
    )
    axes = list(np.atleast_1d(axes).ravel())
    names = [r["stage"] for r in rows]
    colors = ["#888888", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3"]
    for ax, (k, h) in zip(axes, keys):
        vals = [r.get(k) or 0 for r in rows]
        err = [r.get("ort_noise_ms") or 0 for r in rows] if k == "ort_ms" else None
        bars = ax.bar(names, vals, yerr=err, capsize=4, color=colors[: len(rows)])
        for bar, name in zip(bars, names):
            if name == chosen:
                bar.set_edgecolor("black")
                bar.set_linewidth(2.5)
        ax.set_title(h + (" (median ± noise)" if k == "ort_ms" else ""))
        if k in ("map50", "map50_95"):
            ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=30)
    if histogram is not None:
        plot_histogram(axes[len(keys)], *histogram)
    for ax in axes[panels:]:
        ax.axis("off")
    fig.suptitle(
        "YOLOv8 compression: per stage" + (f"; shipped: {chosen} (outlined)" if chosen else "")
    )
    fig.tight_layout()
    png_path = out / "summary.png"
    with atomic_path(png_path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=100)
    plt.close(fig)
    return {"json": json_path, "md": md_path, "png": png_path}
