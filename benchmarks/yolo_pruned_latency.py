"""ONNX Runtime CPU latency of YOLOv8m, unpruned vs 50% layer-wise pruned, batch 1.

    .venv/bin/python benchmarks/yolo_pruned_latency.py [--full] [--runs 12] [--threads N]

Random weights (a fresh YOLOv8m with VisDrone's 10 classes): timing depends on shapes only, not on
what the weights learned. Both models go through glimmer-export's ONNX path, as a user's would.
Sizes: 640, plus 1024 (the paper's input) with --full. Target: pruned >= 2.5x faster (the paper's
FLOPs fall 3.7x). Prints a markdown table.
"""

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_VERBOSE", "False")


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--full", action="store_true", help="also time 1024x1024")
    parser.add_argument(
        "--runs", type=int, default=12, help="timed runs per model and size (rounds of 3)"
    )
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = parser.parse_args()

    import torch

    from glimmer.train.compress.prune import prune_yolov8
    from glimmer.train.compress.summary import time_stages, write_onnx
    from glimmer.train.compress.yolo import build_detector, count_params, gflops, save_detector

    torch.manual_seed(0)
    base = build_detector("yolov8m.yaml", nc=10).eval()
    pruned = prune_yolov8(copy.deepcopy(base), 0.5).model
    sizes = (640, 1024) if args.full else (640,)
    rows = []
    models = {"base": base, "pruned 50%": pruned}
    with tempfile.TemporaryDirectory() as tmp:
        pts = {
            name: save_detector(m, Path(tmp) / f"{name.split()[0]}.pt", {"benchmark": True})
            for name, m in models.items()
        }
        for size in sizes:
            print(f"exporting both models at {size} ...", file=sys.stderr, flush=True)
            onnx = {name: write_onnx(pt, size) for name, pt in pts.items()}
            # interleaved rounds (the project's one timer): load hits both models alike
            cmp = time_stages(
                onnx, args.runs, threads=args.threads, log=lambda s: print(s, file=sys.stderr)
            )
            for name, model in models.items():
                ms, noise = cmp.median_ms[name], cmp.noise_ms[name]
                rows.append((name, size, count_params(model), gflops(model, size), ms, noise))
            for path in onnx.values():
                path.unlink()
    base_ms = {size: ms for name, size, _, _, ms, _ in rows if name == "base"}
    print(
        f"\nYOLOv8m (10 classes, random weights), ONNX Runtime {ort_version()} CPU, batch 1, "
        f"{args.runs} runs per model in interleaved rounds of 3, {os.cpu_count()} cores\n"
    )
    print("| model | input | params | GFLOPs | latency ms (median ± noise) | FPS | speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, size, params, gf, ms, noise in rows:
        print(
            f"| {name} | {size} | {params:,} | {gf:.1f} | {ms:.1f} ± {noise:.1f} | "
            f"{1000 / ms:.1f} | {base_ms[size] / ms:.2f}x |"
        )
    return 0


def ort_version() -> str:
    from glimmer.runtime.backends.ort.session import import_onnxruntime

    return import_onnxruntime().__version__


if __name__ == "__main__":
    sys.exit(main())
