"""Benchmark: how old glimmer-run's results are on a live stream, latency vs throughput schedule.

A real camera stream: a child process serves MJPEG over HTTP (Python's http.server,
multipart/x-mixed-replace, pre-encoded JPEG frames of a moving synthetic scene at ``--fps``) on
127.0.0.1, and glimmer-run's Pipeline reads it through OpenCV like any ``http://`` camera. The
model is generated here and is the bottleneck: a YOLOv8-shaped detector (640x640 letterbox,
``[1, 4 + 80, 6400]`` head, decode + NMS) whose body is a stack of 3x3 convolutions, as deep as
it takes for one inference to last ``--infer-ms`` on this CPU (no download; speed depends on the
shapes only). Both schedules run on the same stream, interleaved over ``--runs`` runs, and a
generated 720p file runs under ``auto`` (every frame, the throughput schedule).

Figures per schedule, pooled over the runs after ``--warmup`` results each: the frame's age when
its results are written (capture timestamp to results written) p50 / p90 / p99, preprocess +
inference of the same frames, throughput, frames dropped.

Targets (latency schedule): median age <= 1.3x median (preprocess + inference), p99 age <= 2x;
throughput >= 0.9x the throughput schedule's on the same stream; files unchanged.

    .venv/bin/python benchmarks/live_latency.py [--fps 25] [--width 1280 --height 720]
        [--infer-ms 110] [--threads 1] [--frames 120] [--warmup 10] [--runs 3]
"""

import argparse
import http.server
import multiprocessing
import os
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from glimmer.runtime.backends.ort.runner import OnnxRuntimeBackend
from glimmer.runtime.core.cpu import cpu_facts
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.runtime.core.timing import sample_ms
from glimmer.runtime.stream.pipeline import Pipeline, build_task
from glimmer.runtime.stream.sinks import Sink
from glimmer.runtime.stream.sources import open_source

SCHEDULES = ("throughput", "latency")
NC = 80


# -- the camera: MJPEG over HTTP in a child process ---------------------------------------------
def scene(i: int, width: int, height: int) -> np.ndarray:
    """A smooth background (JPEG sizes like a real scene's) with a moving box and the frame
    number."""
    import cv2

    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 255, (9, 16, 3)).astype(np.uint8), (width, height))
    x = int((i * 17) % max(1, width - 200))
    cv2.rectangle(base, (x, height // 3), (x + 200, height // 3 + 120), (40, 40, 230), -1)
    cv2.putText(base, str(i), (40, 80), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (255, 255, 255), 3)
    return base


def serve(port: Any, stop: Any, fps: float, width: int, height: int, count: int) -> None:
    """The child process: encode ``count`` frames once, then send them in a loop at ``fps`` to
    every client until ``stop`` is set."""
    import cv2

    frames = [cv2.imencode(".jpg", scene(i, width, height))[1].tobytes() for i in range(count)]

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5.0

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            start, n = time.perf_counter(), 0
            try:
                while not stop.is_set():
                    data = frames[n % count]
                    head = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                    self.wfile.write(head % len(data) + data + b"\r\n")
                    n += 1
                    time.sleep(max(0.0, start + n / fps - time.perf_counter()))
            except OSError:
                pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    port.value = server.server_address[1]
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    server.server_close()


# -- the model: a detector slow enough to be the bottleneck --------------------------------------
def busy_detector(path: Path, depth: int, size: int = 640) -> Path:
    """A YOLOv8-shaped detector: three stride-2 convolutions to 80x80, ``depth`` 3x3 64->64
    convolutions, a 1x1 head to 4 + NC channels (boxes in input pixels, sigmoid scores mostly
    under the confidence threshold), flattened to ``[1, 4 + NC, 6400]``."""
    from onnx import TensorProto, checker, helper, numpy_helper, save

    rng = np.random.default_rng(0)
    nodes, weights = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, bias=None, relu=True) -> str:
        name = f"c{len(nodes)}"
        w = rng.normal(0.0, np.sqrt(2.0 / (cin * k * k)), (cout, cin, k, k)).astype(np.float32)
        b = np.zeros(cout, np.float32) if bias is None else np.asarray(bias, np.float32)
        weights.extend(
            [numpy_helper.from_array(w, name + "w"), numpy_helper.from_array(b, name + "b")]
        )
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv",
                [x, name + "w", name + "b"],
                [name],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[pad] * 4,
            )
        )
        if not relu:
            return name
        nodes.append(helper.make_node("Relu", [name], [name + "r"]))
        return name + "r"

    x = conv("images", 3, 16, 3, 2)
    x = conv(x, 16, 32, 3, 2)
    x = conv(x, 32, 64, 3, 2)
    for _ in range(depth):
        x = conv(x, 64, 64, 3, 1)
    head = conv(x, 64, 4 + NC, 1, 1, bias=[0.0] * 4 + [-6.0] * NC, relu=False)
    grid = (size // 8) ** 2
    scale = np.array([size] * 4 + [1.0] * NC, np.float32).reshape(1, -1, 1)
    weights += [
        numpy_helper.from_array(np.array([1, 4 + NC, grid], np.int64), "shape"),
        numpy_helper.from_array(scale, "scale"),
    ]
    nodes += [
        helper.make_node("Sigmoid", [head], ["sig"]),
        helper.make_node("Reshape", ["sig", "shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "scale"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "busy-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + NC, grid])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    meta = ModelMeta(
        task="detect",
        name=f"busy-detector-{depth}",
        class_names=[f"c{i}" for i in range(NC)],
        input_size=(size, size),
        letterbox=True,
        stride=32,
        extra={"weights": "random"},
    )
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, meta.to_json()
    checker.check_model(model)
    save(model, str(path))
    return path


def infer_ms(path: Path, threads: int) -> float:
    with OnnxRuntimeBackend(path, threads=threads) as backend:
        batch = np.zeros((1, 3, 640, 640), np.float32)
        return statistics.median(sample_ms(lambda: backend.infer(batch), 7, warmup=2))


def calibrated_model(root: Path, target_ms: float, threads: int) -> Tuple[Path, float]:
    """The depth whose inference lasts about ``target_ms`` here: a line through two timed depths,
    then one correction through the depth it gave (per-layer cost is not quite constant)."""
    low, high = 4, 24
    t_low = infer_ms(busy_detector(root / f"d{low}.onnx", low), threads)
    t_high = infer_ms(busy_detector(root / f"d{high}.onnx", high), threads)
    path, took = root / f"d{high}.onnx", t_high
    for _ in range(2):
        per_layer = max(0.05, (t_high - t_low) / (high - low))
        depth = max(1, int(round(low + (target_ms - t_low) / per_layer)))
        path = busy_detector(root / f"busy{depth}.onnx", depth)
        took = infer_ms(path, threads)
        if abs(took - target_ms) <= 0.1 * target_ms:
            break
        high, t_high = depth, took
    return path, took


# -- the runs ----------------------------------------------------------------------------------
class Stamps(Sink):
    """When each result was written."""

    def __init__(self) -> None:
        self.times: List[float] = []

    def write(self, result: Any) -> None:
        self.times.append(time.perf_counter())


def measure(source: str, backend: Any, schedule: str, frames: int, warmup: int) -> Dict[str, Any]:
    """One run: per-frame age, preprocess + inference and processing after ``warmup`` results."""
    stamps = Stamps()
    with open_source(source) as src:
        pipe = Pipeline(
            src, backend, build_task(backend.meta), [stamps], frames + warmup, schedule=schedule
        )
        report = pipe.run()
    stages = {k: s.recent()[warmup:] for k, s in pipe.meter.stages.items()}
    times = stamps.times[warmup:]
    return {
        "age": stages["frame_age"],
        "pre_inf": stages["preprocess"] + stages["inference"],
        "fps": (len(times) - 1) / (times[-1] - times[0]),
        "dropped": report["frames_dropped"] / max(1, report["frames"] + report["frames_dropped"]),
        "workers": report["inference_threads"],
        "schedule": report["schedule"],
    }


def pooled(runs: List[Dict[str, Any]]) -> Dict[str, float]:
    age = np.concatenate([r["age"] for r in runs]) if runs[0]["age"].size else np.zeros(0)
    work = np.concatenate([r["pre_inf"] for r in runs])
    out = {
        "results": float(work.size),
        "fps": statistics.median(r["fps"] for r in runs),
        "work50": float(np.median(work)),
        "dropped": statistics.median(r["dropped"] for r in runs),
    }
    if age.size:
        out.update({f"age{p}": float(np.percentile(age, p)) for p in (50, 90, 99)})
    return out


def cpu_name() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(ln.split(":", 1)[1].strip() for ln in text.splitlines() if "Model name" in ln)
    except (OSError, StopIteration, subprocess.SubprocessError):
        name = "unknown CPU"
    return f"{name} ({cpu_facts().description}, {os.cpu_count()} cores)"


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument("--fps", type=float, default=25.0, help="the stream's frame rate")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--infer-ms", type=float, default=110.0, help="one inference, about")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--frames", type=int, default=120, help="results timed per run")
    parser.add_argument("--warmup", type=int, default=10, help="results left out per run")
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs per schedule")
    args = parser.parse_args(argv)

    from glimmer.train.synthetic import CLASSES, make_scene_video

    ctx = multiprocessing.get_context("spawn")
    port, stop = ctx.Value("i", 0), ctx.Event()
    server = ctx.Process(
        target=serve, args=(port, stop, args.fps, args.width, args.height, 50), daemon=True
    )
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            model, one_ms = calibrated_model(root, args.infer_ms, args.threads)
            clip = make_scene_video(
                root / "clip.mp4", list(CLASSES), 50, (args.width, args.height), fps=args.fps
            )
            deadline = time.time() + 60
            while not port.value and time.time() < deadline:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port.value}/stream.mjpg"
            runs: Dict[str, List[Dict[str, Any]]] = {s: [] for s in SCHEDULES + ("file",)}
            with OnnxRuntimeBackend(model, threads=args.threads) as backend:
                frame = next(iter(open_source(str(clip))))[0]
                batch = Preprocessor(backend.meta)([frame])[0]
                sample_ms(lambda: backend.infer(batch), 0, warmup=3)
                for _ in range(args.runs):  # interleaved: a burst of load hits every schedule
                    for schedule in SCHEDULES:
                        runs[schedule].append(
                            measure(url, backend, schedule, args.frames, args.warmup)
                        )
                    runs["file"].append(
                        measure(str(clip), backend, "auto", args.frames, args.warmup)
                    )
    finally:
        stop.set()
        server.join(timeout=10)
        if server.is_alive():
            server.terminate()

    workers = runs["latency"][0]["workers"]
    print(
        f"\n## live latency: {args.width}x{args.height} MJPEG over HTTP at {args.fps:g} FPS, "
        f"{model.stem} (inference {one_ms:.0f} ms alone), ONNX Runtime CPU, {args.threads} "
        f"intra-op thread(s), {workers} inference thread(s); {cpu_name()}; {args.runs} "
        f"interleaved runs of {args.frames} results per schedule\n"
    )
    print(
        "| schedule | FPS | frame age p50 | p90 | p99 (ms) | preprocess + inference p50 (ms) | "
        "age p50 / (pre + inf) | age p99 / (pre + inf) | frames dropped |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    figures = {name: pooled(r) for name, r in runs.items()}
    for name in SCHEDULES + ("file",):
        f = figures[name]
        label = "file, auto (= throughput)" if name == "file" else f"live, {name}"
        if "age50" in f:
            ages = f"{f['age50']:.0f} | {f['age90']:.0f} | {f['age99']:.0f}"
            ratios = f"{f['age50'] / f['work50']:.2f}x | {f['age99'] / f['work50']:.2f}x"
        else:
            ages, ratios = "- | - | -", "- | -"
        print(
            f"| {label} | {f['fps']:.1f} | {ages} | {f['work50']:.0f} | {ratios} | "
            f"{100 * f['dropped']:.0f}% |"
        )
    lat, thr = figures["latency"], figures["throughput"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    r50, r99 = lat["age50"] / lat["work50"], lat["age99"] / lat["work50"]
    print(
        f"\n- latency schedule: median age {r50:.2f}x median (preprocess + inference) "
        f"(target <= 1.3x: {verdict(r50 <= 1.3)}), p99 {r99:.2f}x (target <= 2x: "
        f"{verdict(r99 <= 2.0)}); the throughput schedule's median age is "
        f"{thr['age50'] / thr['work50']:.2f}x"
    )
    ratio = lat["fps"] / thr["fps"]
    print(
        f"- throughput on the live stream: latency / throughput schedule {ratio:.2f} (target >= "
        f"0.9: {verdict(ratio >= 0.9)}); the file runs the throughput schedule (every frame) at "
        f"{figures['file']['fps']:.1f} FPS"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
