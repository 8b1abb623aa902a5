"""dilation: the grouped dilated depthwise conv (and the GDBlock around it) against its lowering to
one depthwise conv per stream, in every mode, in PyTorch and ONNX Runtime, parameterised over the
dilation pattern, the width and the BatchNorm."""

import numpy as np
import pytest
import torch
from random_weights import randomise
from rewrite_parity import onnx_outputs, plain_onnx
from torch import nn

from glimmer.export.onnx_export import export_onnx
from glimmer.export.rewrites.dilation import (
    MODES,
    DeployGDBlock,
    aligned_sizes,
    block_streams,
    lower_gd_conv,
    merge_runs,
    stream_sizes,
)
from glimmer.export.verify import ort_session
from glimmer.models.glimmernet import GDBlock
from glimmer.models.layers import GroupedDilatedConv2d

PATTERNS = [((1, 2, 2, 3), 10, 3), ((1, 1, 2, 2), 8, 2), ((3, 1), 6, 2), ((2,), 8, 1)]


def test_merge_runs_joins_equal_neighbours_only():
    assert merge_runs([10, 10, 10, 10], [1, 2, 2, 3]) == [(10, 1), (20, 2), (10, 3)]
    assert merge_runs([4, 4, 4], [2, 1, 2]) == [(4, 2), (4, 1), (4, 2)]
    assert merge_runs([8], [1]) == [(8, 1)]


def test_aligned_sizes_round_each_run_boundary_the_cheaper_way():
    assert aligned_sizes([10] * 4, [1, 2, 2, 3]) == [
        12,
        16,
        12,
    ]  # GlimmerNet's stage 1 (40 channels)
    assert aligned_sizes([20] * 4, [1, 2, 2, 3]) == [20, 40, 20]  # already multiples of 4: split
    assert aligned_sizes([6, 10], [1, 3]) == [8, 8]  # up: 8x49 + 8x9 taps beats 4x9 + 12x49
    assert aligned_sizes([10, 6], [1, 3]) == [8, 8]  # down, for the same reason
    assert aligned_sizes([2] * 4, [1, 2, 2, 3]) == [
        4,
        4,
    ]  # boundaries that meet merge their streams
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
@pytest.mark.parametrize("dilations,width,split_convs", PATTERNS)
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
        np.testing.assert_allclose(
            ort_session(lowered.SerializeToString()).run(None, {"images": x.numpy()})[0],
            want,
            atol=1e-5,
            err_msg=mode,
        )
        with torch.no_grad():
            np.testing.assert_allclose(Streams(convs)(x).numpy(), want, atol=1e-5, err_msg=mode)


class OnStreams(nn.Module):
    """A DeployGDBlock between a split into its streams and a concat, as a stage runs it."""

    def __init__(self, block: DeployGDBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.block(list(torch.split(x, self.block.sizes, dim=1))), dim=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dilations,width,split_convs", PATTERNS)
def test_deploy_gdblock_matches_gdblock(mode, dilations, width, split_convs):
    block = randomise(GDBlock(width * len(dilations), dilations), seed=7)
    with torch.no_grad():
        for conv in block.conv.convs:
            conv.weight.normal_()
            conv.bias.normal_()
    deployed = DeployGDBlock(block, mode)
    assert deployed.sizes == block_streams(block, mode) == stream_sizes(block.conv, mode)
    x = 3 * torch.randn(2, block.conv.channels, 10, 8)  # wide enough that ReLU6 clips both ends
    with torch.no_grad():
        want = block(x)
        torch.testing.assert_close(OnStreams(deployed)(x), want, atol=1e-5, rtol=1e-5)
    (out,), hist = onnx_outputs(OnStreams(deployed), [x])
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)
    assert hist["Conv"] == hist["Clip"] == hist["Add"] == len(deployed.sizes)
