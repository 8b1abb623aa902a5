"""output_slice: a conv's output channels as a conv of their own, and the stem cut that way into
streams, against the original conv / Stem, in PyTorch and ONNX Runtime, parameterised over dense or
depthwise, bias, stride, dilation and the stream sizes."""

import numpy as np
import pytest
import torch
from random_weights import randomise
from rewrite_parity import onnx_outputs
from torch import nn

from glimmer.export.rewrites.output_slice import DeployStem, output_slice
from glimmer.export.rewrites.streams import stream_bounds
from glimmer.models.glimmernet import Stem


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_output_slices_concatenate_to_the_conv(depthwise, bias, stride, dilation):
    conv = nn.Conv2d(
        12 if depthwise else 5,
        12,
        3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        groups=12 if depthwise else 1,
        bias=bias,
    ).eval()
    bounds = stream_bounds([3, 5, 4])
    slices = [output_slice(conv, a, b) for a, b in zip(bounds, bounds[1:])]
    assert [s.out_channels for s in slices] == [3, 5, 4]
    assert [s.in_channels for s in slices] == ([3, 5, 4] if depthwise else [5, 5, 5])
    x = torch.randn(2, conv.in_channels, 11, 10)
    with torch.no_grad():
        want = conv(x)
        parts = [s(x[:, a:b] if depthwise else x) for s, a, b in zip(slices, bounds, bounds[1:])]
    torch.testing.assert_close(torch.cat(parts, dim=1), want, atol=1e-6, rtol=1e-6)


def test_grouped_convs_are_not_sliced():
    with pytest.raises(ValueError, match="dense or depthwise"):
        output_slice(nn.Conv2d(8, 8, 3, groups=2), 0, 4)


@pytest.mark.parametrize("sizes", [[16], [4, 8, 4], [8, 8], [5, 6, 5]])
def test_deploy_stem_matches_stem(sizes):
    stem = randomise(Stem(16), seed=len(sizes))
    deployed = DeployStem(stem, sizes).eval()
    assert [part[0].conv.out_channels for part in deployed.parts] == sizes
    assert all(
        part[1].conv.groups == part[1].conv.in_channels for part in deployed.parts
    )  # depthwise slices
    x = 2 * torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        want = stem(x)
        y, streams = deployed(x)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    bounds = stream_bounds(sizes)
    for stream, a, b in zip(streams, bounds, bounds[1:]):
        torch.testing.assert_close(stream, want[:, a:b], atol=1e-5, rtol=1e-5)

    (onnx_y, *onnx_streams), hist = onnx_outputs(deployed, [x])
    np.testing.assert_allclose(onnx_y, want.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.concatenate(onnx_streams, axis=1), want.numpy(), atol=1e-5)
    # no Split: every stream starts as a conv output
    assert hist == (
        {"Clip": 2, "Conv": 2}
        if len(sizes) == 1
        else {"Clip": 2 * len(sizes), "Concat": 1, "Conv": 2 * len(sizes)}
    )


@pytest.mark.parametrize("sizes", [[8, 4], [20]])
def test_stem_stream_sizes_must_partition_its_channels(sizes):
    with pytest.raises(ValueError, match="do not partition the stem's 16 channels"):
        DeployStem(Stem(16), sizes)
