"""glimmer-bench: how fast a model runs here, model-only and end to end, in trtexec's vocabulary.

    glimmer-bench --model PATH [--meta FILE] [--source URI | --synthetic] [--batch N] [--warmup N]
                  [--iters N]
                  [--threads N] [--backend B] [--int8-kernels auto|fused|simulated]
                  [--compare torch,onnx-naive=PATH,ultralytics]
                  [--json out.json] [--plot out.png]

Two figures, each with min / max / mean / median / p90 / p95 / p99 latency and throughput, the way
trtexec reports them (docs/tensorrt.md, "Measuring"):

- model-only: the backend's infer call alone, repeated on one fixed preprocessed batch
  (trtexec's Latency: for TensorRT host->device + compute + device->host; for ONNX Runtime the
  session.run call). Throughput in qps (batches/s) and images/s.
- end-to-end: frames through the same Pipeline glimmer-run uses (capture, preprocess, inference,
  postprocess, overlapped on threads), one frame at a time; throughput in FPS.

``--compare`` times peers (bench_peers) on the same inputs in the same run and reports each
one's median as a ratio to ours. The machine is described so a figure is never read without
its hardware: CPU, cores, GPU, ONNX Runtime / TensorRT versions, threads.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from glimmer.runtime.backends.base import Backend
from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.ort.int8 import INT8_KERNELS, int8_note
from glimmer.runtime.core.console import StatusLine, add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path, atomic_write_text
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.outputs import preflight
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.core.timing import latency_stats, sample_ms
from glimmer.runtime.stream.meter import Meter
from glimmer.runtime.stream.pipeline import Pipeline, build_task
from glimmer.runtime.stream.sources import Source, SourceOptions, open_source
from glimmer.runtime.tools.config import BACKENDS
from glimmer.runtime.tools.peers import PeerContext, make_peers, parse_compare, run_peer

MODEL_ONLY = (
    "the backend's infer call on one fixed preprocessed batch (ONNX Runtime: session.run; "
    "TensorRT: host->device copy + enqueue + device->host copy + synchronize)"
)
FRAME_SEQ = "preprocess + inference + postprocess of one frame, run one after the other"
SYNTHETIC_SIZE = (360, 640)  # a 640x360 frame: the resize to the network input is real work


# -- the machine ---------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _gpu() -> Optional[str]:
    """The GPU's name: nvidia-smi on a desktop, the device-tree model on a Jetson, else None."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            name, _, driver = out.splitlines()[0].partition(",")
            return f"{name.strip()} (driver {driver.strip()})" if driver.strip() else name.strip()
    tree = Path("/proc/device-tree/model")
    if tree.is_file():
        model = tree.read_bytes().decode("utf-8", "replace").strip("\x00 \n")
        if "jetson" in model.lower():
            return model
    return None


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    except Exception as exc:  # the PyPI tensorrt stubs fail in their own ways
        return f"unusable ({type(exc).__name__})"
    return str(getattr(mod, "__version__", "unknown"))


def this_device() -> str:
    """The name a baseline is recorded under: the CPU and its core count, and the GPU if any.

    Speed depends on all three (a 2-core and a 16-core machine of one CPU model differ), so all
    three are in the name.
    """
    name = f"{_cpu_model()} ({os.cpu_count() or 1} cores)"
    gpu = _gpu()
    return f"{name} + {gpu.split(' (driver')[0]}" if gpu else name


def describe_machine(threads: Optional[int] = None) -> Dict[str, Any]:
    return {
        "device": this_device(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "gpu": _gpu() or "none",
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": threads if threads else "library default (ONNX Runtime: one per physical core)",
    }


# -- inputs ---------------------------------------------------------------------------------------
def synthetic_frames(count: int, size=SYNTHETIC_SIZE, seed: int = 0) -> List[np.ndarray]:
    """Smooth random BGR frames (blurred noise compresses and resizes like a real scene)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        small = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3)).astype(np.float32)
        big = np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)[: size[0], : size[1]]
        frames.append(np.clip(big + rng.normal(0, 6, big.shape), 0, 255).astype(np.uint8))
    return frames


class SyntheticSource(Source):
    """A file-like source of ``count`` frames cycled from a small pre-made pool (capture ~ 0)."""

    def __init__(self, count: int, pool: Optional[List[np.ndarray]] = None) -> None:
        super().__init__(f"synthetic {SYNTHETIC_SIZE[1]}x{SYNTHETIC_SIZE[0]} frames")
        self.pool = pool or synthetic_frames(8)
        self.count = count

    @property
    def length(self) -> Optional[int]:
        return self.count

    def __next__(self):
        if self._closed or self._index >= self.count:
            raise StopIteration
        return self._emit(self.pool[self._index % len(self.pool)], time.time())


def source_frames(uri: str, count: int) -> List[np.ndarray]:
    """The first ``count`` frames of a source (repeated when it has fewer)."""
    frames: List[np.ndarray] = []
    with open_source(uri, SourceOptions(loop=1)) as source:
        for frame, _, _ in source:
            frames.append(frame)
            if len(frames) >= count:
                break
    if not frames:
        raise GlimmerError(f"--source {uri}: delivered no frames")
    return [frames[i % len(frames)] for i in range(count)]


def open_bench_source(uri: Optional[str], count: int) -> Source:
    """The end-to-end source: a file plays in a loop until ``count`` frames, a camera is live."""
    return SyntheticSource(count) if uri is None else open_source(uri, SourceOptions(loop=0))


# -- measurements ---------------------------------------------------------------------------------
def _timed(step, warmup: int, iters: int, what: str, status: StatusLine) -> List[float]:
    """:func:`sample_ms` with a status line that counts the timed iterations."""

    def progress(done: int) -> None:
        if done % 20 == 1:
            status.update(f"{what}: {done}/{iters}")

    status.update(f"{what}: {warmup} warm-up and {iters} timed iterations")
    times = sample_ms(step, iters, warmup, progress=progress)
    status.close()
    return times


def model_only(
    backend: Backend,
    batch: np.ndarray,
    warmup: int,
    iters: int,
    status: Optional[StatusLine] = None,
) -> Dict[str, Any]:
    """Inference alone, repeated on one batch; throughput over the whole timed loop."""
    times = _timed(
        lambda: backend.infer(batch), warmup, iters, "model-only", status or StatusLine()
    )
    wall = sum(times) / 1e3  # back-to-back calls: the loop's wall time, less the timer's own cost
    qps = len(times) / wall if wall > 0 else 0.0
    return {
        "latency_ms": latency_stats(times),
        "throughput_qps": round(qps, 2),
        "throughput_images_per_s": round(qps * batch.shape[0], 2),
        "batch": int(batch.shape[0]),
        "includes": MODEL_ONLY,
        "samples_ms": [round(t, 4) for t in times],
    }


def end_to_end(backend: Backend, source: Source, task: Any, frames: int) -> Dict[str, Any]:
    """Frames through glimmer-run's Pipeline; the meter's report plus its raw samples."""
    meter = Meter(window=max(frames, 1))
    with source:
        report = Pipeline(source, backend, task, (), max_frames=frames, meter=meter).run()
    report["throughput_fps"] = report.pop("fps")
    report["throughput_includes"] = report.pop("fps_includes")
    report["samples_ms"] = {
        name: [round(float(v), 4) for v in meter.stages[name].recent()]
        for name in ("inference", "end_to_end")
    }
    return report


def frame_sequential(
    backend: Backend, task: Any, frames: List[np.ndarray], warmup: int, iters: int
) -> Dict[str, Any]:
    """Ours per frame, no pipelining: what a peer that preprocesses itself is compared with."""
    pre = Preprocessor(backend.meta)
    dtype = np.dtype(backend.inputs[0].dtype)
    state = {"i": 0}

    def step() -> None:
        frame = frames[state["i"] % len(frames)]
        state["i"] += 1
        batch, transforms = pre([frame])
        task(backend.infer(batch.astype(dtype, copy=False)), transforms)

    times = _timed(step, warmup, iters, "glimmer per frame", StatusLine())
    return {"latency_ms": latency_stats(times), "includes": FRAME_SEQ, "samples_ms": times}


# -- report ---------------------------------------------------------------------------------------
def _row(name: str, stats: Dict[str, float], throughput: str, note: str = "") -> str:
    return "| {} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {:.3f} | {} | {} |".format(
        name,
        stats["min_ms"],
        stats["max_ms"],
        stats["mean_ms"],
        stats["median_ms"],
        stats["p90_ms"],
        stats["p95_ms"],
        stats["p99_ms"],
        throughput,
        note,
    )


def format_markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"device: {m['device']}; GPU: {m['gpu']}; ONNX Runtime {m['onnxruntime']}; "
        f"TensorRT {m['tensorrt']}; threads: {m['threads']}",
        f"model: {report['model']['path']} ({report['model']['task']}, "
        f"{report['model']['precision']}) on {report['model']['backend']}",
    ]
    if report["model"].get("int8_execution"):
        lines.append(f"INT8 {report['model']['int8_execution']}")
    lines += [
        "",
        (
            "| figure | min ms | max ms | mean ms | median ms | p90 ms | p95 ms | p99 ms "
            "| throughput | vs glimmer |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    mo = report["model_only"]
    lines.append(
        _row(
            f"model-only (batch {mo['batch']})",
            mo["latency_ms"],
            f"{mo['throughput_qps']:.1f} qps, {mo['throughput_images_per_s']:.1f} img/s",
        )
    )
    e2e = report.get("end_to_end")
    if e2e:
        for stage in ("capture", "preprocess", "inference", "postprocess", "end_to_end"):
            stats = e2e["stages"].get(stage, {})
            if stats.get("count"):
                lines.append(
                    _row(
                        f"end-to-end: {stage}",
                        stats,
                        f"{e2e['throughput_fps']:.1f} FPS" if stage == "end_to_end" else "",
                    )
                )
    if report.get("frame_sequential"):
        lines.append(
            _row("glimmer per frame (sequential)", report["frame_sequential"]["latency_ms"], "")
        )
    for peer in report.get("compare", []):
        if peer["status"] != "ok":
            lines.append(f"| {peer['name']} | {peer['status']} |  |  |  |  |  |  |  |  |")
        else:
            lines.append(
                _row(
                    f"{peer['name']} ({peer['scope']})",
                    peer["latency_ms"],
                    "",
                    f"{peer['ratio_to_glimmer']:.2f}x",
                )
            )
    lines += ["", f"model-only: {mo['includes']}."]
    if e2e:
        lines.append(
            f"end-to-end: {e2e['frames']} frames through the glimmer-run pipeline; "
            f"FPS = {e2e['throughput_includes']}."
        )
    if report.get("compare"):
        lines.append(
            "vs glimmer: the peer's median / ours (model scope: model-only; frame scope: "
            "glimmer per frame); above 1 means ours is faster."
        )
    return "\n".join(lines)


def write_plot(report: Dict[str, Any], path: Path) -> None:
    """Left: latency distributions (box plots); right: median with p90 / p99 of each runner."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GlimmerError("--plot needs matplotlib (pip install matplotlib)") from None
    series = [("model-only", report["model_only"]["samples_ms"])]
    e2e = report.get("end_to_end")
    if e2e:
        series += [
            ("e2e inference", e2e["samples_ms"]["inference"]),
            ("e2e end-to-end", e2e["samples_ms"]["end_to_end"]),
        ]
    if report.get("frame_sequential"):
        series.append(("glimmer per frame", report["frame_sequential"]["samples_ms"]))
    series += [
        (p["name"], p["samples_ms"]) for p in report.get("compare", []) if p["status"] == "ok"
    ]
    series = [(n, s) for n, s in series if len(s)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.boxplot([s for _, s in series], whis=(1, 99), showfliers=False)
    left.set_xticks(range(1, len(series) + 1))
    left.set_xticklabels([n for n, _ in series], rotation=20, ha="right")
    left.set_ylabel("latency (ms)")
    left.set_yscale("log")
    left.set_title("latency distributions (box: quartiles, whiskers: p1-p99)")
    medians = [float(np.median(s)) for _, s in series]
    x = np.arange(len(series))
    right.bar(x, medians, color="#4c72b0")
    right.scatter(
        x,
        [float(np.percentile(s, 90)) for _, s in series],
        marker="_",
        s=300,
        color="k",
        label="p90",
    )
    right.scatter(
        x, [float(np.percentile(s, 99)) for _, s in series], marker="x", color="r", label="p99"
    )
    for peer in report.get("compare", []):
        if peer["status"] != "ok":
            continue
        i = [n for n, _ in series].index(peer["name"])
        right.annotate(
            f"{peer['ratio_to_glimmer']:.2f}x", (i, medians[i]), ha="center", va="bottom"
        )
    right.set_xticks(x)
    right.set_xticklabels([n for n, _ in series], rotation=20, ha="right")
    right.set_ylabel("median latency (ms)")
    right.set_title(report["machine"]["device"][:60], fontsize=9)
    right.legend()
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(str(tmp), format="png", dpi=110)
    except OSError as exc:
        raise GlimmerError(f"--plot {path}: cannot write: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


# -- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-bench", description=__doc__.strip().splitlines()[0]
    )
    p.add_argument(
        "--model", type=Path, required=True, metavar="PATH", help=".onnx with metadata or .engine"
    )
    p.add_argument(
        "--meta",
        type=Path,
        metavar="FILE",
        help="metadata for an engine without a sidecar (trtexec): glimmer's metadata JSON or the "
        "ONNX it was built from",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--source", metavar="URI", help="frames for both figures (file, folder, camera)"
    )
    where.add_argument(
        "--synthetic", action="store_true", help="generated 640x360 frames (the default)"
    )
    p.add_argument(
        "--batch", type=int, metavar="N", help="model-only batch (default: the model's, or 1)"
    )
    p.add_argument(
        "--warmup", type=int, default=20, metavar="N", help="untimed iterations first (default 20)"
    )
    p.add_argument(
        "--iters",
        type=int,
        default=200,
        metavar="N",
        help="timed iterations, and end-to-end frames (default 200)",
    )
    p.add_argument(
        "--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads (peers too)"
    )
    p.add_argument(
        "--backend", choices=BACKENDS, default="auto", help="inference backend (default auto)"
    )
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="TensorRT engine cache folder")
    p.add_argument(
        "--int8-kernels",
        choices=INT8_KERNELS,
        default="auto",
        help="INT8 on ONNX Runtime's CPU: fused integer kernels or Q/DQ simulated in float "
        "(default auto: simulated where fused u8*s8 kernels saturate, x86 without VNNI)",
    )
    p.add_argument(
        "--compare",
        metavar="PEERS",
        help="peers timed on the same inputs: torch[=CKPT], "
        "onnx-naive=PATH, ultralytics (comma-separated)",
    )
    p.add_argument("--no-end-to-end", action="store_true", help="model-only figures only")
    p.add_argument(
        "--json", type=Path, metavar="FILE", help="write the report (with raw samples) as JSON"
    )
    p.add_argument(
        "--plot", type=Path, metavar="PNG", help="chart of the latency distributions and comparison"
    )
    add_verbose_flag(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    for flag, value, least in (
        ("--batch", args.batch, 1),
        ("--warmup", args.warmup, 0),
        ("--iters", args.iters, 1),
        ("--threads", args.threads, 1),
    ):
        if value is not None and value < least:
            raise GlimmerError(f"{flag} must be at least {least}, got {value}")
    # Before the model load or engine build: an output on an input, or in a folder that takes no
    # file, is refused now rather than after the measurements.
    inputs = [("--model", args.model), ("--meta", args.meta)]
    if args.source and "://" not in args.source and not args.source.isdigit():
        inputs.append(("--source", Path(args.source)))
    preflight([("--json", args.json), ("--plot", args.plot)], inputs)


def write_json(path: Path, report: Dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise GlimmerError(f"--json {path}: cannot write: {exc.strerror or exc}") from None


def _batch_size(backend: Backend, wanted: Optional[int]) -> int:
    fixed = backend.inputs[0].shape[0]
    if isinstance(fixed, int):
        if wanted is not None and wanted != fixed:
            raise GlimmerError(
                f"--batch {wanted}: the model has a fixed batch of {fixed} (export "
                "it with --dynamic-batch to vary it)"
            )
        return fixed
    return wanted or 1


def run(args: argparse.Namespace) -> Dict[str, Any]:
    peers = make_peers(parse_compare(args.compare)) if args.compare else []
    backend = open_backend(
        args.model,
        args.backend,
        cache_dir=args.cache_dir,
        threads=args.threads,
        int8_kernels=args.int8_kernels,
        log=lambda line: print(line, file=sys.stderr),
        meta_path=args.meta,
    )
    with backend:
        meta: ModelMeta = backend.meta
        size = _batch_size(backend, args.batch)
        frames = source_frames(args.source, size) if args.source else synthetic_frames(size)
        batch, _ = Preprocessor(meta)(frames)
        batch = batch.astype(np.dtype(backend.inputs[0].dtype), copy=False)
        report: Dict[str, Any] = {
            "tool": "glimmer-bench",
            "machine": describe_machine(args.threads),
            "model": {
                "path": str(args.model),
                "name": meta.name,
                "task": meta.task,
                "precision": meta.precision,
                "input_size": list(meta.input_size),
                "backend": backend.describe(),
                "int8_execution": int8_note(backend),
            },
            "settings": {
                "batch": size,
                "warmup": args.warmup,
                "iters": args.iters,
                "threads": args.threads,
                "source": args.source or "synthetic",
            },
        }
        report["model_only"] = model_only(backend, batch, args.warmup, args.iters)
        task = build_task(meta)
        if not args.no_end_to_end:
            fixed = backend.inputs[0].shape[0]
            if isinstance(fixed, int) and fixed > 1:
                report["end_to_end"] = None
                report["end_to_end_skipped"] = (
                    f"the model's batch is fixed at {fixed}; the pipeline feeds one frame"
                )
            else:
                report["end_to_end"] = end_to_end(
                    backend, open_bench_source(args.source, args.iters), task, args.iters
                )
        if peers:
            ctx = PeerContext(
                Path(args.model), meta, batch, frames, args.warmup, args.iters, args.threads
            )
            if any(p.scope == "frame" for p in peers):
                report["frame_sequential"] = frame_sequential(
                    backend, task, frames, args.warmup, args.iters
                )
            report["compare"] = []
            for peer in peers:
                print(f"timing peer {peer.name}", file=sys.stderr)
                times, status = run_peer(peer, ctx)
                entry: Dict[str, Any] = {
                    "name": peer.name,
                    "scope": peer.scope,
                    "status": status,
                    "label": peer.label,
                }
                if times:
                    ours = (
                        report["frame_sequential"]
                        if peer.scope == "frame"
                        else report["model_only"]
                    )
                    stats = latency_stats(times)
                    entry.update(
                        latency_ms=stats,
                        samples_ms=[round(t, 4) for t in times],
                        ratio_to_glimmer=round(
                            stats["median_ms"] / ours["latency_ms"]["median_ms"], 3
                        ),
                    )
                report["compare"].append(entry)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    report = run(args)
    print(format_markdown(report))
    if args.json:
        write_json(args.json, report)
        print(f"report written to {args.json}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"chart written to {args.plot}")
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-bench", main))


if __name__ == "__main__":
    entry()
