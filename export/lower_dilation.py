"""Lowering GlimmerNet's grouped dilated depthwise conv (the heterogeneous-dilation GD conv) to
plain ONNX convolutions that every ONNX Runtime and TensorRT 8.4+ parser runs natively.

The training form (``glimmer.models.layers.GroupedDilatedConv2d``) splits C channels into m
contiguous groups, each with a depthwise kxk conv of its own dilation ``d_i`` and padding ``d_i``.
Two exact rewrites (spec: ARCHITECTURE.md "Export rewrite"; issue 3):

``split``  per-group depthwise convs with explicit symmetric pads (never ``auto_pad``), neighbouring
           groups of equal dilation merged into one conv: dilations (1, 2, 2, 3) -> 3 convs.
``embed``  one depthwise conv of kernel ``(k - 1) * dmax + 1`` whose channel c holds its group's k x k
           taps at offsets ``(t - k // 2) * d_i`` from the centre and zeros elsewhere (padding
           ``dmax * (k // 2)``). One op per block; ``((k-1)*dmax+1)^2 / k^2`` times the multiply-adds
           (49/9 for dmax = 3). Zero taps contribute exact zeros, so the sum is unchanged.

Both accept the BatchNorm that follows the GD conv: BN is per channel, so it folds group by group.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from glimmer.models.layers import GroupedDilatedConv2d

from .fold_bn import fold_conv_bn

MODES = ("split", "embed")


def merge_runs(splits: Sequence[int], dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """(channels, dilation) runs with neighbouring equal dilations merged: [1,2,2,3] -> 3 runs."""
    runs: List[Tuple[int, int]] = []
    for channels, dilation in zip(splits, dilations):
        if runs and runs[-1][1] == dilation:
            runs[-1] = (runs[-1][0] + channels, dilation)
        else:
            runs.append((channels, dilation))
    return runs


def _folded_groups(gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d]) -> List[nn.Conv2d]:
    """Each group's conv with its slice of the BN folded in."""
    out, start = [], 0
    for conv, channels in zip(gd.convs, gd.splits):
        part = None
        if bn is not None:
            part = nn.BatchNorm2d(channels, eps=bn.eps).eval()
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(part, name).copy_(getattr(bn, name)[start:start + channels])
        out.append(fold_conv_bn(conv, part))
        start += channels
    return out


class SplitDilatedConv(nn.Module):
    """Split -> one depthwise conv per run of equal dilation (-> Clip) -> Concat.

    ``clip`` applies ReLU6 inside each branch: Clip is elementwise, so it commutes with Concat, and
    a Clip right behind its Conv fuses into it in ONNX Runtime and TensorRT; behind Concat it does not.
    """

    def __init__(self, convs: Sequence[nn.Conv2d], clip: bool = False) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.splits = [int(c.in_channels) for c in convs]
        self.clip = clip

    def _branch(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        y = conv(x)
        return torch.clamp(y, 0.0, 6.0) if self.clip else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self._branch(self.convs[0], x)
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([self._branch(conv, part) for conv, part in zip(self.convs, parts)], dim=1)


@torch.no_grad()
def lower_split(gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d] = None) -> SplitDilatedConv:
    """The ``split`` form; explicit ``pads = [d, d, d, d]`` per conv."""
    groups = _folded_groups(gd, bn)
    merged: List[nn.Conv2d] = []
    index = 0
    for channels, dilation in merge_runs(gd.splits, gd.dilations):
        members = []
        while sum(int(g.in_channels) for g in members) < channels:
            members.append(groups[index])
            index += 1
        first = members[0]
        conv = nn.Conv2d(channels, channels, first.kernel_size, padding=first.padding, dilation=dilation,
                         groups=channels, bias=True)
        conv.weight.copy_(torch.cat([g.weight for g in members]))
        conv.bias.copy_(torch.cat([g.bias for g in members]))
        merged.append(conv.eval())
    return SplitDilatedConv(merged).eval()


@torch.no_grad()
def lower_embed(gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d] = None) -> nn.Conv2d:
    """The ``embed`` form: one depthwise conv with every group's dilated taps in a larger kernel."""
    k = gd.kernel_size
    dmax = max(gd.dilations)
    size = (k - 1) * dmax + 1
    centre = size // 2
    conv = nn.Conv2d(gd.channels, gd.channels, size, padding=centre, groups=gd.channels, bias=True)
    weight = torch.zeros_like(conv.weight)
    start = 0
    for group, dilation in zip(_folded_groups(gd, bn), gd.dilations):
        channels = int(group.in_channels)
        taps = [centre + (t - k // 2) * dilation for t in range(k)]
        idx = torch.tensor(taps)
        block = weight[start:start + channels, 0]
        block[:, idx[:, None], idx[None, :]] = group.weight[:, 0]
        conv.bias[start:start + channels] = group.bias
        start += channels
    conv.weight.copy_(weight)
    return conv.eval()


def lower_gd_conv(gd: GroupedDilatedConv2d, mode: str, bn: Optional[nn.BatchNorm2d] = None) -> nn.Module:
    """The chosen lowering of ``bn(gd(x))`` (or of ``gd(x)`` alone)."""
    if mode == "split":
        return lower_split(gd, bn)
    if mode == "embed":
        return lower_embed(gd, bn)
    raise ValueError(f"dilation mode must be one of {MODES}, got {mode!r}")
