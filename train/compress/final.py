"""The pipeline's last step: time every stage together, choose the model to ship, write
``final.pt`` and ``final.onnx``, and the summary that says what won and why.

``final.onnx`` comes from glimmer-export's own path (:func:`glimmer.export.api.export`), metadata
included, so ``glimmer-run --model final.onnx`` and ``glimmer.load("final.onnx")`` take it as is.
"""

import argparse
from pathlib import Path
from typing import Any, Dict, List

from . import gammas
from .selection import PREFERENCE, choose, latency_notes
from .summary import add_latency, markdown, time_stages, write_onnx, write_summary
from .yolo import load_detector, save_detector


def gamma_note(stats: Dict[str, Any], rel_png: str) -> str:
    return (
        f"gammas: after {stats['epochs']} sparse epochs {stats['near_zero']:.1%} of the prunable "
        f"|gamma| are < {gammas.NEAR_ZERO:g}; largest pruned / median kept |gamma| per layer: "
        f"median {stats['gap_median']:.2f}, over {gammas.FAR:g} in {stats['layers_far']} of "
        f"{stats['layers']} layers ({rel_png})"
    )


def finish(run: Any, args: argparse.Namespace, rows: List[Dict[str, Any]], data: Path) -> Dict:
    """Timing, choice, final model, summary; ``run`` is the pipeline's :class:`Run`."""
    out = run.out
    by_stage = {r["stage"]: r for r in rows}
    cmp = time_stages(
        {r["stage"]: out / r["onnx"] for r in rows}, args.latency_runs, preference=PREFERENCE
    )
    add_latency(rows, cmp)
    choice = choose(rows, cmp)
    won = by_stage[choice.stage]
    run.log(f"final: {choice.reason}")

    model, ckpt = load_detector(out / won["weights"])
    final_pt = save_detector(
        model,
        out / "final.pt",
        {
            "stage": "final",
            "chosen": choice.stage,
            "reason": choice.reason,
            "source": won["weights"],
            "map50": won.get("map50"),
            "map50_95": won.get("map50_95"),
        },
        train_args=ckpt.get("train_args"),
    )
    final_onnx = write_onnx(final_pt, args.imgsz)

    sparse_dir = out / "1-sparse"
    sparse_model, _ = load_detector(out / by_stage["sparse"]["weights"])
    stats, histogram = gammas.write_report(sparse_dir, sparse_model, args.ratio)
    stats["png"] = run.rel(Path(stats["png"]))

    notes = [
        f"shipped: {choice.stage} -> {run.rel(final_pt)}, {run.rel(final_onnx)}",
        f"why: {choice.reason}",
    ]
    ref = by_stage["sparse"]
    notes.append(
        f"vs the unpruned sparse model: mAP50-95 {ref['map50_95']:.3f} -> "
        f"{won['map50_95']:.3f}, params {ref['params'] / won['params']:.1f}x fewer, "
        f"GFLOPs {ref['gflops'] / max(won['gflops'], 1e-9):.1f}x fewer"
    )
    rounds = len(cmp.orders)
    notes.append(
        f"latency: ONNX Runtime CPU, batch 1, {rounds} interleaved rounds x "
        f"{cmp.calls_per_round} calls per stage; median of the round medians ± their median "
        "absolute deviation (noise)"
    )
    notes += latency_notes(rows, cmp)
    notes.append(gamma_note(stats, stats["png"]))
    if stats["warning"]:
        notes.append(stats["warning"])
    text = markdown(rows, choice.stage) + "\n\n" + "\n".join(notes)
    final = {
        "stage": choice.stage,
        "reason": choice.reason,
        "decided_by": choice.decided_by,
        "scores": choice.scores,
        "weights": run.rel(final_pt),
        "onnx": run.rel(final_onnx),
    }
    summary = {"final": final, "latency": cmp.report(), "gammas": stats, "notes": notes}
    paths = write_summary(rows, out, summary, text, histogram)
    print(text)
    print(f"summary: {paths['md']} {paths['json']} {paths['png']}")
    return dict(stages=rows, **summary)
