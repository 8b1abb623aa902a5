"""Has sparse training made the layer-wise prune safe? BatchNorm |gamma| statistics and plots.

The layer-wise prune removes a fixed share of channels in every layer, whatever their gammas, so the
share of gammas below the prune threshold is the ratio by construction and says nothing. What
matters is whether the channels it removes are already near zero while the kept ones are not. Per
prune group (a conv's outputs, or coupled outputs sharing one mask; ``prune.plan_groups``), with a
channel's |gamma| averaged over the group's members (the pruner's ranking):

- ``near_zero``: the share of channels with |gamma| < ``NEAR_ZERO`` (0.01), an absolute threshold:
  such channels contribute almost nothing, and sparse training's job is to put the pruned ones here;
- ``gap``: the largest pruned |gamma| / the median kept |gamma|. Near 0 the prune removes channels
  that are negligible next to those it keeps; near 1 (a fresh model: every gamma is 1) it cuts
  channels as strong as the kept ones, and mAP falls until fine-tuning relearns them.

A layer is *far* when its gap exceeds ``FAR`` (0.1). Before pruning, one warning line is printed
when more than ``WARN_SHARE`` (a quarter) of the pruned layers are far. Groups kept whole (stem,
box branch) are left out. Per epoch the sparse trainer logs the model-wide figures to
``gammas.csv``.
"""

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from glimmer.runtime.core.files import atomic_path, atomic_write_text

from .prune import plan_groups

NEAR_ZERO = 0.01
FAR = 0.1
WARN_SHARE = 0.25
CSV_NAME, BEFORE_NAME, PNG_NAME = "gammas.csv", "gammas-before.npy", "gammas.png"
EPOCH_KEYS = ("epoch", "lambda", "near_zero", "gap_median", "layers_far", "layers")


@dataclass
class LayerGammas:
    """One prune group's figures (see the module docstring)."""

    name: str
    channels: int
    pruned: int
    near_zero: float
    pruned_max: float
    kept_median: float

    @property
    def gap(self) -> float:
        return self.pruned_max / self.kept_median if self.kept_median > 0 else float("inf")


def all_gammas(model: nn.Module) -> np.ndarray:
    """|gamma| of every BatchNorm channel, for the histogram."""
    parts = [
        m.weight.detach().float().abs().cpu().numpy().ravel()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def layer_gammas(
    model: nn.Module, ratio: float, keep_stem: bool = True, keep_box: bool = True
) -> List[LayerGammas]:
    """Per prune group, what the layer-wise prune at ``ratio`` would remove and keep."""
    named = dict(model.named_modules())
    out = []
    for g in plan_groups(model, ratio, keep_stem, keep_box):
        scores = [
            named[n].bn.weight.detach().float().abs().cpu().numpy()[o : o + w]
            for n, o, w in g.members
        ]
        score = np.mean(scores, axis=0)
        n_pruned = len(score) - g.keep
        if n_pruned <= 0:
            continue
        order = np.sort(score)
        out.append(
            LayerGammas(
                name=g.members[0][0] + ("" if len(g.members) == 1 else f" (+{len(g.members) - 1})"),
                channels=len(score),
                pruned=n_pruned,
                near_zero=float(np.mean(score < NEAR_ZERO)),
                pruned_max=float(order[n_pruned - 1]),
                kept_median=float(np.median(order[n_pruned:])),
            )
        )
    return out


def summarize(layers: Sequence[LayerGammas]) -> Dict[str, Any]:
    """Model-wide figures: channel-weighted near-zero share, median gap, how many layers are far."""
    channels = sum(la.channels for la in layers)
    return {
        "near_zero": sum(la.near_zero * la.channels for la in layers) / max(channels, 1),
        "gap_median": float(np.median([la.gap for la in layers])) if layers else 0.0,
        "layers_far": sum(la.gap > FAR for la in layers),
        "layers": len(layers),
    }


def prune_warning(stats: Dict[str, Any]) -> Optional[str]:
    """One line when the prune would remove channels whose gammas are far from zero, else None."""
    if not stats["layers"] or stats["layers_far"] <= WARN_SHARE * stats["layers"]:
        return None
    return (
        f"warning: the layer-wise prune removes channels whose |gamma| is far from zero in "
        f"{stats['layers_far']} of {stats['layers']} layers (largest pruned |gamma| over "
        f"{FAR:g} x the median kept one; median ratio {stats['gap_median']:.2f}; "
        f"{stats['near_zero']:.1%} of |gamma| < {NEAR_ZERO:g}): sparse training has not "
        "separated them, expect mAP to collapse after pruning; train the sparse stage longer "
        "(--epochs) or raise the penalty (--sr)"
    )


def write_epochs(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """``gammas.csv``, rewritten whole each epoch (atomically, as last.pt is)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EPOCH_KEYS, lineterminator="\n")
    writer.writeheader()
    counts = ("epoch", "layers_far", "layers")
    writer.writerows(
        {k: int(r[k]) if k in counts else round(float(r[k]), 6) for k in EPOCH_KEYS} for r in rows
    )
    atomic_write_text(path, buf.getvalue())


def read_epochs(path: Path) -> List[Dict[str, float]]:
    if not Path(path).is_file():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def plot_histogram(ax: Any, before: np.ndarray, after: np.ndarray) -> None:
    """|gamma| before and after sparse training on one axis, log counts, the near-zero line."""
    top = float(max(np.percentile(before, 99.9) if before.size else 0, np.max(after, initial=0)))
    bins = np.linspace(0.0, max(top, 2 * NEAR_ZERO), 60)
    if before.size:
        ax.hist(np.clip(before, 0, bins[-1]), bins, alpha=0.45, color="#888888", label="before")
    ax.hist(
        np.clip(after, 0, bins[-1]), bins, histtype="step", lw=1.8, color="#4c72b0", label="after"
    )
    ax.axvline(NEAR_ZERO, color="#c44e52", lw=1, ls="--", label=f"|gamma| = {NEAR_ZERO:g}")
    ax.set_yscale("log")
    ax.set_xlabel("|gamma| (BatchNorm scale)")
    ax.set_ylabel("channels")
    ax.set_title("|gamma| before / after sparse training")
    ax.legend(fontsize=7)


def write_report(
    stage_dir: Path, model: nn.Module, ratio: float, before: Optional[np.ndarray] = None
) -> Tuple[Dict[str, Any], Tuple[np.ndarray, np.ndarray]]:
    """The sparse stage's diagnostics: ``gammas.png`` (histogram, per-epoch curves, per-layer gap);
    returns the figures the summary prints and the |gamma| before / after for its histogram.
    ``before`` defaults to ``gammas-before.npy``, saved by the sparse trainer as it starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stage_dir = Path(stage_dir)
    if before is None:
        saved = stage_dir / BEFORE_NAME
        before = np.load(saved) if saved.is_file() else np.zeros(0, np.float32)
    after = all_gammas(model)
    layers = layer_gammas(model, ratio)
    stats = summarize(layers)
    epochs = read_epochs(stage_dir / CSV_NAME)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    plot_histogram(axes[0], before, after)
    if epochs:
        e = [r["epoch"] for r in epochs]
        share = [r["near_zero"] for r in epochs]
        axes[1].plot(e, share, "o-", label=f"share |gamma| < {NEAR_ZERO:g}")
        axes[1].plot(e, [r["gap_median"] for r in epochs], "s-", label="median gap ratio")
        axes[1].axhline(FAR, color="#c44e52", lw=1, ls="--", label=f"far: gap > {FAR:g}")
        axes[1].legend(fontsize=7)
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set_xlabel("epoch")
    axes[1].set_title("per epoch")
    gaps = [min(la.gap, 2.0) for la in layers]
    axes[2].bar(range(len(gaps)), gaps, color=["#c44e52" if g > FAR else "#55a868" for g in gaps])
    axes[2].axhline(FAR, color="#333333", lw=1, ls="--")
    axes[2].set_xlabel("prune group (network order)")
    axes[2].set_title(f"largest pruned / median kept |gamma| (ratio {ratio:g})")
    fig.tight_layout()
    png = stage_dir / PNG_NAME
    with atomic_path(png) as tmp:
        fig.savefig(str(tmp), format="png", dpi=100)
    plt.close(fig)
    report = dict(stats, epochs=len(epochs), warning=prune_warning(stats), png=str(png))
    return report, (before, after)
