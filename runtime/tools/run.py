"""glimmer-run: run a model on camera frames, print predictions and an FPS / latency report.

    glimmer-run [--model PATH] [--meta FILE] [--camera N | --source URI]
                [--backend auto|tensorrt|onnxruntime] [--device cpu|0|cuda:N] [--half]
                [--conf X] [--iou X] [--max-det N] [--imgsz N]
                [--output results.jsonl|.csv] [--format jsonl|csv] [--save out.mp4|URI]
                [--show | --headless] [--max-frames N] [--duration S] [--report report.json]
                [--config deploy.toml] [--threads N] [--int8-kernels auto|fused|simulated]
                [--schedule auto|latency|throughput] [--no-cuda-graph] [--dla-core N]

The task (classification or detection) and the preprocessing come from the model's metadata. Flags
override deploy.toml, which overrides the built-in defaults.

Nothing a run writes can cost data: outputs are checked before the model loads (none may be an
input or another output, every folder must take a file), each output has one writer (a second run
on it is refused, naming the first), a failed write stops the run with one line and leaves only
complete files under their names. Ctrl-C, SIGTERM (docker stop, systemd) and SIGHUP stop cleanly:
the frames in flight are finished, the video closed, the report written; exit 130 / 143 / 129.
A closed stdout (``| head``) silences the console; the files are still written in full.
"""

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from glimmer.runtime.backends.factory import open_backend
from glimmer.runtime.backends.ort.int8 import int8_note
from glimmer.runtime.core.console import add_verbose_flag, run_cli, say
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text
from glimmer.runtime.core.images import is_image
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.outputs import lock_outputs, preflight, release_all
from glimmer.runtime.core.signals import describe, exit_code, route_stops, stop_signals
from glimmer.runtime.stream.classify import ClassifySettings
from glimmer.runtime.stream.detect import DetectSettings
from glimmer.runtime.stream.mavlink import MavlinkSettings, MavlinkSink
from glimmer.runtime.stream.meter import format_report
from glimmer.runtime.stream.mqtt import MqttSettings, MqttSink
from glimmer.runtime.stream.pipeline import Pipeline, SourceFailed, build_task
from glimmer.runtime.stream.records import SCHEMA_VERSION, format_for
from glimmer.runtime.stream.schedule import describe_schedule, resolve_schedule
from glimmer.runtime.stream.sinks import (
    ConsoleSink,
    CsvSink,
    DisplaySink,
    JsonLinesSink,
    Sink,
    display_available,
)
from glimmer.runtime.stream.sources import NETWORK_SCHEMES, SourceOptions, open_source
from glimmer.runtime.stream.video_out import check_video_output, open_video_output
from glimmer.runtime.tools.config import BACKENDS, DeployConfig, load_config

_UNTRAINED_WORDS = ("synthetic", "random", "untrained", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="glimmer-run",
        description=__doc__.strip().splitlines()[0],
        epilog="Sources: csi://N, v4l2:///dev/videoN, /dev/videoN, rtsp://..., a video file "
        "(file:// too), an image, a folder of images, a quoted glob ('imgs/*.jpg'), a .txt list "
        "of images. --save: a video file, display://0, rtp://HOST:PORT, rtsp://SERVER:PORT/PATH.",
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
    # ultralytics' predict flags, with its meanings (yolo predict conf=... iou=... half=...)
    parser.add_argument("--conf", type=float, metavar="X", help="detector: minimum box score")
    parser.add_argument("--iou", type=float, metavar="X", help="detector: NMS IoU threshold")
    parser.add_argument("--max-det", type=int, metavar="N", help="detector: boxes kept per frame")
    parser.add_argument(
        "--imgsz",
        type=int,
        nargs="+",
        metavar="N",
        help="the input size the model was exported at (N or H W): checked, since glimmer's "
        "models have a fixed input",
    )
    parser.add_argument(
        "--half",
        action="store_true",
        default=None,
        help="FP16 inference (TensorRT builds an FP16 engine; refused on ONNX Runtime's CPU)",
    )
    parser.add_argument("--device", metavar="DEV", help="cpu, 0, cuda:1 ... (ultralytics' names)")
    parser.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        default=None,
        help="TensorRT: never capture CUDA graphs (plain enqueue per frame)",
    )
    parser.add_argument(
        "--dla-core",
        type=int,
        metavar="N",
        help="TensorRT: build and run on DLA core N with GPU fallback (Jetson; needs --half or "
        "an INT8 model)",
    )
    # Checked like the deploy.toml key (one error line), so no argparse choices.
    parser.add_argument(
        "--int8-kernels",
        metavar="{auto,fused,simulated}",
        help="INT8 on ONNX Runtime's CPU: fused integer kernels, or Q/DQ simulated in "
        "float (auto: simulated where fused u8*s8 kernels saturate, x86 without VNNI)",
    )
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="per-frame results: JSON lines, or CSV"
    )
    parser.add_argument(
        "--format",
        metavar="{jsonl,csv}",
        help="--output's format (default: csv for a .csv file, else JSON lines)",
    )
    parser.add_argument(
        "--save",
        metavar="URI",
        help="annotated video: a file (.mp4, .avi, .mkv), display://0, rtp://HOST:PORT or "
        "rtsp://SERVER:PORT/PATH (the last two need OpenCV with GStreamer)",
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
        ("model.imgsz", args.imgsz[0] if args.imgsz else None, "--imgsz"),
        ("model.half", args.half, "--half"),
        ("model.device", args.device, "--device"),
        ("model.cuda_graph", args.cuda_graph, "--no-cuda-graph"),
        ("model.dla_core", args.dla_core, "--dla-core"),
        ("detect.conf", args.conf, "--conf"),
        ("detect.iou", args.iou, "--iou"),
        ("detect.max_det", args.max_det, "--max-det"),
        ("outputs.format", args.format, "--format"),
        ("runtime.source", source, "--camera" if args.camera is not None else "--source"),
        ("runtime.max_frames", args.max_frames, "--max-frames"),
        ("runtime.duration", args.duration, "--duration"),
        ("runtime.loop", args.loop, "--loop"),
        ("runtime.show", args.show, "--show"),
        ("runtime.schedule", args.schedule, "--schedule"),
        ("outputs.output", args.output, "--output"),
        ("outputs.save", args.save, "--save"),
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
    link_settings(config)  # [outputs.mavlink] / [outputs.mqtt] mistakes fail before a model load
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


def link_settings(config: DeployConfig) -> Tuple[Optional[Any], Optional[Any]]:
    """[outputs.mavlink] and [outputs.mqtt], validated (one line naming the key), or None."""
    origin = str(config.path) if config.path else "deploy.toml"
    mavlink, mqtt = config["outputs.mavlink"], config["outputs.mqtt"]
    return (
        MavlinkSettings.from_table(mavlink, origin) if mavlink is not None else None,
        MqttSettings.from_table(mqtt, origin) if mqtt is not None else None,
    )


def make_sinks(
    config: DeployConfig, task: Any, fps: Optional[float], meta_task: str = "classify"
) -> List[Sink]:
    """MAVLink first: it writes the vehicle's position into each alert, which the sinks after it
    record. Then files, MQTT, the console last. Every link opens here, before the first frame, so
    a wrong address fails at once."""
    mavlink, mqtt = link_settings(config)
    sinks: List[Sink] = []
    try:
        if mavlink is not None:
            sinks.append(MavlinkSink(mavlink))
        if config["outputs.output"]:
            path = Path(config["outputs.output"])
            if format_for(path, config["outputs.format"]) == "csv":
                sinks.append(CsvSink(path, meta_task))
            else:
                sinks.append(JsonLinesSink(path))
        if config["outputs.save"]:
            sinks.append(open_video_output(str(config["outputs.save"]), fps or 30.0, "--save"))
        if config["runtime.show"]:
            sinks.append(DisplaySink())
        if mqtt is not None:
            sinks.append(MqttSink(mqtt))
    except GlimmerError:
        for sink in sinks:
            sink.close(complete=False)
        raise
    sinks.append(ConsoleSink(task.summary, config["runtime.print_interval"]))
    return sinks


def source_options(config: DeployConfig) -> SourceOptions:
    return SourceOptions(
        width=config["runtime.width"],
        height=config["runtime.height"],
        rate=config["runtime.rate"],
        loop=config["runtime.loop"],
        flip=config["runtime.flip"],
        stall_timeout_s=config["runtime.stall_timeout"],
        retries=config["runtime.reconnects"],
        connect_timeout_s=config["runtime.connect_timeout"],
    )


def output_files(config: DeployConfig) -> List[Tuple[str, Path]]:
    """(flag, path) of every file the run writes (a network or display --save writes none)."""
    found = []
    for flag, key in (
        ("--output", "outputs.output"),
        ("--save", "outputs.save"),
        ("--report", "outputs.report"),
    ):
        value = config[key]
        if value and key == "outputs.save":
            target = check_video_output(str(value), flag)  # before the model load
            value = target.path if target.scheme == "file" else None
        if value:
            found.append((flag, Path(value)))
    return found


def check_model_flags(args: argparse.Namespace, config: DeployConfig, meta: ModelMeta) -> None:
    """Flags that only mean something for some models, checked once the metadata is known."""
    if meta.task != "detect":
        given = [f for f, v in (("--conf", args.conf), ("--iou", args.iou)) if v is not None]
        given += ["--max-det"] if args.max_det is not None else []
        if given:
            raise GlimmerError(
                f"{', '.join(given)}: detector settings, and {meta.name} is a classifier (its "
                "alerts use [classify] alert_threshold and alert_frames)"
            )
    size = args.imgsz or ([config["model.imgsz"]] if config["model.imgsz"] else None)
    if size:
        if len(size) > 2:
            raise GlimmerError(f"--imgsz {' '.join(map(str, size))}: give N or H W")
        wanted = (size[0], size[-1])
        if wanted != tuple(meta.input_size):
            raise GlimmerError(
                "--imgsz {}: {} takes {}x{} frames (its input is fixed at export: re-export "
                "with glimmer-export --img-size)".format(
                    " ".join(map(str, size)), meta.name, *meta.input_size
                )
            )


def input_files(
    config: DeployConfig, args: argparse.Namespace, outputs: List[Tuple[str, Path]]
) -> List[Tuple[str, Path]]:
    """(flag, path) of every local file the run reads, as far as an output could hit one: the
    model (an engine's sidecar too), --meta, deploy.toml, a source file, or an image in a source
    folder that an output would land on."""
    model = Path(config["model.path"])
    found = [("--model", model), ("--meta", args.meta), ("--config", args.config)]
    if model.suffix.lower() == ".engine":
        from glimmer.runtime.backends.trt.build import sidecar_path

        found.append(("--model's sidecar", sidecar_path(model)))
    uri = str(config["runtime.source"])
    flag = "--camera" if args.camera is not None else "--source"
    if not uri.isdigit() and not uri.lower().startswith(NETWORK_SCHEMES + ("csi://", "v4l2://")):
        source = Path(uri[len("file://") :] if uri.startswith("file://") else uri).expanduser()
        found.append((flag, source))
        if source.is_dir():
            inside = os.path.realpath(str(source))
            found += [
                (flag, path)
                for _, path in outputs
                if os.path.realpath(str(path.parent)) == inside
                and path.is_file()
                and is_image(path)
            ]
    return [(f, Path(p)) for f, p in found if p is not None]


def write_report(path: Path, report: Dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise GlimmerError(f"--report {path}: cannot write: {exc.strerror or exc}") from None


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with stop_signals():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    config = settings_from(args)
    options = source_options(config)
    classify = ClassifySettings(**config.section("classify"))
    detect = DetectSettings(**config.section("detect"))
    model = Path(config["model.path"])
    if config["runtime.show"]:
        reason = display_available()
        if reason:  # before a model load or an engine build the user would wait for in vain
            raise GlimmerError(f"--show: {reason}")
    outputs = output_files(config)
    # Before the source, the model load and the engine build: a mistake here costs nothing yet.
    preflight(outputs, input_files(config, args, outputs))
    late: List[int] = []  # stop signals after the pipeline has ended
    with contextlib.ExitStack() as stack:
        stack.callback(release_all, lock_outputs(outputs))
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
            half=config["model.half"],
            device=config["model.device"],
            cuda_graph=config["model.cuda_graph"],
            dla_core=config["model.dla_core"],
        )
        stack.enter_context(backend)
        meta = backend.meta
        check_model_flags(args, config, meta)
        task = build_task(meta, classify, detect, still=getattr(source, "still", False))
        note = weights_note(meta)
        say(
            f"model   {model} ({meta.name}, {meta.task}, {meta.num_classes} classes, input "
            f"{meta.input_size[0]}x{meta.input_size[1]}, {meta.precision})"
        )
        say(f"backend {backend.describe()}")
        int8 = int8_note(backend)
        if int8:
            say(f"int8    {int8}")
        say(
            f"source  {source.description} "
            f"({'live: newest frame only' if source.live else 'every frame'}"
            f"{'; stills: each image judged alone' if getattr(source, 'still', False) else ''})"
        )
        say(f"schedule {describe_schedule(schedule, requested)}")
        if note:
            say(f"note    {note}")
        # From here on a stop signal is a request: the outputs are finished, not abandoned.
        stack.enter_context(route_stops(late.append))
        sinks = make_sinks(config, task, source.fps, meta.task)
        pipeline = Pipeline(
            source,
            backend,
            task,
            sinks,
            max_frames=config["runtime.max_frames"],
            duration=config["runtime.duration"],
            schedule=schedule,
        )
        for signum in late:  # arrived while the sinks were opened
            pipeline.request_stop(signum)
        del late[:]
        lost: Optional[SourceFailed] = None
        try:
            report = pipeline.run()
        except SourceFailed as failed:  # a stream gone for good: keep what it gave
            report, lost = failed.report, failed
        report.update(
            {
                "schema_version": SCHEMA_VERSION,
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
        if lost is not None:
            report["source_error"] = str(lost)
        say("")
        say(format_report(report))
        if note:
            say(f"note: {note}")
        if report["interrupted"]:
            say(
                f"stopped by {report['stopped_by']}: the report covers the frames processed "
                "until then"
            )
        if config["outputs.report"]:
            write_report(Path(config["outputs.report"]), report)
            say(f"report written to {config['outputs.report']}")
        if lost is not None:
            raise GlimmerError(
                f"{lost} (the {report['frames']} frames before it are in the outputs and the "
                "report)"
            )
    stop = pipeline.stop_signal if report["interrupted"] else (late[0] if late else None)
    if stop is not None and not report["interrupted"]:
        print(f"glimmer-run: {describe(stop)} after the run ended", file=sys.stderr)
    return exit_code(stop) if stop is not None else 0


def entry() -> None:
    sys.exit(run_cli("glimmer-run", main))


if __name__ == "__main__":
    entry()
