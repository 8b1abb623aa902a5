"""A training run's record: ``metrics.json`` and its PNG plots (learning curves, confusion matrix).

metrics.json is rewritten atomically after every epoch, so an interrupted run still documents
what it did. Its ``epochs`` rows carry the paper's model-selection metric (weighted F1 on Val);
the ``test`` block is the paper's reported result (weighted F1, accuracy, per-class precision,
recall and F1) for the best-on-Val weights.
"""

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from glimmer.runtime.core.files import atomic_path, atomic_write_text

FORMAT = "glimmer-train-metrics"
VERSION = 1
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion_matrix.png"
EPOCH_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "val_f1_weighted",
    "seconds",
)


def summarize_test(report: Dict[str, Any], source: str) -> Dict[str, Any]:
    """The ``test`` block from :func:`glimmer.runtime.tools.metrics.classification_report`."""
    return {
        "source": source,
        "f1_weighted": report["f1_weighted"],
        "accuracy": report["accuracy"],
        "f1_macro": report["f1_macro"],
        "num_samples": report["num_samples"],
        "per_class": report["per_class"],
        "confusion_matrix": report["confusion_matrix"],
    }


def build_metrics(
    settings: Dict[str, Any],
    dataset: Dict[str, Any],
    skipped: List[Dict[str, str]],
    epochs: List[Dict[str, Any]],
    best: Optional[Dict[str, Any]],
    finished: bool,
    test: Optional[Dict[str, Any]] = None,
    test_skipped: Optional[str] = None,
) -> Dict[str, Any]:
    """The whole metrics.json document (its structure is part of the tool's contract)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": settings,
        "dataset": dataset,
        "skipped_images": skipped,
        "epochs": epochs,
        "best": best,
        "finished": finished,
        "test": test,
        "test_skipped": test_skipped,
        "plots": {
            "curves": CURVES_PNG,
            "confusion_matrix": CONFUSION_PNG if test is not None else None,
        },
    }


def write_metrics(run_dir: Path, metrics: Dict[str, Any]) -> Path:
    path = Path(run_dir) / "metrics.json"
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a training server; files only
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=110, bbox_inches="tight")


def plot_curves(
    path: Path, epochs: Sequence[Dict[str, Any]], best_epoch: Optional[int] = None
) -> Path:
    """Loss, accuracy and weighted F1 per epoch (train and Val), the selected epoch marked."""
    plt = _pyplot()
    x = [row["epoch"] for row in epochs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("loss", "train_loss", "val_loss"),
        ("accuracy", "train_accuracy", "val_accuracy"),
        ("weighted F1", None, "val_f1_weighted"),
    )
    for ax, (title, train_key, val_key) in zip(axes, panels):
        if train_key:
            ax.plot(x, [row[train_key] for row in epochs], marker=".", label="train")
        ax.plot(x, [row[val_key] for row in epochs], marker=".", label="val")
        if best_epoch is not None:
            ax.axvline(
                best_epoch,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"best (epoch {best_epoch})",
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_confusion(
    path: Path,
    matrix: Sequence[Sequence[int]],
    class_names: Sequence[str],
    title: str = "test confusion matrix",
) -> Path:
    """Counts with row-normalised shading (rows: true class), so small classes stay visible."""
    plt = _pyplot()
    cm = np.asarray(matrix, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 1.8))
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(n), labels=list(class_names), rotation=30, ha="right")
    ax.set_yticks(range(n), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
