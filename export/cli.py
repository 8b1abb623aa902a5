"""glimmer-export: a checkpoint -> ONNX (FP32, optional INT8 Q/DQ) with metadata, checked against
PyTorch, and TensorRT engines where TensorRT and a GPU exist.

    glimmer-export CHECKPOINT [--fp16] [--int8 --calib DIR [--calib-count N]] [--out DIR]
                   [--img-size N] [--batch N | --dynamic-batch] [--opset 17]
                   [--dilation-mode split|aligned|embed|auto] [--val DIR]
    glimmer-export NAME.onnx --fp16 | --int8     (on the target: build the engine only)

The rewrites are in ``deploy_model`` / ``lower_dilation``.
"""
import argparse
import copy
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError

MODES = ("split", "aligned", "embed", "auto")
CALIB_METHODS = ("minmax", "percentile", "entropy")  # ONNX Runtime's calibrators
DEFAULT_MAX_DROP = 0.01
FP32_TOLERANCE = 1e-4  # relative to max(1, largest |output|)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glimmer-export", description=__doc__.strip().splitlines()[0])
    p.add_argument("checkpoint", help="our .pt, a reference .ckpt, an ultralytics YOLOv8 .pt, or an .onnx "
                   "made by glimmer-export (engine step only)")
    p.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    p.add_argument("--name", help="artifact base name (default: the checkpoint's file name)")
    p.add_argument("--img-size", type=int, help="square input size (default: the checkpoint's)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="leave the batch dimension free")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, for TensorRT 8.x)")
    p.add_argument("--dilation-mode", choices=MODES, default="auto", help="how GDBlock convs are lowered: "
                   "split (a conv per run of equal dilation), aligned (split with runs moved to multiples of 4 "
                   "channels, for ONNX Runtime's blocked kernels), embed (one conv, larger kernel), auto (time "
                   "them, keep the fastest; the default)")
    p.add_argument("--fp16", action="store_true", help="also build NAME.fp16.engine (TensorRT + GPU only)")
    p.add_argument("--int8", action="store_true", help="also write NAME.int8.onnx (Q/DQ) and, with TensorRT, "
                   "NAME.int8.engine")
    p.add_argument("--int8-mode", choices=("qdq", "calibrator"), default="qdq", help="what the INT8 engine is "
                   "built from: the Q/DQ ONNX (every TensorRT) or the FP32 ONNX with the legacy "
                   "IInt8EntropyCalibrator2 and a cache file (TensorRT 8.x-10.x)")
    p.add_argument("--calib", help="calibration images, searched recursively (needed by --int8)")
    p.add_argument("--calib-count", type=int, default=256, help="calibration images to use (default 256)")
    p.add_argument("--calib-method", choices=("auto",) + CALIB_METHODS, default="auto",
                   help="how activation ranges are calibrated: minmax, percentile (99.999th of |x|), entropy "
                   "(KL), or auto (default): with --val all three are measured and the one that loses least "
                   "is kept, without --val minmax")
    p.add_argument("--int8-max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="D",
                   help="with --val: largest drop of weighted F1 from FP32 that INT8 may cost (simulated, as "
                   f"TensorRT computes); the most sensitive layers stay float until it holds (default {DEFAULT_MAX_DROP})")
    p.add_argument("--val", help="labelled folder (<class>/<image>): weighted F1 of FP32 and INT8, calibration "
                   "choice and the INT8 accuracy budget")
    p.add_argument("--latency-runs", type=int, default=100, help="timed ONNX Runtime runs (default 100)")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of a dynamic-batch engine (default 8)")
    add_verbose_flag(p)
    return p


def _check_args(args: argparse.Namespace) -> None:
    if args.batch < 1:
        raise GlimmerError(f"--batch must be at least 1, got {args.batch}")
    if args.img_size is not None and args.img_size < 16:
        raise GlimmerError(f"--img-size must be at least 16, got {args.img_size}")
    if not 13 <= args.opset <= 20:
        raise GlimmerError(f"--opset {args.opset} is outside 13-20 (TensorRT 8.4 parses up to 17)")
    if args.calib_count < 1:
        raise GlimmerError(f"--calib-count must be at least 1, got {args.calib_count}")
    if args.latency_runs < 1:
        raise GlimmerError(f"--latency-runs must be at least 1, got {args.latency_runs}")
    if args.calib and not args.int8:
        raise GlimmerError("--calib is only used with --int8")
    if not 0.0 <= args.int8_max_drop <= 1.0:
        raise GlimmerError(f"--int8-max-drop must be between 0 and 1, got {args.int8_max_drop}")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    from .loaders import load_source

    source = load_source(Path(args.checkpoint), args.img_size)
    if source.kind == "onnx":
        return _engine_only(source, args)
    qat = getattr(source, "qat", None)
    if args.int8 and not args.calib and not qat:
        raise GlimmerError("--int8 needs --calib DIR (calibration images)")
    if qat and args.calib:
        raise GlimmerError(f"--calib: {source.path.name} carries scales from quantization-aware training; "
                           "calibration would replace them (drop --calib)")
    if args.val and source.task != "classify":
        raise GlimmerError("--val reports classifier accuracy; check detectors with glimmer-check")
    out = Path(args.out) if args.out else source.path.parent
    name = args.name or source.name
    meta = dataclasses.replace(source.meta, batch=None if args.dynamic_batch else args.batch, precision="fp32")

    # Every input is read and checked before the first artifact is written.
    calib, val = None, None
    if args.int8 and args.calib:
        from glimmer.calibration.dataset import CalibrationSet, calibration_batch

        calib = CalibrationSet(Path(args.calib), meta, args.calib_count, calibration_batch(args.calib_count, meta))
        say(f"calibration: reading {calib.count} images from {args.calib}")
        if args.int8_mode == "calibrator" and meta.batch == 1:
            say("note: a static batch-1 network is calibrated by TensorRT one image at a time, which gives "
                "poor entropy scales; --dynamic-batch calibrates in one large batch")
        calib.data  # noqa: B018
    if args.val:
        from .verify import load_labelled

        val = load_labelled(meta, Path(args.val))
        say(f"validation: {len(val.truth)} images from {args.val}")

    from .onnx_export import save_onnx
    from .report import artifact_entry, write_report
    from .verify import compare, latency_input, latency_ms, ort_session

    fp32, meta, reference, lowering = _export_fp32(source, meta, args)
    session = ort_session(fp32.SerializeToString())
    say("verifying against PyTorch on random and image-like inputs")
    check = compare(reference, session, meta)
    limit = FP32_TOLERANCE * max(1.0, check["max_abs_reference"])
    if check["max_abs_diff"] > limit:
        raise GlimmerError("FP32 ONNX disagrees with PyTorch: max abs difference {:.3g} > {:.3g}; nothing written"
                           .format(check["max_abs_diff"], limit))
    lat_input = latency_input(meta)
    fp32_latency = latency_ms(session, lat_input, args.latency_runs)
    report: Dict[str, Any] = {"tool": "glimmer-export", "source": {
        "path": str(source.path), "kind": source.kind, "sha256": meta.source_sha256, "task": meta.task},
        "settings": {"opset": args.opset, "batch": meta.batch, "dynamic_batch": args.dynamic_batch,
                     "input_size": list(meta.input_size), "dilation_mode": args.dilation_mode},
        "dilation_lowering": lowering}
    if val is not None:
        from .verify import score

        report["val"] = {"images": len(val.truth), "unreadable": val.unreadable, "fp32": score(session, val)}
    int8 = None
    if args.int8:
        from .int8 import build_int8

        int8, report["int8"] = build_int8(fp32, meta, reference, calib=calib, val=val, qat=qat,
                                          method=args.calib_method, max_drop=args.int8_max_drop,
                                          latency_runs=args.latency_runs, log=say)
        if val is not None:
            report["val"]["int8"] = report["int8"]["accuracy"]["int8_simulated"]
            report["val"]["int8_onnxruntime_cpu"] = report["int8"]["accuracy"]["int8_onnxruntime_cpu"]

    onnx_path = out / f"{name}.onnx"
    save_onnx(fp32, onnx_path)
    say(f"wrote {onnx_path}")
    artifacts = [artifact_entry(onnx_path, "onnx-fp32", fp32, check, fp32_latency)]
    report["artifacts"] = artifacts
    int8_path = None
    if int8 is not None:
        int8_path = out / f"{name}.int8.onnx"
        save_onnx(int8, int8_path)
        entry = artifact_entry(int8_path, "onnx-int8", int8, report["int8"].pop("vs_pytorch"),
                               report["int8"].pop("latency"))
        artifacts.append(entry)
        speedup = fp32_latency["median_ms"] / entry["onnxruntime_cpu_latency"]["median_ms"]
        report["int8"].update(faster_than_fp32_on_this_cpu=speedup > 1.0, speedup_vs_fp32=speedup)
        say(f"wrote {int8_path} (ONNX Runtime CPU: INT8 {entry['onnxruntime_cpu_latency']['median_ms']:.2f} ms "
            f"vs FP32 {fp32_latency['median_ms']:.2f} ms)")
    if args.fp16 or args.int8:
        report["engines"] = _engines(onnx_path, int8_path, calib, meta, out, name, args)
    report_path = write_report(out, report)
    _summary(artifacts, report, report_path)
    return 0


def _export_fp32(source, meta, args) -> Tuple[Any, Any, Any, Dict[str, Any]]:
    """(ONNX model, final meta, PyTorch reference callable, lowering record)."""
    import torch

    from .onnx_export import attach_metadata, export_onnx

    example = torch.zeros(meta.batch or 1, 3, *meta.input_size)
    lowering: Dict[str, Any] = {}
    if source.task == "detect":
        from .loaders import prepare_detector

        reference = copy.deepcopy(source.model).eval()
        for module in reference.modules():  # the reference returns what the export returns
            if hasattr(module, "export") and hasattr(module, "format"):
                module.export = True
        say("exporting the detector (Conv+BN fused, Detect head in export mode)")
        model = export_onnx(prepare_detector(source.model, args.dynamic_batch), example, opset=args.opset,
                            dynamic_batch=args.dynamic_batch, output_names=("output0",))
        meta = dataclasses.replace(meta, extra=dict(meta.extra, opset=args.opset, exporter="torch.onnx (TorchScript)"))
        lowering = {"applies": False, "reason": "no grouped dilated convs in a detector"}
    else:
        from .deploy_model import deploy_form

        modes = _candidate_modes(source.model, lowering) if args.dilation_mode == "auto" else [args.dilation_mode]
        candidates = {}
        for mode in modes:
            say(f"exporting with dilation mode {mode}")
            candidates[mode] = export_onnx(deploy_form(source.model, mode, meta.input_size), example,
                                           opset=args.opset, dynamic_batch=args.dynamic_batch,
                                           output_names=("logits",))
        timings: Dict[str, Any] = {}
        if len(modes) > 1:
            timings, lowering["timed_with"] = _time_modes(candidates, meta, args)
            lowering.update(timings)  # the interleaved comparison: timed_ms, round medians, noise, decided_by
        chosen = lowering.get("chosen", modes[0])
        lowering.update({"requested": args.dilation_mode, "chosen": chosen})
        model = candidates[chosen]
        reference = source.model.eval()
        meta = dataclasses.replace(meta, extra=dict(meta.extra, dilation_mode=chosen, opset=args.opset,
                                                    exporter="torch.onnx (TorchScript)"))
    attach_metadata(model, meta)
    return model, meta, reference, lowering


def _time_modes(candidates: Dict[str, Any], meta, args) -> Tuple[Dict[str, Any], str]:
    """(comparison record, what timed it): batch latency of each candidate ONNX with TensorRT where it
    can build here (FP16 if --fp16), else with ONNX Runtime CPU on one thread. The candidates are held
    open together and timed in interleaved rounds, so load on a busy machine hits them alike, and a
    difference within the measured noise goes to the preferred lowering (export/interleave.py)."""
    import contextlib
    import tempfile

    from .engines import tensorrt_runner, tensorrt_status
    from .interleave import DILATION_PREFERENCE, compare_latency, plan_rounds
    from .onnx_export import save_onnx
    from .verify import latency_input, ort_session

    batch = latency_input(meta)
    rounds, calls = plan_rounds(args.latency_runs)
    runs = f"batch {batch.shape[0]}, {rounds} interleaved rounds of {calls} calls"

    def ort_call(model) -> Any:
        session = ort_session(model.SerializeToString())
        feed = {session.get_inputs()[0].name: batch}
        return lambda: session.run(None, feed)

    usable, where = tensorrt_status()
    with contextlib.ExitStack() as stack:
        if usable:
            precision = "fp16" if args.fp16 else "fp32"
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="glimmer-auto-")))
            runners = {}
            for mode, model in candidates.items():
                say(f"building dilation mode {mode} as a TensorRT {precision} engine")
                path = tmp / f"{mode}.onnx"
                save_onnx(model, path)
                runners[mode] = stack.enter_context(tensorrt_runner(path, precision, meta, batch, tmp))
            timed_with = f"{where}, {precision} engine, {runs}"
        else:
            runners = {mode: ort_call(model) for mode, model in candidates.items()}
            timed_with = f"ONNX Runtime CPU, 1 thread, {runs}"
        say(f"timing dilation modes {', '.join(runners)}: {rounds} interleaved rounds of {calls} calls")
        result = compare_latency(runners, DILATION_PREFERENCE, rounds=rounds, calls=calls, warmup=10)
    return result.report(), timed_with


def _candidate_modes(model, lowering: Dict[str, Any]) -> List[str]:
    """The dilation modes ``auto`` times: those that give different graphs for ``model``."""
    from .lower_dilation import MODES as LOWERINGS
    from .lower_dilation import stream_sizes

    if len(set(model.config.dilations)) == 1:
        lowering["note"] = "a single dilation: every mode gives the same single depthwise conv"
        return ["split"]
    gds = [stage.blocks[0].conv for stage in model.stages]
    if all(stream_sizes(gd, "aligned") == stream_sizes(gd, "split") for gd in gds):
        lowering["note"] = "every run of equal dilation is a multiple of 4 channels: aligned is split"
        return [m for m in LOWERINGS if m != "aligned"]
    return list(LOWERINGS)


def _engines(onnx_path: Path, int8_path: Optional[Path], calib, meta, out: Path, name: str,
             args) -> Dict[str, Any]:
    from .engines import build_engines, deferred_line, tensorrt_status, trt_calibrator

    usable, reason = tensorrt_status()
    flags = " ".join(f for f, on in (("--fp16", args.fp16), ("--int8", args.int8)) if on)
    if not usable:
        target_onnx = onnx_path if args.fp16 or args.int8_mode == "calibrator" or int8_path is None else int8_path
        line = deferred_line(target_onnx, flags if target_onnx == onnx_path else "--int8", reason)
        if args.fp16 and args.int8 and args.int8_mode == "qdq" and int8_path is not None:
            line = deferred_line(onnx_path, "--fp16", reason) + f"; for INT8: `glimmer-export {int8_path} --int8`"
        print(line)
        return {"built": [], "deferred": True, "reason": reason}
    jobs: List[Dict[str, Any]] = []
    if args.fp16:
        jobs.append({"onnx": onnx_path, "engine": out / f"{name}.fp16.engine", "precision": "fp16",
                     "meta": dataclasses.replace(meta, precision="fp16")})
    if args.int8:
        job = {"onnx": int8_path, "engine": out / f"{name}.int8.engine", "precision": "int8",
               "meta": dataclasses.replace(meta, precision="int8")}
        if args.int8_mode == "calibrator":
            job.update(onnx=onnx_path, calibrator=trt_calibrator(calib, out / f"{name}.calib.cache"))
        jobs.append(job)
    built = build_engines(jobs, meta, out, dynamic_batch=args.dynamic_batch, max_batch=args.max_batch, log=say)
    return {"built": built, "deferred": False}


def _engine_only(source, args) -> int:
    """``glimmer-export NAME.onnx --fp16|--int8``: the on-target engine step."""
    from .engines import build_engines, tensorrt_status, trt_calibrator

    if not (args.fp16 or args.int8):
        raise GlimmerError(f"{source.path} is already an ONNX: give --fp16 or --int8 to build a TensorRT engine")
    meta = source.meta
    if args.int8 and meta.precision != "int8" and args.int8_mode != "calibrator":
        raise GlimmerError(f"{source.path} is not an INT8 (Q/DQ) ONNX: use NAME.int8.onnx, or --int8-mode "
                           "calibrator --calib DIR")
    if args.int8 and args.int8_mode == "calibrator" and not args.calib:
        raise GlimmerError("--int8-mode calibrator needs --calib DIR")
    usable, reason = tensorrt_status()
    if not usable:
        raise GlimmerError(f"cannot build a TensorRT engine here: {reason}")
    out = Path(args.out) if args.out else source.path.parent
    jobs: List[Dict[str, Any]] = []
    if args.fp16:
        jobs.append({"onnx": source.path, "engine": out / f"{source.name}.fp16.engine", "precision": "fp16",
                     "meta": dataclasses.replace(meta, precision="fp16")})
    if args.int8:
        job: Dict[str, Any] = {"onnx": source.path, "engine": out / f"{source.name}.int8.engine",
                               "precision": "int8", "meta": dataclasses.replace(meta, precision="int8")}
        if args.int8_mode == "calibrator":
            from glimmer.calibration.dataset import CalibrationSet, calibration_batch

            calib = CalibrationSet(Path(args.calib), meta, args.calib_count, calibration_batch(args.calib_count, meta))
            job["calibrator"] = trt_calibrator(calib, out / f"{source.name}.calib.cache")
        jobs.append(job)
    for result in build_engines(jobs, meta, out, dynamic_batch=meta.batch is None, max_batch=args.max_batch, log=say):
        print(f"wrote {result['path']}")
    return 0


def int8_summary(record: Dict[str, Any]) -> List[str]:
    """The INT8 lines of the summary: how accuracy was computed, what stayed float, TensorRT's view."""
    from .int8 import summary_lines

    return summary_lines(record)


def _summary(artifacts: List[Dict[str, Any]], report: Dict[str, Any], report_path: Path) -> None:
    lines = ["| artifact | size | max abs diff | agreement | ORT CPU ms (1 thread) |", "|---|---|---|---|---|"]
    for a in artifacts:
        check = a.get("vs_pytorch", {})
        agree = check.get("top1_agreement", check.get("top_k_agree"))
        lat = a.get("onnxruntime_cpu_latency", {})
        lines.append("| {} | {:,} B | {:.2e} | {} | {:.3f} |".format(
            Path(a["path"]).name, a["size_bytes"], check.get("max_abs_diff", float("nan")),
            "-" if agree is None else f"{agree:.3f}", lat.get("median_ms", float("nan"))))
    lowering = report.get("dilation_lowering", {})
    if lowering.get("timed_ms"):
        noise = lowering.get("noise_ms", {})
        lines.append("dilation lowering: " + ", ".join(
            f"{k} {v:.3f}" + (f" +/- {noise[k]:.3f}" if k in noise else "") + " ms"
            for k, v in lowering["timed_ms"].items()) + f" -> {lowering['chosen']}"
            + (f" ({lowering['decided_by']})" if "decided_by" in lowering else ""))
    if "val" in report:
        lines.append(f"val weighted F1: fp32 {report['val']['fp32']['f1_weighted']:.4f}")
    if "int8" in report:
        lines.extend(int8_summary(report["int8"]))
    lines.append(f"report: {report_path}")
    print("\n".join(lines))


def entry() -> None:
    sys.exit(run_cli("glimmer-export", main))


if __name__ == "__main__":
    entry()
