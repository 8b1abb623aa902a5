"""TensorRT-style Q/DQ placement: quantise the inputs and weights of Conv and Gemm, nothing else.

TensorRT's guidance for explicitly quantized networks (its "Working with Quantized Types" chapter,
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html)
and the tools that follow it (pytorch-quantization, TensorRT Model Optimizer) put a
QuantizeLinear -> DequantizeLinear pair on the activation input and on the weight of each
convolution and GEMM, and leave every other op in float: TensorRT then fuses each Q/DQ group into
an INT8 kernel and propagates the scales itself. Quantising element-wise ops (the GRN's Mul, Div,
Sqrt, ReduceMean, the recombination's Concat) adds rounding without any INT8 kernel to gain.

Conventions, all as TensorRT requires: symmetric (zero point 0, int8), one scale per activation
tensor (``amax / 127``), one scale per output channel of a weight (``max|w_c| / qmax``), weights
kept float with a Q -> DQ pair (the form TensorRT 8.x's parser was built around; 10/11 read it too),
biases float. ``weight_bits`` below 8 narrows the weight grid inside int8 (7 bits is ONNX Runtime's
``reduce_range``, which keeps its u8*s8 kernels from saturating on x86 CPUs without VNNI).

A 1x1 depthwise conv with unit weights is an Add of its bias (the export writes GRN's ``+ beta``
that way for ONNX Runtime's layout): it is not quantised, like any other Add.
"""

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QUANTIZED_OPS = ("Conv", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantTarget:
    """One Conv / Gemm whose activation input and weight get Q/DQ pairs.

    ``layer`` is the module path the exporter gave the weight (``stages.0.blocks.1.convs.0``), the
    name used for layer groups, sensitivity tables and QAT scales.
    """

    node: str
    op: str
    activation: str
    weight: str
    axis: int
    layer: str
    channels_per_group: int  # input channels each output sees: 1 for a depthwise conv


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(helper.get_attribute_value(a))
    return default


def _is_channel_shift(node: onnx.NodeProto, weight: np.ndarray) -> bool:
    return (
        node.op_type == "Conv"
        and weight.ndim == 4
        and weight.shape[1:] == (1, 1, 1)
        and _attr(node, "group", 1) == weight.shape[0]
        and bool(np.all(weight == 1.0))
    )


def quant_targets(model: onnx.ModelProto) -> List[QuantTarget]:
    """Every Conv / Gemm with a constant weight, in graph order, except channel shifts."""
    inits = {t.name: t for t in model.graph.initializer}
    targets = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in QUANTIZED_OPS or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if _is_channel_shift(node, weight):
            continue
        if node.op_type == "Gemm":
            axis = 0 if _attr(node, "transB", 0) else 1
            per_group = weight.shape[1 - axis]
        else:
            axis = 0
            per_group = weight.shape[1]
        layer = (
            node.input[1][: -len(".weight")]
            if node.input[1].endswith(".weight")
            else (node.name or f"node{index}")
        )
        targets.append(
            QuantTarget(
                node.name or f"node{index}",
                node.op_type,
                node.input[0],
                node.input[1],
                axis,
                layer,
                int(per_group),
            )
        )
    return targets


def qmax(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit grid (127 for 8 bits, 63 for 7)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"quantisation bits must be 2-8, got {bits}")
    return 2 ** (bits - 1) - 1


def weight_scales(weight: np.ndarray, axis: int, bits: int = 8) -> np.ndarray:
    """Per-channel symmetric scales ``max|w_c| / qmax`` along ``axis`` (a zero channel gets 1)."""
    moved = np.moveaxis(np.asarray(weight, dtype=np.float32), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    return np.where(amax > 0, amax / qmax(bits), 1.0).astype(np.float32)


def activation_scale(amax: float) -> float:
    """Per-tensor symmetric int8 scale; a tensor that was always zero gets a harmless tiny one."""
    return float(amax) / 127.0 if amax > 0 else 1e-8


def insert_qdq(
    model: onnx.ModelProto,
    amax: Mapping[str, float],
    targets: Optional[Iterable[QuantTarget]] = None,
    weight_bits: int = 8,
) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ pairs on the activation and weight of each of ``targets``.

    Args:
        model: a float ONNX model (opset >= 13: per-axis QuantizeLinear).
        amax: calibrated ``max|x|`` of each activation tensor to quantise, by tensor name.
        targets: the layers to quantise (default: all of :func:`quant_targets`); a layer left out
            stays float (mixed precision).
        weight_bits: width of the weight grid (8; 7 for ONNX Runtime's reduce_range).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    chosen = list(quant_targets(model) if targets is None else targets)
    missing = sorted({t.activation for t in chosen} - set(amax))
    if missing:
        raise ValueError(f"no calibrated range for activation tensor(s): {', '.join(missing[:3])}")
    inits = {t.name: t for t in graph.initializer}
    zero = "qdq_zero_point_int8"
    new_inits: List[TensorProto] = [numpy_helper.from_array(np.array(0, dtype=np.int8), zero)]
    pairs: Dict[str, List[onnx.NodeProto]] = {}  # DQ output -> its (Q, DQ) nodes

    def pair(tensor: str, scale: np.ndarray, axis: Optional[int], zp_name: str) -> str:
        dq_out = f"{tensor}_dequantized"
        if dq_out in pairs:  # a tensor feeding several quantised layers gets one pair
            return dq_out
        scale_name = f"{tensor}_qdq_scale"
        new_inits.append(numpy_helper.from_array(scale, scale_name))
        extra = {"axis": axis} if axis is not None else {}
        pairs[dq_out] = [
            helper.make_node(
                "QuantizeLinear",
                [tensor, scale_name, zp_name],
                [f"{tensor}_quantized"],
                name=f"{tensor}_QuantizeLinear",
                **extra,
            ),
            helper.make_node(
                "DequantizeLinear",
                [f"{tensor}_quantized", scale_name, zp_name],
                [dq_out],
                name=f"{tensor}_DequantizeLinear",
                **extra,
            ),
        ]
        return dq_out

    by_name = {n.name: n for n in graph.node}
    for t in chosen:
        node = by_name[t.node]
        node.input[0] = pair(
            t.activation,
            np.array(activation_scale(amax[t.activation]), dtype=np.float32),
            None,
            zero,
        )
        if f"{t.weight}_dequantized" not in pairs:
            scales = weight_scales(numpy_helper.to_array(inits[t.weight]), t.axis, weight_bits)
            zp_name = f"{t.weight}_qdq_zero_point"
            new_inits.append(numpy_helper.from_array(np.zeros(len(scales), dtype=np.int8), zp_name))
            pair(t.weight, scales, t.axis, zp_name)
        node.input[1] = f"{t.weight}_dequantized"
    # Each pair goes right in front of its first consumer, which keeps the node list topological.
    ordered: List[onnx.NodeProto] = []
    for node in graph.node:
        for name in node.input:
            ordered.extend(pairs.pop(name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    return out


def qdq_layers(model: onnx.ModelProto) -> List[str]:
    """Layers (Conv / Gemm weights) that carry a Q/DQ pair in ``model``."""
    producers = {o: n for n in model.graph.node for o in n.output}
    layers = []
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS and len(node.input) > 1:
            dq = producers.get(node.input[1])
            if dq is not None and dq.op_type == "DequantizeLinear":
                name = dq.input[0]
                q = producers.get(name)
                base = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else name
                layers.append(base[: -len(".weight")] if base.endswith(".weight") else base)
    return layers


def zero_points_all_zero(model: onnx.ModelProto) -> bool:
    """True when every Q/DQ zero point is 0 (symmetric), as TensorRT requires."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is None or numpy_helper.to_array(zp).any():
                return False
    return True
