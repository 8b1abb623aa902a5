"""fold_bn: conv -> BN (-> ReLU6) against its folded conv (-> Clip), in PyTorch and ONNX Runtime,
parameterised over bias, groups, dilation and stride."""

import numpy as np
import pytest
import torch
from random_weights import randomise
from rewrite_parity import plain_onnx
from torch import nn

from glimmer.export.onnx_export import export_onnx, op_histogram
from glimmer.export.rewrites.fold_bn import ConvClip, bn_scale_shift, fold_conv_bn, fold_conv_bn_act
from glimmer.export.verify import ort_session
from glimmer.models.glimmernet import Refiner
from glimmer.models.layers import conv_bn_act

CASES = [(1, 1, 1), (1, 2, 2), (8, 1, 1), (8, 3, 1)]


def conv_and_bn(bias, groups, dilation, stride):
    conv = nn.Conv2d(
        8,
        8 if groups == 8 else 16,
        3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=groups,
        bias=bias,
    )
    bn = nn.BatchNorm2d(conv.out_channels)
    return conv, bn


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups,dilation,stride", CASES)
def test_fold_bn_matches_conv_then_bn_in_onnxruntime(bias, groups, dilation, stride):
    conv, bn = conv_and_bn(bias, groups, dilation, stride)
    original = randomise(nn.Sequential(conv, bn))
    folded = fold_conv_bn(conv, bn)
    x = torch.randn(2, 8, 13, 13)
    rewritten = export_onnx(folded, x)
    assert op_histogram(rewritten) == {"Conv": 1}
    out = ort_session(rewritten.SerializeToString()).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, plain_onnx(original, x), atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("groups,dilation,stride", CASES)
@pytest.mark.parametrize("with_bn", [True, False])
def test_fold_bn_matches_conv_then_bn_in_pytorch(bias, groups, dilation, stride, with_bn):
    conv, bn = conv_and_bn(bias, groups, dilation, stride)
    original = randomise(nn.Sequential(conv, bn) if with_bn else nn.Sequential(conv))
    before = {k: v.clone() for k, v in original.state_dict().items()}
    folded = fold_conv_bn(conv, bn if with_bn else None)
    assert folded.bias is not None and not folded.training
    x = torch.randn(2, 8, 13, 13)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), original(x), atol=1e-5, rtol=1e-5)
    assert all(
        torch.equal(v, before[k]) for k, v in original.state_dict().items()
    )  # originals untouched


def test_bn_scale_shift_is_bn_in_eval_mode():
    bn = randomise(nn.BatchNorm2d(6))
    scale, shift = bn_scale_shift(bn)
    y = torch.randn(3, 6, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(
            (y * scale[:, None, None] + shift[:, None, None]).float(), bn(y), atol=1e-6, rtol=1e-6
        )
    bn.running_var = None
    with pytest.raises(ValueError, match="running statistics"):
        bn_scale_shift(bn)


@pytest.mark.parametrize(
    "module,clip",
    [
        (conv_bn_act(8, 16, 3, stride=2, padding=2, dilation=2), True),
        (conv_bn_act(8, 8, 3, padding=1, groups=8), True),
        (conv_bn_act(8, 16, 1, groups=4, act=False), False),
        (Refiner(8), False),
    ],
)
def test_conv_bn_act_becomes_conv_clip(module, clip):
    original = randomise(module)
    rewritten = fold_conv_bn_act(original)
    assert isinstance(rewritten, ConvClip) and rewritten.clip is clip
    x = 4 * torch.randn(2, 8, 9, 9)  # wide enough that ReLU6 clips both ends
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), original(x), atol=1e-5, rtol=1e-5)
    outputs_onnx = export_onnx(rewritten, x)
    assert op_histogram(outputs_onnx) == ({"Clip": 1, "Conv": 1} if clip else {"Conv": 1})
    out = ort_session(outputs_onnx.SerializeToString()).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, plain_onnx(original, x), atol=1e-5)


@pytest.mark.parametrize(
    "module",
    [
        nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1)),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 1)),
    ],
)
def test_fold_conv_bn_act_rejects_other_layouts(module):
    with pytest.raises(ValueError, match="conv -> BatchNorm"):
        fold_conv_bn_act(module)
