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
from glimmer.export.lower_dilation import lower_embed, lower_split, merge_runs
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
from glimmer.runtime.metadata import ModelMeta


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


class GDWithBN(nn.Module):
    def __init__(self, channels, dilations):
        super().__init__()
        self.gd = GroupedDilatedConv2d(channels, dilations)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return self.bn(self.gd(x))


@pytest.mark.parametrize("with_bn", [True, False])
@pytest.mark.parametrize("dilations,split_convs", [((1, 2, 2, 3), 3), ((1, 1, 2, 2), 2), ((3, 1), 2), ((2,), 1)])
def test_dilation_lowering_matches_grouped_dilated_conv(with_bn, dilations, split_convs):
    original = randomise(GDWithBN(8 * len(dilations), dilations), seed=len(dilations))
    with torch.no_grad():
        for conv in original.gd.convs:
            conv.weight.normal_()
            conv.bias.normal_()
    bn = original.bn if with_bn else None
    x = torch.randn(2, original.gd.channels, 11, 9)
    want = plain_onnx(original if with_bn else original.gd, x)

    split = export_onnx(lower_split(original.gd, bn), x)
    hist = op_histogram(split)
    assert hist["Conv"] == split_convs
    assert hist.get("Split", 0) == hist.get("Concat", 0) == (1 if split_convs > 1 else 0)
    for node in split.graph.node:
        if node.op_type == "Conv":
            attrs = {a.name: a for a in node.attribute}
            assert "auto_pad" not in attrs
            d = attrs["dilations"].ints[0]
            assert list(attrs["pads"].ints) == [d] * 4  # explicit symmetric "same" padding
    np.testing.assert_allclose(ort_session(split.SerializeToString()).run(None, {"images": x.numpy()})[0],
                               want, atol=1e-5)

    embed_module = lower_embed(original.gd, bn)
    assert embed_module.kernel_size == (2 * max(dilations) + 1,) * 2
    embed = export_onnx(embed_module, x)
    assert op_histogram(embed) == {"Conv": 1}
    np.testing.assert_allclose(ort_session(embed.SerializeToString()).run(None, {"images": x.numpy()})[0],
                               want, atol=1e-5)


# Default GlimmerNet (4,4,4,1) blocks, 4 stages: stem 2 convs + 13 GDBlocks + 4 Aggregators + Refiner.
EXPECTED = {
    "split": {"Add": 25, "AveragePool": 1, "Clip": 45, "Concat": 17, "Conv": 46, "Div": 4, "Flatten": 1,
              "Gemm": 1, "GlobalAveragePool": 5, "MaxPool": 3, "Mul": 12, "ReduceMean": 4, "Reshape": 12,
              "Split": 13, "Sqrt": 4, "Transpose": 4},
    "embed": {"Add": 25, "AveragePool": 1, "Clip": 19, "Concat": 4, "Conv": 20, "Div": 4, "Flatten": 1,
              "Gemm": 1, "GlobalAveragePool": 5, "MaxPool": 3, "Mul": 12, "ReduceMean": 4, "Reshape": 12,
              "Sqrt": 4, "Transpose": 4},
}


@pytest.fixture(scope="module")
def default_glimmernet():
    torch.manual_seed(0)
    return randomise(GlimmerNet())


@pytest.mark.parametrize("mode", ["split", "embed"])
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
@pytest.mark.parametrize("mode", ["split", "embed"])
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
