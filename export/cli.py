"""glimmer-export: a checkpoint -> ONNX (FP32, optional INT8 Q/DQ) with metadata, checked against
PyTorch, and TensorRT engines where TensorRT and a GPU exist.

    glimmer-export CHECKPOINT [--fp16] [--int8 --calib DIR [--calib-count N]] [--out DIR]
                   [--img-size N] [--batch N | --dynamic-batch] [--opset 17]
                   [--dilation-mode split|aligned|embed|auto] [--val DIR]
    glimmer-export NAME.onnx --fp16 | --int8     (on the target: build the engine only)

This module only parses the flags into :class:`~glimmer.export.api.ExportSettings`, calls
:func:`glimmer.export.api.export` and prints the summary; the rewrites are in ``deploy_model`` and
``rewrites/``. An ``.onnx`` input imports nothing but the runtime (the drone's install has no torch
and no onnx package): the flags, then the runtime's engine step.
"""

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from glimmer.runtime.core.console import add_verbose_flag, run_cli

from .api import CALIB_METHODS, DEFAULT_MAX_DROP, INT8_MODES, MODES, ExportSettings, export, say


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-export", description=__doc__.strip().splitlines()[0]
    )
    p.add_argument(
        "checkpoint",
        help="our .pt, a reference .ckpt, an ultralytics YOLOv8 .pt, or an .onnx "
        "made by glimmer-export (engine step only)",
    )
    p.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    p.add_argument("--name", help="artifact base name (default: the checkpoint's file name)")
    p.add_argument("--img-size", type=int, help="square input size (default: the checkpoint's)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    batch.add_argument(
        "--dynamic-batch", action="store_true", help="leave the batch dimension free"
    )
    p.add_argument(
        "--opset", type=int, default=17, help="ONNX opset (default 17, for TensorRT 8.x)"
    )
    p.add_argument(
        "--dilation-mode",
        choices=MODES,
        default="auto",
        help="how GDBlock convs are lowered: "
        "split (a conv per run of equal dilation), aligned (split with runs moved to multiples "
        "of 4 channels, for ONNX Runtime's blocked kernels), embed (one conv, larger kernel), "
        "auto (time them, keep the fastest; the default)",
    )
    p.add_argument(
        "--fp16", action="store_true", help="also build NAME.fp16.engine (TensorRT + GPU only)"
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write NAME.int8.onnx (Q/DQ) and, with TensorRT, NAME.int8.engine",
    )
    p.add_argument(
        "--int8-mode",
        choices=INT8_MODES,
        default="qdq",
        help="what the INT8 engine is "
        "built from: the Q/DQ ONNX (every TensorRT) or the FP32 ONNX with the legacy "
        "IInt8EntropyCalibrator2 and a cache file (TensorRT 8.x-10.x)",
    )
    p.add_argument("--calib", help="calibration images, searched recursively (needed by --int8)")
    p.add_argument(
        "--calib-count", type=int, default=256, help="calibration images to use (default 256)"
    )
    p.add_argument(
        "--calib-method",
        choices=("auto",) + CALIB_METHODS,
        default="auto",
        help="how activation ranges are calibrated: minmax, percentile (99.999th of |x|), entropy "
        "(KL), or auto (default): with --val all three are measured and the one that loses least "
        "is kept, without --val minmax",
    )
    p.add_argument(
        "--int8-max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        metavar="D",
        help="with --val: largest drop of weighted F1 from FP32 that INT8 may cost (simulated, as "
        "TensorRT computes); the most sensitive layers stay float until it holds "
        f"(default {DEFAULT_MAX_DROP})",
    )
    p.add_argument(
        "--val",
        help="labelled folder (<class>/<image>): weighted F1 of FP32 and INT8, calibration "
        "choice and the INT8 accuracy budget",
    )
    p.add_argument(
        "--latency-runs", type=int, default=100, help="timed ONNX Runtime runs (default 100)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="largest batch of a dynamic-batch engine (default 8)",
    )
    add_verbose_flag(p)
    return p


def settings_from(args: argparse.Namespace) -> ExportSettings:
    """The flags as :class:`ExportSettings` (every flag but the checkpoint and ``--verbose``)."""
    return ExportSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(ExportSettings)}
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    report = export(args.checkpoint, settings_from(args), log=say)
    if report["source"]["kind"] == "onnx":
        for result in report["engines"]["built"]:
            print(f"wrote {result['path']}")
        return 0
    if report.get("next_step"):
        print(report["next_step"])
    _summary(report["artifacts"], report, Path(report["report_path"]))
    return 0


def int8_summary(record: Dict[str, Any]) -> List[str]:
    """The INT8 lines of the summary: how accuracy was computed, what stayed float, TensorRT's
    view."""
    from .int8 import summary_lines

    return summary_lines(record)


def _summary(artifacts: List[Dict[str, Any]], report: Dict[str, Any], report_path: Path) -> None:
    lines = [
        "| artifact | size | max abs diff | agreement | ORT CPU ms (1 thread) |",
        "|---|---|---|---|---|",
    ]
    for a in artifacts:
        check = a.get("vs_pytorch", {})
        agree = check.get("top1_agreement", check.get("top_k_agree"))
        lat = a.get("onnxruntime_cpu_latency", {})
        lines.append(
            "| {} | {:,} B | {:.2e} | {} | {:.3f} |".format(
                Path(a["path"]).name,
                a["size_bytes"],
                check.get("max_abs_diff", float("nan")),
                "-" if agree is None else f"{agree:.3f}",
                lat.get("median_ms", float("nan")),
            )
        )
    lowering = report.get("dilation_lowering", {})
    if lowering.get("timed_ms"):
        noise = lowering.get("noise_ms", {})
        lines.append(
            "dilation lowering: "
            + ", ".join(
                f"{k} {v:.3f}" + (f" +/- {noise[k]:.3f}" if k in noise else "") + " ms"
                for k, v in lowering["timed_ms"].items()
            )
            + f" -> {lowering['chosen']}"
            + (f" ({lowering['decided_by']})" if "decided_by" in lowering else "")
        )
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
