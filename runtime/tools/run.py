"""glimmer-run: run a model on camera frames, print predictions and an FPS / latency report.

    glimmer-run [--model PATH] [--meta FILE] [--camera N | --source URI]
                [--backend auto|tensorrt|onnxruntime]
                [--output results.jsonl] [--save out.mp4] [--show | --headless] [--max-frames N]
                [--duration S] [--report report.json] [--config deploy.toml] [--threads N]
                [--int8-kernels auto|fused|simulated] [--schedule auto|latency|throughput]

The task (classification or detection) and the preprocessing come from the model's metadata. Flags
override deploy.toml, which overrides the built-in defaults. Ctrl-C stops cleanly and still prints
(and writes) the report.
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.ort.int8 import int8_note
from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.classify import ClassifySettings
from glimmer.runtime.stream.detect import DetectSettings
from glimmer.runtime.stream.meter import format_report
from glimmer.runtime.stream.pipeline import Pipeline, build_task
from glimmer.runtime.stream.schedule import describe_schedule, resolve_schedule
from glimmer.runtime.stream.sinks import (
    ConsoleSink,
    DisplaySink,
    JsonLinesSink,
    Sink,
    VideoSink,
    display_available,
)
from glimmer.runtime.stream.sources import SourceOptions, open_source
from glimmer.runtime.tools.config import BACKENDS, DeployConfig, load_config

_UNTRAINED_WORDS = ("synthetic", "random", "untrained", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="glimmer-run",
        description=__doc__.strip().splitlines()[0],
        epilog="Sources: csi://N, v4l2:///dev/videoN, /dev/videoN, rtsp://..., a video file "
        "(file:// too), an image, a folder of images.",
    )
    parser.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help=".onnx with metadata, or .engine with its sidecar",
    )
    parser.add_argument(
        "--meta",
        type=Path,
        metavar="FILE",
        help="metadata for an engine without a sidecar (trtexec): glimmer's metadata JSON or the "
        "ONNX it was built from",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--camera", type=int, metavar="N", help="V4L2 / USB camera index")
    where.add_argument(
        "--source", metavar="URI", help="camera, stream, video file, image or folder"
    )
    parser.add_argument("--backend", choices=BACKENDS, help="inference backend (default: auto)")
    parser.add_argument(
        "--cache-dir", type=Path, metavar="DIR", help="TensorRT engine cache folder"
    )
    parser.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime intra-op threads")
    # Checked like the deploy.toml key (one error line), so no argparse choices.
    parser.add_argument(
        "--int8-kernels",
        metavar="{auto,fused,simulated}",
        help="INT8 on ONNX Runtime's CPU: fused integer kernels, or Q/DQ simulated in "
        "float (auto: simulated where fused u8*s8 kernels saturate, x86 without VNNI)",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="per-frame results as JSON lines"
    )
    parser.add_argument(
        "--save", type=Path, metavar="VIDEO", help="annotated video (.mp4, .avi, .mkv)"
    )
    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--show",
        dest="show",
        action="store_true",
        default=None,
        help="open a window (needs a display)",
    )
    window.add_argument("--headless", dest="show", action="store_false", help="never open a window")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--loop", type=int, metavar="N", help="play a file N times (0: forever)")
    parser.add_argument(
        "--schedule",
        metavar="{auto,latency,throughput}",
        help="latency: each stage takes the newest frame, results about one inference old; "
        "throughput: every frame read, queued between stages (auto: latency for cameras and "
        "streams, throughput for files)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the report as JSON")
    parser.add_argument("--config", type=Path, metavar="TOML", help="deploy.toml with defaults")
    add_verbose_flag(parser)
    return parser


def settings_from(args: argparse.Namespace) -> DeployConfig:
    """deploy.toml (if given) with the flags laid over it."""
    config = load_config(args.config) if args.config else DeployConfig()
    source = str(args.camera) if args.camera is not None else args.source
    for dotted, value, flag in (
        ("model.path", args.model, "--model"),
        ("model.backend", args.backend, "--backend"),
        ("model.cache_dir", args.cache_dir, "--cache-dir"),
        ("model.threads", args.threads, "--threads"),
        ("model.int8_kernels", args.int8_kernels, "--int8-kernels"),
        ("runtime.source", source, "--camera" if args.camera is not None else "--source"),
        ("runtime.max_frames", args.max_frames, "--max-frames"),
        ("runtime.duration", args.duration, "--duration"),
        ("runtime.loop", args.loop, "--loop"),
        ("runtime.show", args.show, "--show"),
        ("runtime.schedule", args.schedule, "--schedule"),
        ("outputs.jsonl", args.output, "--output"),
        ("outputs.video", args.save, "--save"),
        ("outputs.report", args.report, "--report"),
    ):
        if isinstance(value, Path):
            value = str(value)
        config.override(dotted, value, origin=flag)
    if config["model.path"] is None:
        raise GlimmerError("no model: give --model PATH (or [model] path in deploy.toml)")
    if config["runtime.source"] is None:
        raise GlimmerError(
            "no source: give --camera N or --source URI (or [runtime] source in deploy.toml)"
        )
    return config


def weights_note(meta: ModelMeta) -> Optional[str]:
    """A plain warning when the metadata says the weights were not trained on real data."""
    extra = meta.extra or {}
    fields: Dict[str, Any] = {k: extra.get(k) for k in ("dataset", "trained_on", "weights")}
    provenance = extra.get("provenance")
    if isinstance(provenance, dict):
        fields.update({f"provenance.{k}": provenance.get(k) for k in ("dataset", "weights")})
    for key, value in fields.items():
        if isinstance(value, str) and any(w in value.lower() for w in _UNTRAINED_WORDS):
            return (
                f"these weights were not trained on real aerial imagery ({key}: {value}): the "
                "predictions show the plumbing works, not what the scene is"
            )
    return None


def make_sinks(config: DeployConfig, task: Any, fps: Optional[float]) -> List[Sink]:
    """Files first, console last: a Ctrl-C landing while a frame is written most likely hits the
    console, after the frame's JSON line is already on disk."""
    sinks: List[Sink] = []
    try:
        if config["outputs.jsonl"]:
            sinks.append(JsonLinesSink(Path(config["outputs.jsonl"])))
        if config["outputs.video"]:
            sinks.append(VideoSink(Path(config["outputs.video"]), fps or 30.0))
        if config["runtime.show"]:
            sinks.append(DisplaySink())
    except GlimmerError:
        for sink in sinks:
            sink.close(complete=False)
        raise
    sinks.append(ConsoleSink(task.summary, config["runtime.print_interval"]))
    return sinks


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    config = settings_from(args)
    options = SourceOptions(
        width=config["runtime.width"],
        height=config["runtime.height"],
        rate=config["runtime.rate"],
        loop=config["runtime.loop"],
        flip=config["runtime.flip"],
    )
    classify = ClassifySettings(**config.section("classify"))
    detect = DetectSettings(**config.section("detect"))
    model = Path(config["model.path"])
    if config["runtime.show"]:
        reason = display_available()
        if reason:  # before a model load or an engine build the user would wait for in vain
            raise GlimmerError(f"--show: {reason}")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(open_source(config["runtime.source"], options))
        requested = config["runtime.schedule"]
        schedule = resolve_schedule(requested, source.live, source.description)
        backend = open_backend(
            model,
            config["model.backend"],
            cache_dir=config["model.cache_dir"],
            threads=config["model.threads"],
            int8_kernels=config["model.int8_kernels"],
            log=lambda line: print(line, file=sys.stderr),
            meta_path=args.meta,
        )
        stack.enter_context(backend)
        meta = backend.meta
        task = build_task(meta, classify, detect)
        note = weights_note(meta)
        print(
            f"model   {model} ({meta.name}, {meta.task}, {meta.num_classes} classes, input "
            f"{meta.input_size[0]}x{meta.input_size[1]}, {meta.precision})"
        )
        print(f"backend {backend.describe()}")
        int8 = int8_note(backend)
        if int8:
            print(f"int8    {int8}")
        print(
            f"source  {source.description} "
            f"({'live: newest frame only' if source.live else 'every frame'})"
        )
        print(f"schedule {describe_schedule(schedule, requested)}")
        if note:
            print(f"note    {note}")
        sys.stdout.flush()
        sinks = make_sinks(config, task, source.fps)
        pipeline = Pipeline(
            source,
            backend,
            task,
            sinks,
            max_frames=config["runtime.max_frames"],
            duration=config["runtime.duration"],
            schedule=schedule,
        )
        report = pipeline.run()
        report.update(
            {
                "model": str(model),
                "model_name": meta.name,
                "task": meta.task,
                "backend": backend.describe(),
                "source": source.description,
                "notes": [note] if note else [],
            }
        )
        if int8:
            report["int8_execution"] = int8
    print("")
    print(format_report(report))
    if note:
        print(f"note: {note}")
    if report["interrupted"]:
        print("stopped by Ctrl-C: the report covers the frames processed until then")
    if config["outputs.report"]:
        atomic_write_text(Path(config["outputs.report"]), json.dumps(report, indent=2) + "\n")
        print(f"report written to {config['outputs.report']}")
    return 130 if report["interrupted"] else 0


def entry() -> None:
    sys.exit(run_cli("glimmer-run", main))


if __name__ == "__main__":
    entry()
