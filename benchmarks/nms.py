"""Benchmark: detection NMS, the numpy loop vs OpenCV's (cv2.dnn), side by side in one run.

Synthetic, seeded candidate sets shaped like a detector's output before NMS (a few classes, objects
each covered by a cluster of overlapping boxes, scores falling off from the object's centre) at
300, 1,000 and 8,400 candidates (8,400: every anchor of a 640 px YOLOv8). Each implementation is
timed on the same set in interleaved rounds (the project's one timer,
``glimmer.runtime.core.timing.interleave``: every round runs all of them in a rotating order, so
load on a shared machine hits them alike); a row shows the median of the round medians and their
spread (median absolute deviation), and whether each kept exactly the boxes the numpy loop kept.

Implementations (``glimmer.runtime.stream.detect``):

- numpy: ``batched_nms_numpy``, the loop the runtime used before (now its fallback);
- cv2.dnn.NMSBoxes: the classes offset apart in numpy, the loop in OpenCV (OpenCV < 4.7, such as
  JetPack 5's 4.5.4);
- cv2.dnn.NMSBoxesBatched: what the runtime runs on OpenCV 4.7+.

    python benchmarks/nms.py [--rounds 8] [--iou 0.45] [--classes 4] [--seed 0]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from glimmer.runtime.core.timing import interleave
from glimmer.runtime.stream.detect import (
    batched_nms,
    batched_nms_numpy,
    nms,
    offset_by_class,
)

SIZES = (300, 1000, 8400)
#: timed calls per round for each size (the numpy loop at 8,400 takes a few hundred ms a call)
CALLS = {300: 20, 1000: 8, 8400: 2}


def candidates(n: int, classes: int, seed: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyxy float32 boxes, float32 scores, class ids): ``n`` boxes in clusters around n / 40
    objects of a 640 px input, as a detector's anchors crowd around what they see."""
    rng = np.random.default_rng(seed)
    objects = max(1, n // 40)
    centre = rng.uniform(0, 640, size=(objects, 2))
    size = rng.uniform(12, 160, size=(objects, 2))
    owner = rng.integers(0, objects, n)
    jitter = rng.normal(0, 0.15, size=(n, 2))
    xy = centre[owner] + jitter * size[owner]
    wh = size[owner] * rng.uniform(0.7, 1.3, size=(n, 2))
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1).astype(np.float32)
    scores = (rng.uniform(0.3, 1.0, n) * np.exp(-(jitter**2).sum(1))).astype(np.float32)
    cls = rng.integers(0, classes, objects)[owner]
    return boxes, np.maximum(scores, 1e-3).astype(np.float32), cls


def implementations(
    boxes: np.ndarray, scores: np.ndarray, cls: np.ndarray, iou: float
) -> Dict[str, Callable[[], np.ndarray]]:
    impls = {
        "numpy (before)": lambda: batched_nms_numpy(boxes, scores, cls, iou),
        "cv2.dnn.NMSBoxes + offset": lambda: nms(offset_by_class(boxes, cls), scores, iou),
    }
    if hasattr(cv2.dnn, "NMSBoxesBatched"):
        impls["cv2.dnn.NMSBoxesBatched"] = lambda: batched_nms(boxes, scores, cls, iou)
    return impls


def mad(values: Sequence[float]) -> float:
    mid = statistics.median(values)
    return statistics.median(abs(v - mid) for v in values)


def machine() -> List[str]:
    """lscpu's model name and the SIMD flags that matter here, and the library versions."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in text.splitlines())
    )
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx512", "avx2", "avx_vnni", "neon", "asimd"))]
    return [
        f"CPU: {fields.get('Model name', platform.processor() or 'unknown')} "
        f"({os.cpu_count()} logical cores); SIMD: {', '.join(simd) or 'none reported'}",
        f"Python {platform.python_version()}, OpenCV {cv2.__version__}, numpy {np.__version__}",
    ]


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds per size")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU (glimmer-run's default)")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # NMS is single-threaded anyway; keep OpenCV's pool out of the timing
    lines = machine()
    lines += [
        f"{args.rounds} interleaved rounds per size, IoU {args.iou}, {args.classes} classes, "
        f"seed {args.seed}; ms per call: median of round medians ± their median absolute "
        "deviation",
        "",
        "| candidates | kept | implementation | ms per call | speed-up | same boxes |",
        "|---:|---:|---|---:|---:|:---:|",
    ]
    for n in SIZES:
        boxes, scores, cls = candidates(n, args.classes, args.seed)
        impls = implementations(boxes, scores, cls, args.iou)
        want = impls["numpy (before)"]()
        medians, _ = interleave(impls, rounds=args.rounds, calls=CALLS[n], warmup=1)
        base = statistics.median(medians["numpy (before)"])
        for name, fn in impls.items():
            med = statistics.median(medians[name])
            same = "yes" if fn().tolist() == want.tolist() else "NO"
            lines.append(
                f"| {n:,} | {len(want)} | {name} | {med:.3f} ± {mad(medians[name]):.3f} | "
                f"{base / med:.1f}x | {same} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
