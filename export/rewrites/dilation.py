"""Lowering GlimmerNet's grouped dilated depthwise conv (the heterogeneous-dilation GD conv) to
plain ONNX convolutions that every ONNX Runtime and TensorRT 8.4+ parser runs natively.

The training form (``glimmer.models.layers.GroupedDilatedConv2d``) splits C channels into m
contiguous groups, each with a depthwise kxk conv of its own dilation ``d_i`` and padding ``d_i``.
The training model keeps that readable form; the lowering happens at export only. Exact rewrites,
all built from one rule: a contiguous range of channels ("stream") becomes one depthwise conv, a
plain dilated kxk conv if the range has one dilation, else a kernel of size ``(k - 1) * dmax + 1``
holding each channel's k x k taps at offsets ``(t - k // 2) * d`` from the centre and zeros
elsewhere (zero taps add exact zeros).

``split``    one stream per run of equal dilation, explicit symmetric pads (never ``auto_pad``):
             dilations (1, 2, 2, 3) -> 3 convs.
``embed``    one stream for all channels: one op per block, ``((k-1)*dmax+1)^2 / k^2`` times the
             multiply-adds (49/9 for dmax = 3).
``aligned``  ``split`` with each stream boundary moved to a multiple of 4 channels, choosing the
             moves with the fewest multiply-adds: ONNX Runtime runs a depthwise conv in its blocked
             (NCHWc) kernels only when its channel count is a multiple of 4, so GlimmerNet's first
             stage (runs of 10, 20, 10 channels) becomes streams of 12, 16, 12, the outer two with
             two channels of the middle dilation embedded.

All accept the BatchNorm that follows the GD conv: BN is per channel, so it folds channel by
channel.

A GDBlock (GD conv -> BN -> ReLU6 -> + input) becomes :class:`DeployGDBlock`, which runs on streams
(``streams``): per stream, the lowered conv -> Clip -> + that stream. The residual add is per
channel, so it splits by stream exactly.
"""

import itertools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from glimmer.models.glimmernet import GDBlock
from glimmer.models.layers import GroupedDilatedConv2d

from .fold_bn import fold_conv_bn, relu6
from .streams import Streams

MODES = ("split", "aligned", "embed")
ALIGN = 4  # channels: ONNX Runtime's blocked depthwise conv needs a multiple of this


def merge_runs(splits: Sequence[int], dilations: Sequence[int]) -> List[Tuple[int, int]]:
    """(channels, dilation) runs with neighbouring equal dilations merged: [1,2,2,3] -> 3 runs."""
    runs: List[Tuple[int, int]] = []
    for channels, dilation in zip(splits, dilations):
        if runs and runs[-1][1] == dilation:
            runs[-1] = (runs[-1][0] + channels, dilation)
        else:
            runs.append((channels, dilation))
    return runs


def channel_dilations(splits: Sequence[int], dilations: Sequence[int]) -> List[int]:
    """The dilation of every channel, in order."""
    return [d for c, d in zip(splits, dilations) for _ in range(c)]


def stream_taps(dilations: Sequence[int], kernel_size: int = 3) -> int:
    """Multiply-adds per output pixel of one stream's conv (``kernel_size`` odd)."""
    k = kernel_size if len(set(dilations)) == 1 else (kernel_size - 1) * max(dilations) + 1
    return len(dilations) * k * k


def aligned_sizes(
    splits: Sequence[int], dilations: Sequence[int], kernel_size: int = 3, align: int = ALIGN
) -> List[int]:
    """Stream sizes of the ``aligned`` lowering: every run boundary rounded down or up to a multiple
    of ``align`` (boundaries that meet merge their streams), the combination with the fewest
    multiply-adds."""
    per_channel = channel_dilations(splits, dilations)
    total = len(per_channel)
    bounds, start = [], 0
    for channels, _ in merge_runs(splits, dilations)[:-1]:
        start += channels
        bounds.append(sorted({start - start % align, -(-start // align) * align}))
    best: Optional[Tuple[int, List[int]]] = None
    for cut in itertools.product(*bounds):
        edges = sorted({0, total, *(c for c in cut if 0 < c < total)})
        cost = sum(stream_taps(per_channel[a:b], kernel_size) for a, b in zip(edges, edges[1:]))
        if best is None or cost < best[0]:
            best = (cost, [b - a for a, b in zip(edges, edges[1:])])
    return best[1] if best else [total]


@torch.no_grad()
def _folded_channels(
    gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weights (C, k, k), biases (C,)) of all groups with the BN folded in, channel order kept."""
    weights, biases, start = [], [], 0
    for conv, channels in zip(gd.convs, gd.splits):
        part = None
        if bn is not None:
            part = nn.BatchNorm2d(channels, eps=bn.eps).eval()
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(part, name).copy_(getattr(bn, name)[start : start + channels])
        folded = fold_conv_bn(conv, part)
        weights.append(folded.weight[:, 0])
        biases.append(folded.bias)
        start += channels
    return torch.cat(weights), torch.cat(biases)


@torch.no_grad()
def stream_conv(
    weight: torch.Tensor, bias: torch.Tensor, dilations: Sequence[int], embed: bool = False
) -> nn.Conv2d:
    """One depthwise conv for a stream of channels with k x k taps ``weight`` (n, k, k) and the
    given per-channel dilations: dilated kxk if they agree (and not ``embed``), else embedded."""
    n, k = int(weight.shape[0]), int(weight.shape[-1])
    if len(set(dilations)) == 1 and not embed:
        d = int(dilations[0])
        conv = nn.Conv2d(n, n, k, padding=d * (k // 2), dilation=d, groups=n, bias=True)
        conv.weight.copy_(weight[:, None])
        conv.bias.copy_(bias)
        return conv.eval()
    size = (k - 1) * max(dilations) + 1
    centre = size // 2
    conv = nn.Conv2d(n, n, size, padding=centre, groups=n, bias=True)
    full = torch.zeros_like(conv.weight)
    for c, d in enumerate(dilations):
        idx = torch.tensor([centre + (t - k // 2) * int(d) for t in range(k)])
        full[c, 0, idx[:, None], idx[None, :]] = weight[c]
    conv.weight.copy_(full)
    conv.bias.copy_(bias)
    return conv.eval()


def lower_streams(
    gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d], sizes: Sequence[int]
) -> List[nn.Conv2d]:
    """One depthwise conv per contiguous stream of ``sizes`` channels (summing to all of them)."""
    if sum(sizes) != gd.channels or min(sizes) < 1:
        raise ValueError(f"stream sizes {list(sizes)} do not partition {gd.channels} channels")
    weight, bias = _folded_channels(gd, bn)
    per_channel = channel_dilations(gd.splits, gd.dilations)
    convs, start = [], 0
    for size in sizes:
        stop = start + int(size)
        convs.append(stream_conv(weight[start:stop], bias[start:stop], per_channel[start:stop]))
        start = stop
    return convs


def stream_sizes(gd: GroupedDilatedConv2d, mode: str) -> List[int]:
    """Channels of each stream of ``gd`` lowered in ``mode``."""
    if mode == "embed":
        return [gd.channels]
    if mode == "split":
        return [channels for channels, _ in merge_runs(gd.splits, gd.dilations)]
    if mode == "aligned":
        return aligned_sizes(gd.splits, gd.dilations, gd.kernel_size)
    raise ValueError(f"dilation mode must be one of {MODES}, got {mode!r}")


def lower_embed(gd: GroupedDilatedConv2d, bn: Optional[nn.BatchNorm2d] = None) -> nn.Conv2d:
    """The ``embed`` form: one depthwise conv with every group's dilated taps in a larger kernel."""
    weight, bias = _folded_channels(gd, bn)
    return stream_conv(weight, bias, channel_dilations(gd.splits, gd.dilations), embed=True)


def lower_gd_conv(
    gd: GroupedDilatedConv2d, mode: str, bn: Optional[nn.BatchNorm2d] = None
) -> List[nn.Conv2d]:
    """``bn(gd(x))`` (or ``gd(x)`` alone) as one depthwise conv per stream of ``mode``."""
    if mode == "embed":
        return [lower_embed(gd, bn)]
    return lower_streams(gd, bn, stream_sizes(gd, mode))


def block_streams(block: GDBlock, mode: str) -> List[int]:
    """Channels of each stream a GDBlock lowered in ``mode`` runs on."""
    return stream_sizes(block.conv, mode)


class DeployGDBlock(nn.Module):
    """One GDBlock on streams: per stream, lowered conv (BN folded) -> Clip -> + stream."""

    def __init__(self, block: GDBlock, mode: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(lower_gd_conv(block.conv, mode, block.bn))

    @property
    def sizes(self) -> List[int]:
        """Channels of each stream it takes and returns."""
        return [conv.in_channels for conv in self.convs]

    def forward(self, streams: Streams) -> Streams:
        return [relu6(conv(s)) + s for conv, s in zip(self.convs, streams)]


# For --dilation-mode auto, most preferred first: when two lowerings time within the measured noise,
# the earlier wins. aligned is what ONNX Runtime's blocked kernels were measured fastest with and
# has the fewest multiply-adds of the three; embed (a larger, mostly-zero kernel) the most.
DILATION_PREFERENCE = ("aligned", "split", "embed")
