"""Benchmark: does ``onnxslim`` improve glimmer-export's YOLOv8 ONNX? Before and after, one run.

ultralytics runs onnxslim on its own ONNX exports (``simplify=True``); this measures whether doing
the same after glimmer-export's detector path is worth a step. For a fresh (untrained, seeded)
YOLOv8n and YOLOv8s from ultralytics' packaged yaml, exported by :func:`glimmer.export.api.export`
exactly as a user's checkpoint is (Conv+BN fused, Detect head in export mode, checked against
PyTorch), it compares the ONNX before and after ``onnxslim.slim``:

- nodes, by op type, in the file and after ONNX Runtime's own graph optimisations (what the CPU
  runtime actually executes; ``ORT_ENABLE_ALL``, as glimmer-run sets it);
- file size, and whether glimmer's metadata survived;
- max abs output difference between the two on uniform-noise and image-like inputs (through the
  runtime's preprocessing), and the slimmed ONNX against PyTorch (export/verify.py's check);
- ONNX Runtime CPU latency, both models timed in interleaved rounds (the project's one timer,
  :func:`glimmer.runtime.core.timing.compare_latency`), median of round medians and their spread,
  plus session set-up time.

What it showed (onnxslim 0.1.98, ONNX Runtime 1.32 CPU, 2-core AMD EPYC, 640 and 320 px): for
the default static-batch export, onnxslim drops 316 -> 241 nodes, all of them constant shape
arithmetic (the Shape/Gather/Div chains that size each C2f split) and the Detect head's constant
anchor grid, which ONNX Runtime folds by itself: it executes the same op counts either way, outputs
are bit-identical, and latency is a tie (ratios 0.990-0.999). With ``--dynamic-batch`` the anchor
grid is rebuilt on every call and onnxslim's shape inference folds it (ONNX Runtime runs 369 -> 219
nodes), worth at most about 0.3 ms and within noise in most rows. So glimmer-export does not slim.

Latency does not depend on weights, so random ones do. Nothing is downloaded: ultralytics runs
with ``YOLO_OFFLINE=1`` and every socket connection is refused and counted (the run fails if any
was attempted).

    .venv/bin/python benchmarks/onnxslim_detector.py [--sizes 640] [--rounds 8] [--calls 3]
        [--threads 1] [--models n,s] [--batch-modes static,dynamic]
"""

import argparse
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Tuple

os.environ["YOLO_OFFLINE"] = "1"  # read by ultralytics at import
os.environ.setdefault("YOLO_VERBOSE", "False")

NETWORK_ATTEMPTS: List[str] = []


def _refuse(*args: Any, **kwargs: Any) -> Any:
    NETWORK_ATTEMPTS.append(repr(args[1:] if args else kwargs)[:120])
    raise OSError("network disabled by benchmarks/onnxslim_detector.py")


def block_network() -> None:
    """Refuse (and count) every outgoing connection and name lookup in this process."""
    socket.socket.connect = _refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = _refuse  # type: ignore[method-assign]
    socket.create_connection = _refuse  # type: ignore[assignment]
    socket.getaddrinfo = _refuse  # type: ignore[assignment]


def cpu_model() -> str:
    import platform
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def export_detector(cfg: str, size: int, dynamic: bool, work: Path) -> Tuple[Path, Any, Any]:
    """(ONNX path, export report, loaded source) of a seeded fresh ``cfg`` exported by
    glimmer-export (static batch 1, or ``--dynamic-batch``)."""
    import torch

    from glimmer.export.api import export
    from glimmer.train.compress.yolo import build_detector, save_detector

    torch.manual_seed(0)
    model = build_detector(cfg, nc=80).eval()
    stem = Path(cfg).stem
    pt = save_detector(model, work / f"{stem}.pt", {"benchmark": "onnxslim"})
    report = export(
        pt,
        out=work,
        name=f"{stem}-{size}-{'dynamic' if dynamic else 'static'}",
        img_size=size,
        dynamic_batch=dynamic,
        latency_runs=1,
        log=_quiet,
    )
    from glimmer.export.loaders import load_source

    return Path(report["artifacts"][0]["path"]), report, load_source(pt, size)


def _quiet(_line: str) -> None:
    pass


def ort_nodes(blob: bytes) -> Dict[str, int]:
    """Op histogram of the graph ONNX Runtime runs after its own optimisations."""
    import onnx

    from glimmer.runtime.backends.ort.session import make_session

    with tempfile.TemporaryDirectory(prefix="glimmer-slim-") as tmp:
        path = Path(tmp) / "opt.onnx"
        make_session(blob, threads=1, optimized_model_path=path)
        return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def init_ms(blob: bytes, threads: int, times: int = 3) -> float:
    """Median wall time of creating an ONNX Runtime session (graph optimisation included)."""
    import statistics

    from glimmer.runtime.backends.ort.session import make_session

    samples = []
    for _ in range(times):
        start = time.perf_counter()
        make_session(blob, threads=threads)
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def measure(
    cfg: str, size: int, dynamic: bool, args: argparse.Namespace, work: Path
) -> Dict[str, Any]:
    import numpy as np
    import onnx
    import onnxslim

    from glimmer.export.onnx_export import op_histogram
    from glimmer.export.verify import compare, ort_session, sample_inputs
    from glimmer.runtime.core.metadata import METADATA_KEY
    from glimmer.runtime.core.timing import compare_latency

    label = f"{cfg} at {size}, {'dynamic' if dynamic else 'static'} batch"
    print(f"{label}: exporting through glimmer-export", file=sys.stderr, flush=True)
    path, report, source = export_detector(cfg, size, dynamic, work)
    before = onnx.load(str(path))
    start = time.perf_counter()
    after = onnxslim.slim(onnx.load(str(path)))
    slim_s = time.perf_counter() - start
    slim_path = path.with_name(path.stem + ".slim.onnx")
    onnx.save(after, str(slim_path))
    onnx.checker.check_model(after)
    blobs = {"export": before.SerializeToString(), "slim": after.SerializeToString()}
    sessions = {k: ort_session(b, threads=args.threads) for k, b in blobs.items()}

    meta = report_meta(report, source)
    step = 2 if dynamic else 1  # a dynamic batch is compared at 2: the batch axis stays free
    diffs = {}
    for kind, image_like in (("noise", False), ("image_like", True)):
        x = sample_inputs(meta, 4, image_like, seed=3)
        worst = 0.0
        for i in range(0, len(x), step):
            feed = x[i : i + step]
            outs = [s.run(None, {s.get_inputs()[0].name: feed})[0] for s in sessions.values()]
            worst = max(worst, float(np.abs(outs[0].astype(np.float64) - outs[1]).max()))
        diffs[kind] = worst
    reference = source.model.eval()
    for module in reference.modules():
        if hasattr(module, "export") and hasattr(module, "format"):
            module.export = True
    vs_torch = compare(reference, sessions["slim"], meta, count=2)

    feed = sample_inputs(meta, 1, image_like=True, seed=1)
    runners = {
        k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: feed})) for k, s in sessions.items()
    }
    print(
        f"{label}: timing both at batch 1, {args.rounds} rounds x {args.calls} calls",
        file=sys.stderr,
        flush=True,
    )
    cmp = compare_latency(runners, ("export",), rounds=args.rounds, calls=args.calls, warmup=3)
    return {
        "model": Path(cfg).stem,
        "size": size,
        "batch": "dynamic" if dynamic else "1",
        "hist": {"export": op_histogram(before), "slim": op_histogram(after)},
        "ort": {k: ort_nodes(b) for k, b in blobs.items()},
        "bytes": {"export": path.stat().st_size, "slim": slim_path.stat().st_size},
        "meta_kept": any(p.key == METADATA_KEY for p in after.metadata_props),
        "diffs": diffs,
        "vs_torch": vs_torch["max_abs_diff"],
        "ref_scale": vs_torch["max_abs_reference"],
        "slim_s": slim_s,
        "init_ms": {k: init_ms(b, args.threads) for k, b in blobs.items()},
        "cmp": cmp,
    }


def report_meta(report: Dict[str, Any], source: Any) -> Any:
    """The exported model's metadata (its batch, the export's input size)."""
    import dataclasses

    size = tuple(report["settings"]["input_size"])
    return dataclasses.replace(source.meta, batch=report["settings"]["batch"], input_size=size)


def _tag(r: Dict[str, Any]) -> str:
    return f"yolov8{r['model'][-1]} | {r['size']} | {r['batch']}"


def table(rows: List[Dict[str, Any]]) -> str:
    lines = [
        "| model | input | batch axis | nodes in file | nodes ORT runs | size KiB | max abs diff "
        "slim vs export (noise / image-like) | slim vs PyTorch | ORT ms export | ORT ms slim | "
        "slim/export | session init ms export / slim |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cmp = r["cmp"]
        med, noise = cmp.median_ms, cmp.noise_ms
        nodes = "{} -> {}".format(*(sum(r["hist"][k].values()) for k in ("export", "slim")))
        ort = "{} -> {}".format(*(sum(r["ort"][k].values()) for k in ("export", "slim")))
        verdict = "tie" if len(cmp.tied) == 2 else "beyond noise"
        size = "{:,.0f} -> {:,.0f}".format(*(r["bytes"][k] / 1024 for k in ("export", "slim")))
        lines.append(
            f"| {_tag(r)} | {nodes} | {ort} | {size} | "
            f"{r['diffs']['noise']:.1e} / {r['diffs']['image_like']:.1e} | "
            f"{r['vs_torch']:.1e} (of {r['ref_scale']:.0f}) | "
            f"{med['export']:.2f} ± {noise['export']:.2f} | "
            f"{med['slim']:.2f} ± {noise['slim']:.2f} | "
            f"{med['slim'] / med['export']:.3f} ({verdict}) | "
            f"{r['init_ms']['export']:.0f} / {r['init_ms']['slim']:.0f} |"
        )
    return "\n".join(lines)


def op_table(rows: List[Dict[str, Any]]) -> str:
    """Per-op node counts, in the file and in what ONNX Runtime runs, where export and slim
    differ; one row set per batch mode (the graphs' structure does not depend on the scale or
    input size)."""
    lines = [
        "| model | input | batch axis | op | in file: export | slim | ORT runs: export | slim |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    seen = set()
    for r in rows:
        if r["batch"] in seen:
            continue
        seen.add(r["batch"])
        hist, ort = r["hist"], r["ort"]
        ops = sorted(set().union(hist["export"], hist["slim"], ort["export"], ort["slim"]))
        for op in ops:
            counts = [
                d.get(op, 0) for d in (hist["export"], hist["slim"], ort["export"], ort["slim"])
            ]
            if counts[0] != counts[1] or counts[2] != counts[3]:
                lines.append(f"| {_tag(r)} | {op} | " + " | ".join(map(str, counts)) + " |")
        same = ort["export"] == ort["slim"]
        lines.append(
            f"| {_tag(r)} | (what ONNX Runtime runs) | | | "
            f"{'same op counts' if same else 'differs'} | |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640", help="comma-separated input sizes (default 640)")
    parser.add_argument("--models", default="n,s", help="YOLOv8 scales (default n,s)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default 8)")
    parser.add_argument("--calls", type=int, default=3, help="timed calls per round (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    parser.add_argument(
        "--batch-modes",
        default="static,dynamic",
        help="static (batch 1, the default export) and/or dynamic (--dynamic-batch)",
    )
    args = parser.parse_args()
    block_network()

    try:
        import onnxslim
    except ImportError:
        print("this benchmark needs onnxslim: pip install onnxslim==0.1.98", file=sys.stderr)
        return 2
    import onnxruntime
    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="glimmer-slim-") as tmp:
        for mode in args.batch_modes.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for scale in args.models.split(","):
                    cfg = f"yolov8{scale.strip()}.yaml"
                    rows.append(measure(cfg, size, mode.strip() == "dynamic", args, Path(tmp)))
    print(
        f"\nonnxslim {onnxslim.__version__}, ONNX Runtime {onnxruntime.__version__} CPU "
        f"({args.threads} thread, ORT_ENABLE_ALL), timed at batch 1, {cpu_model()}, "
        f"{os.cpu_count()} cores (shared); random weights, 80 classes, opset 17; "
        f"{args.rounds} interleaved rounds x {args.calls} calls, median of round medians ± "
        "their median absolute deviation; "
        f"'tie' = within that noise (or 2%)\n"
    )
    print(table(rows))
    print("\nNodes that differ, by op type:\n")
    print(op_table(rows))
    print(
        "\nmetadata kept by onnxslim: "
        + ("all" if all(r["meta_kept"] for r in rows) else "NOT all")
        + "; onnxslim time: "
        + ", ".join(f"{r['slim_s']:.1f} s" for r in rows)
        + f"; total {time.perf_counter() - started:.0f} s"
        + f"; network attempts: {len(NETWORK_ATTEMPTS)}"
    )
    if NETWORK_ATTEMPTS:
        print("network was attempted: " + "; ".join(NETWORK_ATTEMPTS), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
