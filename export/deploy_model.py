"""The export form of GlimmerNet / TakuNet: the same function as the training model, written so the
traced ONNX graph is small and static (docs/glimmernet.md, "Export form"); the training model
keeps the readable form.

What changes against ``glimmer.models.glimmernet`` (each rewrite is exact up to fp32 rounding):
- every BatchNorm folded into the conv in front of it (stem, GDBlocks group by group, Aggregator,
  Refiner), so the graph holds no BatchNormalization;
- the grouped dilated depthwise conv lowered by ``lower_dilation`` (``split``, ``aligned`` or
  ``embed``: one depthwise conv per stream of channels). GDBlocks are depthwise and their residual
  adds are per channel, so a stage's channels never mix before its Aggregator: the streams stay
  separate tensors from the stage input to the Aggregator, with no Split/Concat per block. The
  stem (stage 0) or the GRN in front (later stages) hands each stage its input already cut into
  that stage's streams;
- ReLU6 as ``Clip(0, 6)``;
- FeatureMapsRecomb + MixedConcatenation as one Reshape/Transpose/Concat/Reshape chain with constant
  shapes (batch as -1): with the recombination, channel ``2(k*m + i) + s`` of the interleave is
  ``x[i*C/m + k]`` (s = 0) or ``dense[k*m + i]`` (s = 1), so x viewed as (m, C/m) is transposed to
  (C/m, m), dense is viewed as (C/m, m), and the two are stacked on a new last channel axis. No
  Shape/Gather/Slice from shape arithmetic, so a dynamic batch stays dynamic without cruft;
- GRN through GlobalAveragePool of x*x and ``y = x * (gamma * N + 1) + beta`` (see DeployGRN).

The module is tied to one input size (the Aggregator's constant shapes); the batch is free.
"""
import math
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from glimmer.models.glimmernet import Aggregator, GDBlock, GlimmerNet, Stage, Stem
from glimmer.models.layers import GRN

from .fold_bn import fold_conv_bn
from .lower_dilation import MODES, lower_gd_conv, stream_sizes

Streams = List[torch.Tensor]


def relu6(x: torch.Tensor) -> torch.Tensor:
    """ReLU6, exported as ``Clip(0, 6)`` (fuses into the conv in front in ONNX Runtime and TensorRT)."""
    return torch.clamp(x, 0.0, 6.0)


class ConvClip(nn.Module):
    """Conv (BN folded) -> Clip(0, 6), or the conv alone."""

    def __init__(self, conv: nn.Conv2d, clip: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return relu6(y) if self.clip else y


def _conv_bn_act(seq: nn.Sequential) -> ConvClip:
    """``conv_bn_act``'s Sequential(conv, bn[, relu6]) -> ConvClip."""
    return ConvClip(fold_conv_bn(seq[0], seq[1]), clip=len(seq) > 2)


@torch.no_grad()
def output_slice(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """Output channels ``[start, stop)`` of ``conv`` as a conv of their own (a depthwise conv keeps
    only the matching inputs too). Exact: each output channel is computed as before."""
    depthwise = conv.groups == conv.in_channels == conv.out_channels
    if not depthwise and conv.groups != 1:
        raise ValueError("only dense or depthwise convs are sliced by output channel")
    n = stop - start
    out = nn.Conv2d(n if depthwise else conv.in_channels, n, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=n if depthwise else 1, bias=True)
    out.weight.copy_(conv.weight[start:stop])
    out.bias.copy_(conv.bias[start:stop])
    return out.eval()


def _cat(streams: Streams) -> torch.Tensor:
    return torch.cat(streams, dim=1) if len(streams) > 1 else streams[0]


class DeployStem(nn.Module):
    """Stem conv -> Clip -> stride-2 depthwise conv -> Clip (BN folded), cut by output channel into
    the first stage's streams; returns (stem output, streams)."""

    def __init__(self, stem: Stem, sizes: Sequence[int]) -> None:
        super().__init__()
        conv = fold_conv_bn(stem.conv[0], stem.conv[1])
        dw = fold_conv_bn(stem.dw[0], stem.dw[1])
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.parts = nn.ModuleList(
            nn.Sequential(ConvClip(output_slice(conv, a, b)), ConvClip(output_slice(dw, a, b)))
            for a, b in zip(bounds, bounds[1:]))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Streams]:
        streams = [part(x) for part in self.parts]
        return _cat(streams), streams


class DeployGDBlock(nn.Module):
    """One GDBlock on streams: per stream, lowered conv (BN folded) -> Clip -> + stream."""

    def __init__(self, block: GDBlock, mode: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(lower_gd_conv(block.conv, mode, block.bn))

    def forward(self, streams: Streams) -> Streams:
        return [relu6(conv(s)) + s for conv, s in zip(self.convs, streams)]


class RecombInterleave(nn.Module):
    """FeatureMapsRecomb (optional) + strict interleave with the stage input, constant shapes."""

    def __init__(self, channels: int, groups: int, recombine: bool, spatial: Tuple[int, int]) -> None:
        super().__init__()
        self.channels, self.groups, self.recombine = channels, groups, recombine and groups > 1
        self.h, self.w = int(spatial[0]), int(spatial[1])

    def forward(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        c, hw = self.channels, self.h * self.w
        if self.recombine:
            m = self.groups
            xs = x.reshape(-1, m, c // m, 1, hw).transpose(1, 2)
            ds = dense.reshape(-1, c // m, m, 1, hw)
            y = torch.cat((xs, ds), dim=3)
        else:
            y = torch.cat((x.reshape(-1, c, 1, hw), dense.reshape(-1, c, 1, hw)), dim=2)
        return y.reshape(-1, 2 * c, self.h, self.w)


class DeployAggregator(nn.Module):
    def __init__(self, agg: Aggregator, channels: int, groups: int, recombine: bool,
                 spatial: Tuple[int, int]) -> None:
        super().__init__()
        self.mix = RecombInterleave(channels, groups, recombine, spatial)
        self.pw = _conv_bn_act(agg.pw)

    def forward(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.pw(self.mix(x, dense))


class DeployGRN(nn.Module):
    """GRN as ``y = x * (gamma * N + 1) + beta`` with ``N = G / (mean_C(G) + eps)``, handing out the
    next stage's streams; returns (y, streams).

    ``G = ||x||_2`` over (H, W) is computed as ``sqrt(HW) * sqrt(GlobalAveragePool(x * x))``; the
    constant ``sqrt(HW)`` cancels in N except against eps, which becomes ``eps / sqrt(HW)``.
    GlobalAveragePool runs in ONNX Runtime's blocked (NCHWc) layout, where ReduceL2 forces reorders.
    Each stream gets ``+ beta`` as the bias of a unit-weight 1x1 depthwise conv: ONNX Runtime moves
    convs, and only then the Adds fed by them, into its blocked layout, so a stage whose input came
    from a plain Add would pay a reorder pair in every GDBlock. For TensorRT it is a per-channel
    shift like the Add it replaces (not measured there: no TensorRT on our machines).
    """

    def __init__(self, grn: GRN, spatial: Tuple[int, int], sizes: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("gamma", grn.gamma.detach().clone())
        self.register_buffer("beta", grn.beta.detach().clone())
        self.eps = float(grn.eps) / math.sqrt(spatial[0] * spatial[1])
        self.sizes = [int(s) for s in sizes]
        beta = grn.beta.detach().flatten()
        shifts, start = [], 0
        for size in self.sizes:
            shift = nn.Conv2d(size, size, 1, groups=size, bias=True)
            with torch.no_grad():
                shift.weight.fill_(1.0)
                shift.bias.copy_(beta[start:start + size])
            shifts.append(shift.eval())
            start += size
        self.shifts = nn.ModuleList(shifts)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Streams]:
        g = torch.sqrt(F.adaptive_avg_pool2d(x * x, 1))
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        scaled = x * (self.gamma * n + 1.0)
        if len(self.sizes) == 1:
            y = self.shifts[0](scaled)
            return y, [y]
        parts = torch.split(scaled, self.sizes, dim=1)
        return scaled + self.beta, [shift(part) for shift, part in zip(self.shifts, parts)]


class DeployStage(nn.Module):
    """GDBlocks on streams -> Aggregator -> pool -> GRN (cutting the next stage's streams)."""

    def __init__(self, stage: Stage, mode: str, recombine: bool, spatial: Tuple[int, int],
                 next_sizes: Sequence[int]) -> None:
        super().__init__()
        first = stage.blocks[0].conv
        self.blocks = nn.ModuleList(DeployGDBlock(b, mode) for b in stage.blocks)
        self.aggregator = DeployAggregator(stage.aggregator, first.channels, len(first.dilations),
                                           recombine, spatial)
        self.pool = stage.downsample.pool
        self.grn = DeployGRN(stage.downsample.grn, (spatial[0] // 2, spatial[1] // 2), next_sizes)

    def forward(self, dense: torch.Tensor, streams: Streams) -> Tuple[torch.Tensor, Streams]:
        for block in self.blocks:
            streams = block(streams)
        return self.grn(self.pool(self.aggregator(_cat(streams), dense)))


class DeployGlimmerNet(nn.Module):
    """GlimmerNet / TakuNet in export form for one input size; ``forward`` returns logits."""

    def __init__(self, model: GlimmerNet, mode: str, input_size: Tuple[int, int]) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"dilation mode must be one of {MODES}, got {mode!r}")
        self.dilation_mode = mode
        spatial = stage_input_sizes(model, input_size)
        sizes = [stream_sizes(stage.blocks[0].conv, mode) for stage in model.stages]
        sizes.append([model.stages[-1].aggregator.pw[0].out_channels])  # the Refiner takes one tensor
        self.stem = DeployStem(model.stem, sizes[0])
        self.stages = nn.ModuleList(DeployStage(stage, mode, model.config.recombine, hw, nxt)
                                    for stage, hw, nxt in zip(model.stages, spatial, sizes[1:]))
        self.refiner = ConvClip(fold_conv_bn(model.refiner.conv, model.refiner.bn), clip=False)
        self.fc = model.head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense, streams = self.stem(x)
        for stage in self.stages:
            dense, streams = stage(dense, streams)
        y = self.refiner(dense)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


@torch.no_grad()
def stage_input_sizes(model: GlimmerNet, input_size: Tuple[int, int]) -> List[Tuple[int, int]]:
    """Spatial size entering each stage for ``input_size``, found by running the model once."""
    sizes: Dict[int, Tuple[int, int]] = {}
    hooks = [stage.register_forward_pre_hook(
        lambda _m, args, i=i: sizes.__setitem__(i, tuple(args[0].shape[2:])))
        for i, stage in enumerate(model.stages)]
    try:
        model.eval()(torch.zeros(1, 3, int(input_size[0]), int(input_size[1])))
    finally:
        for h in hooks:
            h.remove()
    return [sizes[i] for i in range(len(model.stages))]


def deploy_form(model: GlimmerNet, mode: str, input_size: Tuple[int, int]) -> DeployGlimmerNet:
    """The export form of ``model`` (left untouched) for ``input_size`` = (h, w)."""
    return DeployGlimmerNet(model.eval(), mode, input_size).eval()
