"""TensorRT-style Q/DQ placement: exact op histograms, conventions, and what ONNX Runtime makes of
it (simulated in float with the Q/DQ fusion off vs its fusion on)."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from random_weights import randomise

from glimmer.calibration.qdq import (
    insert_qdq,
    qdq_layers,
    qmax,
    quant_targets,
    weight_scales,
    zero_points_all_zero,
)
from glimmer.export.deploy_model import deploy_form
from glimmer.export.onnx_export import export_onnx
from glimmer.export.verify import ort_session
from glimmer.models.glimmernet import GlimmerNet

FLOAT_OPS = {
    "Add",
    "Mul",
    "Div",
    "Sqrt",
    "ReduceMean",
    "Concat",
    "Reshape",
    "Transpose",
    "GlobalAveragePool",
    "MaxPool",
    "AveragePool",
    "Clip",
    "Flatten",
}


@pytest.fixture(scope="module")
def tiny_onnx():
    torch.manual_seed(0)
    net = randomise(GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)))
    return export_onnx(
        deploy_form(net, "embed", (64, 64)), torch.zeros(1, 3, 64, 64), output_names=("logits",)
    )


def test_placement_quantises_conv_and_gemm_inputs_and_weights_only(tiny_onnx):
    targets = quant_targets(tiny_onnx)
    # stem conv + stem depthwise + 4 GD convs (embed: one per block) + 4 Aggregators + Refiner +
    # head; the 4 GRN shift convs (unit 1x1 depthwise) are Adds and stay float.
    assert len(targets) == 12
    assert [t.op for t in targets].count("Gemm") == 1
    assert not any(".grn.shifts." in t.layer for t in targets)
    model = insert_qdq(tiny_onnx, {t.activation: 1.0 for t in targets})
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    activations = {t.activation for t in targets}
    assert ops["QuantizeLinear"] == ops["DequantizeLinear"] == len(activations) + len(targets) == 24
    before = Counter(n.op_type for n in tiny_onnx.graph.node)
    assert {
        op: n for op, n in ops.items() if op not in ("QuantizeLinear", "DequantizeLinear")
    } == dict(before)
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert consumers[node.output[0]] in ("Conv", "Gemm")
        if node.op_type in FLOAT_OPS:
            assert not any(i.endswith("_dequantized") for i in node.input), node.name
    assert zero_points_all_zero(model)
    assert sorted(qdq_layers(model)) == sorted(t.layer for t in targets)


def test_weights_are_per_channel_symmetric_int8(tiny_onnx):
    targets = quant_targets(tiny_onnx)
    model = insert_qdq(tiny_onnx, {t.activation: 2.0 for t in targets}, weight_bits=7)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in targets:
        q = next(
            n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == t.weight
        )
        scale, zero = inits[q.input[1]], inits[q.input[2]]
        weight = inits[t.weight]
        assert scale.shape == (weight.shape[t.axis],) and zero.dtype == np.int8 and not zero.any()
        codes = np.round(
            np.moveaxis(weight, t.axis, 0) / scale.reshape(-1, *[1] * (weight.ndim - 1))
        )
        assert np.abs(codes).max() <= qmax(7) == 63  # reduce_range: 7-bit weights inside int8
    act = next(
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images"
    )
    assert inits[act.input[1]] == pytest.approx(2.0 / 127)


def test_missing_range_and_bad_bits_are_errors(tiny_onnx):
    with pytest.raises(ValueError, match="no calibrated range"):
        insert_qdq(tiny_onnx, {})
    with pytest.raises(ValueError, match="bits must be 2-8"):
        weight_scales(np.ones((2, 1, 3, 3), np.float32), 0, bits=9)


def _single_conv(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node(
                "Conv", ["x", "conv.weight", "conv.bias"], ["y"], name="conv", pads=[1, 1, 1, 1]
            )
        ],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1], 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight.shape[0], 8, 8])],
        [
            numpy_helper.from_array(weight, "conv.weight"),
            numpy_helper.from_array(np.zeros(weight.shape[0], np.float32), "conv.bias"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _optimised_ops(model: onnx.ModelProto, simulate: bool, tmp_path) -> Counter:
    path = tmp_path / f"optimised-{simulate}.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(path)
    if simulate:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


INTEGER_OPS = {
    "QLinearConv",
    "ConvInteger",
    "NhwcQLinearConv",
    "QGemm",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
}


def test_simulated_mode_is_the_float_maths_of_the_grids():
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    model = insert_qdq(_single_conv(weight), {"x": 1.0})
    x = rng.uniform(-1, 1, (1, 4, 8, 8)).astype(np.float32)
    # the reference: quantise x and w on their grids, then an ordinary float convolution
    xq = np.clip(np.round(x / (1.0 / 127)), -128, 127) * (1.0 / 127)
    scale = weight_scales(weight, 0).reshape(-1, 1, 1, 1)
    wq = np.round(weight / scale) * scale
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(xq.astype(np.float32)), torch.from_numpy(wq.astype(np.float32)), padding=1
    ).numpy()
    simulated = ort_session(model.SerializeToString(), simulate_qdq=True).run(None, {"x": x})[0]
    np.testing.assert_allclose(simulated, expected, atol=1e-5)


def test_tensorrt_placement_never_reaches_onnxruntime_integer_kernels(tiny_onnx, tmp_path):
    """ONNX Runtime fuses a Q/DQ group into an integer kernel only when the conv's output is
    quantised too; TensorRT placement leaves outputs float, so the CPU (VNNI or not) runs float
    convs on dequantised values: the same figures on every build machine."""
    targets = quant_targets(tiny_onnx)
    model = insert_qdq(tiny_onnx, {t.activation: 3.0 for t in targets})
    assert not _optimised_ops(model, False, tmp_path).keys() & INTEGER_OPS
    x = np.random.default_rng(1).uniform(0, 1, (1, 3, 64, 64)).astype(np.float32)
    fused = ort_session(model.SerializeToString()).run(None, {"images": x})[0]
    simulated = ort_session(model.SerializeToString(), simulate_qdq=True).run(None, {"images": x})[
        0
    ]
    np.testing.assert_allclose(fused, simulated, atol=1e-4)


def test_a_quantised_conv_output_does_become_an_integer_kernel(tmp_path):
    """The control for the test above: with a Q/DQ after the conv (the placement ONNX Runtime's own
    quantiser writes), the fusion happens and the CPU's integer kernels run."""
    weight = np.random.default_rng(0).normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32)
    model = insert_qdq(_single_conv(weight), {"x": 1.0})
    graph = model.graph
    graph.node[-1].output[0] = "y_float"
    graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"))
    graph.node.extend(
        [
            helper.make_node(
                "QuantizeLinear", ["y_float", "y_scale", "qdq_zero_point_int8"], ["y_q"]
            ),
            helper.make_node("DequantizeLinear", ["y_q", "y_scale", "qdq_zero_point_int8"], ["y"]),
        ]
    )
    assert _optimised_ops(model, False, tmp_path).keys() & INTEGER_OPS
    assert not _optimised_ops(model, True, tmp_path).keys() & INTEGER_OPS
