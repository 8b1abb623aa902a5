"""Building blocks shared by GlimmerNet and TakuNet.

The grouped dilated depthwise conv is MixConv (Tan & Le, 2019) with dilation in place of kernel
size: split the channels into contiguous groups, one depthwise 3x3 conv per group with its own
dilation, concatenate. Written as split -> convs -> cat (never slice assignment into an empty
tensor, which exports as ScatterND). Export lowers it further (``glimmer.export``); this is the
readable form.
"""

from typing import List, Sequence

import torch
from torch import nn


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Symmetric padding that keeps the spatial size of a stride-1 conv."""
    return dilation * (kernel_size - 1) // 2


def split_sizes(channels: int, groups: int) -> List[int]:
    """Contiguous equal groups; GlimmerNet's widths are multiples of the group count."""
    if channels % groups:
        raise ValueError(f"{channels} channels cannot be split into {groups} equal groups")
    return [channels // groups] * groups


class GroupedDilatedConv2d(nn.Module):
    """Depthwise 3x3 conv whose channel groups each use their own dilation.

    Args:
        channels: input = output channels.
        dilations: one dilation per contiguous channel group, e.g. ``(1, 2, 2, 3)``.
        kernel_size: odd kernel size (3 in the paper).
    """

    def __init__(self, channels: int, dilations: Sequence[int], kernel_size: int = 3) -> None:
        super().__init__()
        self.channels = channels
        self.dilations = tuple(int(d) for d in dilations)
        self.kernel_size = kernel_size
        self.splits = split_sizes(channels, len(self.dilations))
        self.convs = nn.ModuleList(
            nn.Conv2d(
                c,
                c,
                kernel_size,
                padding=same_padding(kernel_size, d),
                dilation=d,
                groups=c,
                bias=True,
            )
            for c, d in zip(self.splits, self.dilations)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts)], dim=1)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2), as GlimmerNet/TakuNet apply it after pooling.

    ``G = ||x||_2 over (H, W)``; ``N = G / (mean_C(G) + eps)``; ``y = gamma * (x * N) + beta + x``.
    gamma and beta start at zero, so the block starts as the identity.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sqrt(torch.sum(x * x, dim=(2, 3), keepdim=True))
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (x * n) + self.beta + x


def conv_bn_act(
    in_chs: int,
    out_chs: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    groups: int = 1,
    act: bool = True,
) -> nn.Sequential:
    """Conv (with bias, as in the reference) -> BatchNorm -> ReLU6 (or no activation)."""
    layers: List[nn.Module] = [
        nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=True,
        ),
        nn.BatchNorm2d(out_chs),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)
