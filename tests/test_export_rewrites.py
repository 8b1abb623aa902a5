"""Export rewrites, each checked for numerical parity in ONNX Runtime (onnxscript-rewriter style:
original vs rewritten graph, parameterised over bias, groups and dilation), plus the exact op
histogram of the default GlimmerNet's export form."""
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from glimmer.export.deploy_model import deploy_form
from glimmer.export.fold_bn import fold_conv_bn
from glimmer.export.lower_dilation import aligned_sizes, lower_gd_conv, merge_runs, stream_sizes
from glimmer.export.onnx_export import (
    CRUFT_OPS,
    export_onnx,
    input_shape,
    op_histogram,
    unsupported_ops,
)
from glimmer.export.verify import compare, ort_session
from glimmer.models.glimmernet import GlimmerNet, TakuNet
from glimmer.models.layers import GroupedDilatedConv2d
from glimmer.runtime.core.metadata import ModelMeta


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and GRN parameters, so folding and GRN are really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            if hasattr(m, "gamma") and hasattr(m, "beta"):
                m.gamma.copy_(0.3 * torch.randn(m.gamma.shape, generator=gen))
                m.beta.copy_(0.1 * torch.randn(m.beta.shape, generator=gen))
    return module.eval()


def run_ort(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    model = export_onnx(module, x)
    return ort_session(model.SerializeToString()).run(None, {"images": x.numpy()})[0]


def plain_onnx(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """The original module, exported as is (BatchNormalization node kept)."""
    buf = io.BytesIO()
    torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups,dilation,stride", [(1, 1, 1), (1, 2, 2), (8, 1, 1), (8, 3, 1)])
def test_fold_bn_matches_conv_then_bn_in_onnxruntime(bias, groups, dilation, stride):
    conv = nn.Conv2d(8, 8 if groups == 8 else 16, 3, stride=stride, padding=dilation, dilation=dilation,
                     groups=groups, bias=bias)
    bn = nn.BatchNorm2d(conv.out_channels)
    original = randomise(nn.Sequential(conv, bn))
    folded = fold_conv_bn(conv, bn)
    x = torch.randn(2, 8, 13, 13)
    rewritten = export_onnx(folded, x)
    assert op_histogram(rewritten) == {"Conv": 1}
    out = ort_session(rewritten.SerializeToString()).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, plain_onnx(original, x), atol=1e-5)


def test_merge_runs_joins_equal_neighbours_only():
    assert merge_runs([10, 10, 10, 10], [1, 2, 2, 3]) == [(10, 1), (20, 2), (10, 3)]
    assert merge_runs([4, 4, 4], [2, 1, 2]) == [(4, 2), (4, 1), (4, 2)]
    assert merge_runs([8], [1]) == [(8, 1)]


def test_aligned_sizes_round_each_run_boundary_the_cheaper_way():
    assert aligned_sizes([10] * 4, [1, 2, 2, 3]) == [12, 16, 12]  # GlimmerNet's stage 1 (40 channels)
    assert aligned_sizes([20] * 4, [1, 2, 2, 3]) == [20, 40, 20]  # already multiples of 4: split
    assert aligned_sizes([6, 10], [1, 3]) == [8, 8]  # up: 8x49 + 8x9 taps beats 4x9 + 12x49
    assert aligned_sizes([10, 6], [1, 3]) == [8, 8]  # down, for the same reason
    assert aligned_sizes([2] * 4, [1, 2, 2, 3]) == [4, 4]  # boundaries that meet merge their streams
    assert aligned_sizes([40], [1]) == [40]


class GDWithBN(nn.Module):
    def __init__(self, channels, dilations):
        super().__init__()
        self.gd = GroupedDilatedConv2d(channels, dilations)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.gd(x))


class Streams(nn.Module):
    """A lowered GD conv on its own: split the input into the streams, one conv each, concat."""

    def __init__(self, convs):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    def forward(self, x):
        parts = torch.split(x, [c.in_channels for c in self.convs], dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts)], dim=1)


@pytest.mark.parametrize("with_bn", [True, False])
@pytest.mark.parametrize("dilations,width,split_convs", [((1, 2, 2, 3), 10, 3), ((1, 1, 2, 2), 8, 2), ((3, 1), 6, 2),
                                                         ((2,), 8, 1)])
def test_dilation_lowering_matches_grouped_dilated_conv(with_bn, dilations, width, split_convs):
    original = randomise(GDWithBN(width * len(dilations), dilations), seed=len(dilations))
    with torch.no_grad():
        for conv in original.gd.convs:
            conv.weight.normal_()
            conv.bias.normal_()
    bn = original.bn if with_bn else None
    gd = original.gd
    x = torch.randn(2, gd.channels, 11, 9)
    want = plain_onnx(original if with_bn else gd, x)

    for mode in ("split", "aligned", "embed"):
        convs = lower_gd_conv(gd, mode, bn)
        assert [c.in_channels for c in convs] == stream_sizes(gd, mode)
        if mode == "split":
            assert len(convs) == split_convs
            for conv in convs:  # explicit symmetric "same" padding, the group's own dilation
                assert conv.kernel_size == (3, 3) and conv.padding == conv.dilation
        if mode == "embed":
            assert len(convs) == 1 and convs[0].kernel_size == (2 * max(dilations) + 1,) * 2
        lowered = export_onnx(Streams(convs), x)
        for node in lowered.graph.node:
            assert all(a.name != "auto_pad" for a in node.attribute)
        np.testing.assert_allclose(ort_session(lowered.SerializeToString()).run(None, {"images": x.numpy()})[0],
                                   want, atol=1e-5, err_msg=mode)


# Default GlimmerNet (4,4,4,1) blocks, 4 stages: stem 2 convs + 13 GDBlocks + 4 Aggregators + Refiner.
_STREAMED = {"Add": 50, "AveragePool": 1, "Clip": 49, "Concat": 9, "Conv": 60, "Div": 4, "Flatten": 1, "Gemm": 1,
             "GlobalAveragePool": 5, "MaxPool": 3, "Mul": 12, "ReduceMean": 4, "Reshape": 12, "Split": 3, "Sqrt": 4,
             "Transpose": 4}
# split/aligned: 3 streams per stage. Conv: stem 2x3 + 13 blocks x 3 + 4 Aggregators + GRN unit convs
# (3 + 3 + 3 + 1) + Refiner = 60; Add: 39 residuals + 2 per GRN + the 3 stage inputs (x*s + beta).
# embed: one stream. Conv: 2 + 13 + 4 + 4 + 1 = 24; Add: 13 + 2 per GRN = 21.
EXPECTED = {
    "split": _STREAMED,
    "aligned": _STREAMED,
    "embed": {"Add": 21, "AveragePool": 1, "Clip": 19, "Concat": 4, "Conv": 24, "Div": 4, "Flatten": 1,
              "Gemm": 1, "GlobalAveragePool": 5, "MaxPool": 3, "Mul": 12, "ReduceMean": 4, "Reshape": 12,
              "Sqrt": 4, "Transpose": 4},
}


@pytest.fixture(scope="module")
def default_glimmernet():
    torch.manual_seed(0)
    return randomise(GlimmerNet())


@pytest.mark.parametrize("mode", ["split", "aligned", "embed"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_default_glimmernet_op_histogram_is_exact(default_glimmernet, mode, dynamic):
    model = export_onnx(deploy_form(default_glimmernet, mode, (224, 224)), torch.zeros(1, 3, 224, 224),
                        dynamic_batch=dynamic, output_names=("logits",))
    hist = op_histogram(model)
    assert hist == EXPECTED[mode]
    assert not any(op in hist for op in CRUFT_OPS + ("BatchNormalization", "Constant", "Identity"))
    assert unsupported_ops(model) == []
    assert model.opset_import[0].version == 17
    assert input_shape(model) == ([None, 3, 224, 224] if dynamic else [1, 3, 224, 224])
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("arch", ["glimmernet", "takunet"])
@pytest.mark.parametrize("mode", ["split", "aligned", "embed"])
def test_fp32_onnx_matches_pytorch_within_1e_4(arch, mode):
    torch.manual_seed(1)
    net = randomise(GlimmerNet() if arch == "glimmernet" else TakuNet(), seed=3)
    size = 96
    model = export_onnx(deploy_form(net, mode, (size, size)), torch.zeros(1, 3, size, size),
                        dynamic_batch=True, output_names=("logits",))
    check = compare(net, ort_session(model.SerializeToString()), ModelMeta(
        task="classify", name="t", class_names=list("abcd"), input_size=(size, size), batch=None), count=4)
    assert check["max_abs_diff_random"] <= 1e-4
    assert check["max_abs_diff_image_like"] <= 1e-4
    assert check["top1_agreement"] == 1.0
    assert check["max_abs_reference"] > 1e-2  # the logits are not trivially zero


def test_streams_run_from_stage_input_to_aggregator(default_glimmernet):
    """Per stage, the streams each GDBlock convolves: split at runs of equal dilation, aligned at
    multiples of 4 channels with the outer streams' foreign channels embedded, embed all at once."""
    shapes = {mode: [[(c.in_channels, c.kernel_size[0], c.dilation[0]) for c in stage.blocks[0].convs]
                     for stage in deploy_form(default_glimmernet, mode, (224, 224)).stages]
              for mode in ("split", "aligned", "embed")}
    assert shapes["split"][0] == [(10, 3, 1), (20, 3, 2), (10, 3, 3)]
    assert shapes["aligned"][0] == [(12, 5, 1), (16, 3, 2), (12, 7, 1)]
    assert shapes["split"][1:] == shapes["aligned"][1:] == [[(20, 3, 1), (40, 3, 2), (20, 3, 3)],
                                                            [(40, 3, 1), (80, 3, 2), (40, 3, 3)],
                                                            [(60, 3, 1), (120, 3, 2), (60, 3, 3)]]
    assert shapes["embed"] == [[(40, 7, 1)], [(80, 7, 1)], [(160, 7, 1)], [(240, 7, 1)]]
