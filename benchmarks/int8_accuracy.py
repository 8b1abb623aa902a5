"""INT8 accuracy of GlimmerNet: post-training quantisation vs mixed precision vs quantization-aware
training, on one held-out split, in one run.

    python benchmarks/int8_accuracy.py [--out DIR] [--epochs 10] [--qat-epochs 5] [--bits 8 4]

Trains GlimmerNet with the demo recipe on generated scenes (glimmer-train), exports the FP32 ONNX
(glimmer-export), then for each weight width:
  - PTQ: the calibration method that loses least on Val (MinMax / Percentile / Entropy), every
    Conv / Gemm quantised;
  - mixed precision: PTQ plus the accuracy budget (0.01 weighted F1 on Val), the most sensitive
    layer groups left float;
  - QAT: glimmer-train --qat-from best.pt, exported by glimmer-export --int8 with its own scales.
Every model is scored on the Test split, which neither calibration, the budget nor QAT saw: Q/DQ
simulated in float (what TensorRT computes) and as ONNX Runtime runs the file on this CPU. 8-bit
weights are what glimmer-export writes; 4-bit weights (inside int8) are a stress setting where PTQ
visibly loses, to show what the budget and QAT recover. Writes int8-accuracy.json, .md and .png.
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import onnx

from glimmer.calibration.dataset import CalibrationSet
from glimmer.export.int8 import METHODS, Int8Builder
from glimmer.export.onnx_export import read_metadata
from glimmer.export.verify import load_labelled, ort_session, score
from glimmer.runtime.core.cpu import cpu_facts
from glimmer.train.synthetic import DEMO_TRAIN_FLAGS, make_scene_dataset

BIN = Path(sys.executable).parent
BUDGET = 0.01


def run(*cmd: str) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run([str(BIN / cmd[0]), *cmd[1:]], check=True, stdout=subprocess.DEVNULL)


def test_f1(model: onnx.ModelProto, test, simulated: bool) -> float:
    return score(ort_session(model.SerializeToString(), simulate_qdq=simulated), test)[
        "f1_weighted"
    ]


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.strip().splitlines()[0])
    p.add_argument(
        "--out", default="int8-bench", help="work and result folder (default int8-bench)"
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--qat-epochs", type=int, default=5)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "Test").is_dir():
        make_scene_dataset(data, {"Train": 64, "Val": 32, "Test": 64}, size=96, seed=22)
    if not (out / "run" / "best.pt").is_file():
        run(
            "glimmer-train",
            str(data),
            "--out",
            str(out / "run"),
            *DEMO_TRAIN_FLAGS,
            "--epochs",
            str(args.epochs),
            "--workers",
            "2",
        )
    run(
        "glimmer-export",
        str(out / "run" / "best.pt"),
        "--out",
        str(out),
        "--name",
        "fp32",
        "--dilation-mode",
        "aligned",
        "--latency-runs",
        "5",
    )
    fp32 = onnx.load(str(out / "fp32.onnx"))
    meta = read_metadata(fp32, "fp32.onnx")
    val, test = load_labelled(meta, data / "Val"), load_labelled(meta, data / "Test")
    calib = CalibrationSet(data / "Train", meta, 256)
    fp32_test = test_f1(fp32, test, False)
    rows: List[Dict[str, Any]] = []
    for bits in args.bits:
        builder = Int8Builder(fp32, lambda m, sim: test_f1(m, val, sim), weight_bits=bits)
        chosen = builder.choose_method(calib, METHODS)
        ptq = builder.quantize(chosen["amax"])
        budget = builder.fit_budget(chosen["amax"], BUDGET)
        mixed = builder.quantize(chosen["amax"], budget["float_groups"])
        qat_run = out / f"qat{bits}"
        if not (qat_run / "best.pt").is_file():
            run(
                "glimmer-train",
                str(data),
                "--out",
                str(qat_run),
                "--qat-from",
                str(out / "run" / "best.pt"),
                "--epochs",
                str(args.qat_epochs),
                "--weight-bits",
                str(bits),
                "--workers",
                "2",
            )
        run(
            "glimmer-export",
            str(qat_run / "best.pt"),
            "--out",
            str(qat_run),
            "--name",
            "qat",
            "--int8",
            "--val",
            str(data / "Val"),
            "--int8-max-drop",
            "1",
            "--dilation-mode",
            "aligned",
            "--latency-runs",
            "5",
        )
        qat = onnx.load(str(qat_run / "qat.int8.onnx"))
        for name, model, floats, val_f1 in (
            (
                f"PTQ ({chosen['method']})",
                ptq,
                [],
                chosen["f1_simulated_by_method"][chosen["method"]],
            ),
            (
                f"mixed precision (budget {BUDGET})",
                mixed,
                budget["float_groups"],
                budget["f1_simulated"],
            ),
            (f"QAT ({args.qat_epochs} epochs)", qat, [], test_f1(qat, val, True)),
        ):
            sim = test_f1(model, test, True)
            rows.append(
                {
                    "weight_bits": bits,
                    "method": name,
                    "float_groups": floats,
                    "val_f1_simulated": val_f1,
                    "test_f1_simulated": sim,
                    "test_f1_onnxruntime_cpu": test_f1(model, test, False),
                    "test_drop_simulated": fp32_test - sim,
                }
            )
    result = {
        "fp32_test_f1": fp32_test,
        "fp32_val_f1": builder.fp32_f1,
        "rows": rows,
        "test_images": len(test.truth),
        "val_images": len(val.truth),
        "machine": {
            "cpu": cpu_facts().description,
            "processor": platform.processor() or platform.machine(),
        },
    }
    (out / "int8-accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"FP32: Test weighted F1 {fp32_test:.4f} ({len(test.truth)} images; Val {len(val.truth)})",
        "",
        "| weights | method | layer groups left float | Val F1 (sim.) | "
        "Test F1 simulated | Test F1 ORT CPU | "
        "Test drop |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            "| {} bit | {} | {} | {:.4f} | {:.4f} | {:.4f} | {:+.4f} |".format(
                r["weight_bits"],
                r["method"],
                ", ".join(r["float_groups"]) or "none",
                r["val_f1_simulated"],
                r["test_f1_simulated"],
                r["test_f1_onnxruntime_cpu"],
                r["test_drop_simulated"],
            )
        )
    lines.append(f"\nCPU: {cpu_facts().description}")
    (out / "int8-accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, fp32_test, out / "int8-accuracy.png")
    return 0


def plot(rows: List[Dict[str, Any]], fp32: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = [f"{r['weight_bits']}b {r['method'].split(' (')[0]}" for r in rows]
    ax.bar(range(len(rows)), [r["test_f1_simulated"] for r in rows], color="tab:blue")
    ax.axhline(fp32, color="tab:green", linestyle="--", label=f"FP32 {fp32:.3f}")
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right")
    ax.set_ylabel("Test weighted F1 (Q/DQ simulated)")
    low = min([fp32] + [r["test_f1_simulated"] for r in rows])
    ax.set_ylim(max(0.0, low - 0.05), 1.005)
    ax.set_title("GlimmerNet INT8: PTQ vs mixed precision vs QAT")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
