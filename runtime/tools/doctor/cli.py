"""glimmer-doctor: the on-target acceptance check, and the first command to run on the drone.

    glimmer-doctor [--out DIR] [--model ONNX] [--iters N] [--warmup N] [--require-tensorrt]

The command: the platform (probes.py), the checks (checks.py), the reports (report.py).

Exit status 0 when everything that could run passed: no TensorRT is reported and its checks
skipped, unless ``--require-tensorrt``; 1 when a check failed or nothing could run inference.
"""

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.tools.doctor.checks import (
    REFERENCE,
    Log,
    check_onnxruntime,
    check_tensorrt,
    load_model,
)
from glimmer.runtime.tools.doctor.probes import platform_info
from glimmer.runtime.tools.doctor.report import (
    REPORT_JSON,
    REPORT_MD,
    mismatch,
    summary_lines,
    write_reports,
)

SCHEMA = 1


def doctor(
    model_path: Path = REFERENCE, iters: int = 200, warmup: int = 20, log: Log = print
) -> Dict[str, Any]:
    """Every check, as the report dict (``verdict``: pass or fail; ``problems``: one line each)."""
    model_path = Path(model_path)
    if model_path.is_dir():
        raise GlimmerError(f"--model {model_path}: a folder; give an .onnx made by glimmer-export")
    if not model_path.is_file():
        hint = " (reinstall glimmer-edge)" if model_path == REFERENCE else ""
        raise GlimmerError(f"--model {model_path}: no such file{hint}")
    if model_path.suffix.lower() != ".onnx":
        raise GlimmerError(
            f"--model {model_path}: expected an .onnx made by glimmer-export (the doctor builds "
            "its own engines from it)"
        )
    model = load_model(model_path)
    plat = platform_info()
    ort_info, trt_info = plat["onnxruntime"], plat["tensorrt"]
    ort, ort_outputs = check_onnxruntime(
        model, ort_info["available"], ort_info.get("reason", ""), iters, warmup
    )
    reference: Optional[Tuple[str, np.ndarray]] = None
    if ort_outputs is not None:
        reference = ("ONNX Runtime CPU", ort_outputs)
    elif model.recorded is not None:
        reference = ("PyTorch (recorded)", model.recorded)
    trt = check_tensorrt(model, trt_info, reference, iters, warmup, log)

    problems: List[str] = []
    if ort["ran"] and not ort["passed"]:
        problems.append(
            "ONNX Runtime CPU: "
            + (ort.get("error") or mismatch("PyTorch (recorded)", ort["vs_recorded"]))
        )
    for e in trt.get("engines", []):
        if not e["passed"]:
            problems.append(
                f"TensorRT {e['precision']}: "
                + (e.get("error") or mismatch(e["compared_with"], e["comparison"]))
            )
    if not ort["ran"] and not trt["ran"]:
        problems.append(
            "no inference backend: neither ONNX Runtime nor TensorRT can run here "
            f"(ONNX Runtime: {ort['reason']}; TensorRT: {trt['reason']})"
        )
    ran = []
    if ort["ran"]:
        ran.append(f"ONNX Runtime {ort_info['version']} on the CPU")
    if trt["ran"]:
        built = " and ".join(e["precision"].upper() for e in trt["engines"])
        ran.append(f"{built} engines by {trt['status']}")
    else:
        ran.append("TensorRT not available here: engine checks skipped")
    return {
        "tool": "glimmer-doctor",
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "verdict": "fail" if problems else "pass",
        "problems": problems,
        "ran_here": "; ".join(ran),
        "platform": plat,
        "model": model.describe(),
        "onnxruntime": ort,
        "tensorrt": trt,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-doctor", description=__doc__.strip().splitlines()[0]
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("doctor"),
        metavar="DIR",
        help=f"where {REPORT_JSON} and {REPORT_MD} go (default: ./doctor)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=REFERENCE,
        metavar="ONNX",
        help="check this ONNX made by glimmer-export instead of the shipped reference model "
        "(no recorded PyTorch outputs then)",
    )
    p.add_argument("--iters", type=int, default=200, help="timed runs per backend (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed runs first (default 20)")
    p.add_argument(
        "--require-tensorrt",
        action="store_true",
        help="exit 1 when TensorRT cannot build engines here (the acceptance test on the target)",
    )
    add_verbose_flag(p)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        raise GlimmerError(
            f"--iters must be at least 1 and --warmup at least 0, got {args.iters}, {args.warmup}"
        )
    if args.out.exists() and not args.out.is_dir():
        raise GlimmerError(f"--out {args.out}: is a file, give a folder")
    report = doctor(
        args.model,
        args.iters,
        args.warmup,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.require_tensorrt and not report["tensorrt"]["ran"]:
        report["verdict"] = "fail"
        report["problems"].append(
            f"--require-tensorrt: TensorRT is not available here ({report['tensorrt']['reason']})"
        )
    paths = write_reports(report, args.out)
    print("\n".join(summary_lines(report, paths)))
    if report["problems"]:
        extra = f" (and {len(report['problems']) - 1} more)" if len(report["problems"]) > 1 else ""
        raise GlimmerError(f"{report['problems'][0]}{extra}; see {paths[1]}")
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-doctor", main))
