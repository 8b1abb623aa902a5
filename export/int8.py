"""INT8 for glimmer-export: calibrate, place TensorRT-style Q/DQ, and hold an accuracy budget.

The Q/DQ model (placement and conventions in :mod:`glimmer.calibration.qdq`) is what every TensorRT
from 8.x to 11 builds. Its accuracy is measured two ways, because they differ on some CPUs:

- ``simulated``: ONNX Runtime with its Q/DQ fusion off (``session.disable_quant_qdq``), so each
  Quantize/Dequantize runs as written and the convs run in float: what TensorRT computes, up to
  rounding, and the same on every build machine. Budgets and choices use this figure.
- ``onnxruntime_cpu``: the same file as glimmer-run runs it on this CPU (its ``int8_kernels``
  policy), reported with the CPU's features and the count of nodes ONNX Runtime would fuse into
  integer kernels. Where it does fuse (Q/DQ files whose conv outputs are quantised) x86 CPUs
  without VNNI saturate u8*s8 pair sums in int16 and lose accuracy a Jetson does not; TensorRT
  placement never fuses, so this figure equals the simulated one on every CPU.

With a labelled ``--val`` set the export measures every calibration method and keeps the one that
loses least, then, if the drop from FP32 is still over ``--int8-max-drop``, measures each layer
group quantised alone and leaves the most sensitive groups in float until the budget holds
(TensorRT then runs them in FP16 with ``--fp16`` builder flags).
"""

import contextlib
import dataclasses
import io
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import onnx

from glimmer.calibration.qdq import QuantTarget, insert_qdq, quant_targets
from glimmer.calibration.ranges import METHODS, activation_amax
from glimmer.runtime.core.metadata import ModelMeta

from .onnx_export import INPUT_NAME


def layer_group(layer: str) -> str:
    """The unit of mixed precision: a GlimmerNet block (``stages.0.blocks.1``), an Aggregator, the
    stem, the refiner, the head; for other models (YOLOv8: ``model.12...``) the top-level module."""
    match = re.match(r"(stages\.\d+\.(?:blocks\.\d+|aggregator))", layer)
    if match:
        return match.group(1)
    if layer.startswith("stem.parts."):
        return "stem.conv" if layer.split(".")[3] == "0" else "stem.dw"
    parts = layer.split(".")
    return ".".join(parts[:2]) if parts[0] == "model" and len(parts) > 1 else parts[0]


def tensorrt_int8(target: QuantTarget, groups: int) -> str:
    """Whether TensorRT can run the layer in INT8, per its documentation (not measured here)."""
    if target.op != "Conv" or groups == 1:
        return "int8"
    if target.channels_per_group == 1:
        return "fp16: depthwise convolution (no INT8 gain on TensorRT)"
    if target.channels_per_group % 4:
        return (
            f"fp16: grouped convolution with {target.channels_per_group} channels per group "
            "(INT8 needs a multiple of 4)"
        )
    return "int8"


def _groups(model: onnx.ModelProto) -> Dict[str, int]:
    out = {}
    for node in model.graph.node:
        for a in node.attribute:
            if a.name == "group":
                out[node.name] = int(onnx.helper.get_attribute_value(a))
    return out


def layer_table(
    model: onnx.ModelProto, targets: Sequence[QuantTarget], float_groups: Sequence[str]
) -> List[Dict[str, Any]]:
    """One row per quantisable layer: its group, whether it stayed float, TensorRT's INT8
    support."""
    groups = _groups(model)
    return [
        {
            "layer": t.layer,
            "group": layer_group(t.layer),
            "op": t.op,
            "precision": "float" if layer_group(t.layer) in float_groups else "int8",
            "tensorrt": tensorrt_int8(t, groups.get(t.node, 1)),
        }
        for t in targets
    ]


class Int8Builder:
    """Quantises one FP32 model many ways and scores each; keeps every figure for the report.

    Args:
        fp32: the verified FP32 ONNX.
        score: weighted F1 of a model, run ``simulated`` or with this CPU's integer kernels;
            None without a labelled set.
        log: progress lines.
    """

    def __init__(
        self,
        fp32: onnx.ModelProto,
        score: Optional[Callable[[onnx.ModelProto, bool], float]],
        log: Callable[[str], None] = lambda line: None,
        weight_bits: int = 8,
    ) -> None:
        self.fp32 = fp32
        self.weight_bits = weight_bits
        self.score = score
        self.log = log
        self.targets = quant_targets(fp32)
        self.activations = sorted({t.activation for t in self.targets})
        self.fp32_f1 = score(fp32, False) if score else None

    def amax(self, calib, method: str) -> Dict[str, float]:
        # ORT's entropy calibrator prints its progress to stdout: keep the CLI's output ours.
        with contextlib.redirect_stdout(io.StringIO()):
            return activation_amax(self.fp32, self.activations, calib, method, INPUT_NAME)

    def quantize(
        self,
        amax: Mapping[str, float],
        float_groups: Sequence[str] = (),
        weight_bits: Optional[int] = None,
    ) -> onnx.ModelProto:
        chosen = [t for t in self.targets if layer_group(t.layer) not in float_groups]
        return insert_qdq(self.fp32, amax, chosen, weight_bits or self.weight_bits)

    def choose_method(self, calib, methods: Sequence[str]) -> Dict[str, Any]:
        """Calibrate with each method; keep the one with the highest simulated F1 (ties: the
        first of ``methods``, MinMax before Percentile before Entropy)."""
        table: Dict[str, Any] = {}
        ranges = {}
        for method in methods:
            self.log(f"calibrating INT8 ranges: {method}")
            ranges[method] = self.amax(calib, method)
            if self.score is not None:
                table[method] = self.score(self.quantize(ranges[method]), True)
        best = max(methods, key=lambda m: (table.get(m, 0.0), -list(methods).index(m)))
        return {"method": best, "amax": ranges[best], "f1_simulated_by_method": table}

    def fit_budget(self, amax: Mapping[str, float], max_drop: float) -> Dict[str, Any]:
        """Mixed precision: leave the most sensitive layer groups in float until the simulated
        weighted F1 is within ``max_drop`` of FP32 (needs a labelled set)."""
        assert self.score is not None and self.fp32_f1 is not None
        full = self.score(self.quantize(amax), True)
        record: Dict[str, Any] = {
            "max_drop": max_drop,
            "f1_all_int8": full,
            "float_groups": [],
            "sensitivity": {},
        }
        groups = list(dict.fromkeys(layer_group(t.layer) for t in self.targets))
        self.log(f"INT8 sensitivity: {len(groups)} layer groups, each quantised alone")
        for group in groups:
            others = [g for g in groups if g != group]
            record["sensitivity"][group] = self.fp32_f1 - self.score(
                self.quantize(amax, others), True
            )
        order = sorted(groups, key=lambda g: (-record["sensitivity"][g], groups.index(g)))
        floats: List[str] = []
        f1 = full
        for group in order:
            if self.fp32_f1 - f1 <= max_drop:
                break
            floats.append(group)
            f1 = self.score(self.quantize(amax, floats), True)
            self.log(f"  {group} left in float: simulated F1 {f1:.4f}")
        record.update(
            float_groups=floats,
            f1_simulated=f1,
            drop_simulated=self.fp32_f1 - f1,
            budget_met=self.fp32_f1 - f1 <= max_drop,
        )
        return record


def int8_meta(meta: ModelMeta, record: Mapping[str, Any]) -> Dict[str, Any]:
    """What the runtime needs to know about an INT8 file: weight grid, placement, origin of
    scales."""
    return {
        "weight_bits": int(record.get("weight_bits", 8)),
        "placement": "tensorrt (Conv/Gemm inputs and weights)",
        "scales": record.get("scales", "calibration"),
        "calibration": record.get("method"),
        "float_groups": list(record.get("float_groups", [])),
    }


def quantize_ptq(
    fp32: onnx.ModelProto, calib, method: str = "minmax", weight_bits: int = 8
) -> onnx.ModelProto:
    """Post-training quantisation of every Conv / Gemm with one calibration method, no budget."""
    builder = Int8Builder(fp32, None)
    return builder.quantize(builder.amax(calib, method), weight_bits=weight_bits)


def build_int8(
    fp32: onnx.ModelProto,
    meta: ModelMeta,
    reference,
    *,
    calib=None,
    val=None,
    qat: Optional[Mapping[str, Any]] = None,
    method: str = "auto",
    max_drop: float,
    latency_runs: int = 100,
    log: Callable[[str], None] = lambda line: None,
) -> Tuple[onnx.ModelProto, Dict[str, Any]]:
    """The INT8 Q/DQ model of ``fp32`` and its report record (nothing is written here).

    Scales come from ``qat`` (a quantization-aware-trained checkpoint's) or from ``calib``; with a
    labelled ``val`` set the calibration method is chosen and the accuracy budget enforced.
    """
    from glimmer.runtime.backends.ort.int8 import describe_int8, int8_policy
    from glimmer.runtime.core.cpu import cpu_facts

    from .onnx_export import attach_metadata
    from .verify import compare, integer_kernels, latency_input, latency_ms, ort_session, score

    def f1(model: onnx.ModelProto, simulated: bool) -> float:
        return score(ort_session(model.SerializeToString(), simulate_qdq=simulated), val)[
            "f1_weighted"
        ]

    weight_bits = int(qat.get("weight_bits", 8)) if qat else 8
    builder = Int8Builder(fp32, f1 if val is not None else None, log, weight_bits)
    record: Dict[str, Any] = {
        "placement": "tensorrt: Q/DQ on the inputs and weights of Conv and Gemm, "
        "symmetric, per-channel weights, float elsewhere"
    }
    if qat:
        from .qat import qat_activation_amax

        amax = qat_activation_amax(fp32, qat)
        record["scales"] = "quantization-aware training"
        record["qat"] = {k: v for k, v in qat.items() if k != "activation_amax"}
    else:
        methods = (
            list(METHODS)
            if method == "auto" and val is not None
            else ["minmax" if method == "auto" else method]
        )
        chosen = builder.choose_method(calib, methods)
        amax = chosen["amax"]
        record["scales"] = "calibration"
        record["calibration"] = {
            "dir": str(calib.root),
            "images": calib.count,
            "unreadable_skipped": len(calib.skipped),
            "method": chosen["method"],
            "requested": method,
            "f1_simulated_by_method": chosen["f1_simulated_by_method"],
        }
    float_groups: List[str] = []
    if val is not None:
        record["budget"] = builder.fit_budget(amax, max_drop)
        float_groups = record["budget"]["float_groups"]
    else:
        record["budget"] = {
            "max_drop": max_drop,
            "checked": False,
            "reason": "no --val: accuracy not measured",
        }
    record["weight_bits"] = weight_bits
    record["method"] = record.get("calibration", {}).get("method")
    record["float_groups"] = float_groups
    model = builder.quantize(amax, float_groups)
    int8_meta_ = dataclasses.replace(
        meta, precision="int8", extra=dict(meta.extra, int8=int8_meta(meta, record))
    )
    attach_metadata(model, int8_meta_)
    record["layers"] = layer_table(fp32, builder.targets, float_groups)
    on_trt = sum(
        1 for row in record["layers"] if row["precision"] == "int8" and row["tensorrt"] == "int8"
    )
    record["tensorrt_int8_layers"] = {"int8": on_trt, "of": len(record["layers"])}

    cpu = cpu_facts()
    mode, why = int8_policy(int8_meta_, cpu, "auto")  # what glimmer-run does with this file here
    record["onnxruntime_cpu_execution"] = describe_int8(mode, why)
    simulated = ort_session(model.SerializeToString(), simulate_qdq=True)
    kernels = ort_session(model.SerializeToString(), simulate_qdq=mode == "simulated")
    # Agreement on the images INT8 is calibrated for (noise lies outside the calibrated ranges).
    images = {
        "val" if val is not None else "calibration": _even(
            val.inputs if val is not None else calib.data, meta.batch
        )
    }
    record["vs_pytorch"] = dict(
        compare(reference, simulated, meta, inputs=images), how=SIMULATED_HOW
    )
    record["vs_pytorch_onnxruntime_cpu"] = dict(
        compare(reference, kernels, meta, inputs=images), how=KERNELS_HOW, cpu=cpu.description
    )
    record["latency"] = latency_ms(kernels, latency_input(meta), latency_runs)
    if val is not None:
        accuracy: Dict[str, Any] = {"fp32": builder.fp32_f1}
        accuracy["int8_simulated"] = dict(score(simulated, val), how=SIMULATED_HOW)
        accuracy["int8_onnxruntime_cpu"] = dict(
            score(kernels, val),
            how=KERNELS_HOW,
            cpu=cpu.description,
            cpu_saturates_u8s8=cpu.saturates,
            execution=record["onnxruntime_cpu_execution"],
            integer_kernels=integer_kernels(model.SerializeToString()),
        )
        if weight_bits > 7:
            narrow = builder.quantize(amax, float_groups, 7)
            accuracy["int8_reduce_range_simulated"] = dict(
                f1_weighted=f1(narrow, True),
                how=(
                    "7-bit weights (ONNX Runtime's reduce_range), simulated: "
                    "what fused kernels compute on x86 "
                    "without VNNI, where 8-bit weights saturate"
                ),
            )
        record["accuracy"] = accuracy
    return model, record


def _even(x, batch: Optional[int]):
    """``x`` cut to whole static batches (a dynamic batch is checked at 2, as the FP32 check is)."""
    size = batch or 2
    return x[: max(size, len(x) // size * size)]


SIMULATED_HOW = (
    "Q/DQ simulated in float (ONNX Runtime with Q/DQ fusion off): "
    "what TensorRT computes, up to rounding"
)
KERNELS_HOW = (
    "ONNX Runtime CPU as glimmer-run runs the file on this machine (int8_kernels auto: see "
    "execution); integer_kernels: the nodes ONNX Runtime fuses into integer arithmetic when "
    "its Q/DQ fusion is on"
)


def summary_lines(record: Mapping[str, Any]) -> List[str]:
    """INT8 lines for glimmer-export's summary."""
    lines = []
    calib = record.get("calibration")
    if calib and calib.get("f1_simulated_by_method"):
        table = ", ".join(f"{k} {v:.4f}" for k, v in calib["f1_simulated_by_method"].items())
        lines.append(f"INT8 calibration: {table} (simulated weighted F1) -> {calib['method']}")
    elif calib:
        lines.append(f"INT8 calibration: {calib['method']}, {calib['images']} images")
    else:
        lines.append("INT8 scales: from quantization-aware training")
    accuracy = record.get("accuracy")
    if accuracy:
        sim = accuracy["int8_simulated"]["f1_weighted"]
        cpu = accuracy["int8_onnxruntime_cpu"]
        lines.append(
            f"INT8 weighted F1: fp32 {accuracy['fp32']:.4f}, "
            f"int8 simulated (as TensorRT) {sim:.4f}, "
            f"ONNX Runtime CPU {cpu['f1_weighted']:.4f} on {cpu['cpu']} "
            f"({cpu['integer_kernels']} nodes as integer kernels)"
        )
        budget = record["budget"]
        floats = ", ".join(budget["float_groups"]) or "none"
        lines.append(
            f"INT8 budget: drop {budget['drop_simulated']:.4f} <= {budget['max_drop']} "
            f"({'met' if budget['budget_met'] else 'NOT met'}); layers left float: {floats}"
        )
    else:
        lines.append("INT8 accuracy: not measured (no --val)")
    trt = record["tensorrt_int8_layers"]
    lines.append(
        f"TensorRT runs {trt['int8']} of {trt['of']} quantised layers in INT8 (the rest FP16: "
        "depthwise or odd-group convs, per its docs; see the report's layers)"
    )
    return lines
