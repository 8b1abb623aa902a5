"""Benchmark: GlimmerNet at batch 1 on this CPU, PyTorch eager vs ONNX Runtime forms.

Times, single-threaded and with all cores, in one run on one machine: PyTorch eager (the training
model), the plain ``torch.onnx.export`` of the training model, our ``split``, ``aligned`` and
``embed`` export forms, and the INT8 Q/DQ form of the fastest (calibrated on synthetic scenes; run
with ONNX Runtime's Q/DQ fusion off, as glimmer-run runs it).
Prints a markdown table and the ratios set as targets for the fastest form (the one
``glimmer-export --dilation-mode auto`` keeps): >= 1.3x faster than the plain export and >= 4x
faster than eager, single-threaded. Weights are randomised (latency does not depend on them).

    .venv/bin/python benchmarks/export_latency.py [--img-size 224] [--runs 300]
"""

import argparse
import io
import os
import platform
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from glimmer.calibration.dataset import CalibrationSet
from glimmer.export.deploy_model import deploy_form
from glimmer.export.int8 import quantize_ptq
from glimmer.export.onnx_export import export_onnx
from glimmer.export.rewrites.dilation import MODES
from glimmer.export.verify import ort_session
from glimmer.models.glimmernet import GlimmerNet
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.timing import median_ms
from glimmer.train.synthetic import CLASSES, make_scene_dataset

WARMUP = 20


def single_thread_ms(blob: bytes, feed: np.ndarray, runs: int = 100) -> float:
    session = ort_session(blob, 1)
    return median_ms(lambda: session.run(None, {"images": feed}), runs, WARMUP)


def plain_export(model: torch.nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["images"])
    return buf.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    size = args.img_size
    torch.manual_seed(0)
    model = GlimmerNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    x = torch.rand(1, 3, size, size)
    feed = x.numpy()
    meta = ModelMeta(
        task="classify", name="glimmernet", class_names=list(CLASSES), input_size=(size, size)
    )

    forms = {"plain torch.onnx.export": plain_export(model, x)}
    for mode in MODES:
        forms[mode] = export_onnx(
            deploy_form(model, mode, (size, size)), x, output_names=("logits",)
        ).SerializeToString()
    fastest = min(
        MODES, key=lambda mode: single_thread_ms(forms[mode], feed)
    )  # which one to quantise
    with tempfile.TemporaryDirectory() as tmp:
        make_scene_dataset(Path(tmp), {"Train": 16}, size=size)
        calib = CalibrationSet(Path(tmp) / "Train", meta, 64)
        import onnx

        fp32 = onnx.load_from_string(forms[fastest])
        forms[f"INT8 Q/DQ ({fastest})"] = quantize_ptq(fp32, calib).SerializeToString()

    cores = os.cpu_count() or 1
    rows = []
    for threads in (1, cores):
        torch.set_num_threads(threads)
        row = {}
        with torch.no_grad():
            row["PyTorch eager"] = median_ms(lambda: model(x), max(50, args.runs // 3), WARMUP)
        for name, blob in forms.items():
            # INT8 as glimmer-run runs a TensorRT-placement file: Q/DQ fusion off, weights folded
            session = ort_session(blob, threads, simulate_qdq=name.startswith("INT8"))
            row[name] = median_ms(
                lambda s=session: s.run(None, {"images": feed}), args.runs, WARMUP
            )
        rows.append((threads, row))

    print(
        f"GlimmerNet (default, 31,204 params) at {size}x{size}, batch 1; "
        f"{platform.processor() or platform.machine()}, "
        f"{cores} cores; torch {torch.__version__}, "
        f"onnxruntime {__import__('onnxruntime').__version__}; "
        f"median of {args.runs} runs\n"
    )
    names = list(rows[0][1])
    print(
        "| form | " + " | ".join(f"{t} thread{'s' if t > 1 else ''} (ms)" for t, _ in rows) + " |"
    )
    print("|---|" + "---|" * len(rows))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{r[name]:.3f}" for _, r in rows) + " |")
    one = rows[0][1]
    best = min(MODES, key=lambda k: one[k])
    vs_plain = one["plain torch.onnx.export"] / one[best]
    vs_eager = one["PyTorch eager"] / one[best]
    print(f"\nsingle-threaded, best export form = {best}:")
    print(
        f"- vs plain export: {vs_plain:.2f}x "
        f"(target >= 1.3x: {'met' if vs_plain >= 1.3 else 'NOT met'})"
    )
    print(
        f"- vs PyTorch eager: {vs_eager:.2f}x "
        f"(target >= 4x: {'met' if vs_eager >= 4 else 'NOT met'})"
    )
    print(
        f"- INT8 vs FP32 ({fastest}): {one[fastest] / one[f'INT8 Q/DQ ({fastest})']:.2f}x "
        "(>1 means INT8 is faster on this CPU)"
    )


if __name__ == "__main__":
    main()
