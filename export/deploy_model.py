"""The export form of GlimmerNet / TakuNet: the same function as the training model, written so the
traced ONNX graph is small and static (spec: glimmernet.md; ARCHITECTURE.md "Export rewrite").

What changes against ``glimmer.models.glimmernet`` (each rewrite is exact up to fp32 rounding):
- every BatchNorm folded into the conv in front of it (stem, GDBlocks group by group, Aggregator,
  Refiner), so the graph holds no BatchNormalization;
- the grouped dilated depthwise conv lowered by ``lower_dilation`` (``split`` or ``embed``);
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
from typing import Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from glimmer.models.glimmernet import Aggregator, GDBlock, GlimmerNet, Stage
from glimmer.models.layers import GRN

from .fold_bn import fold_conv_bn
from .lower_dilation import SplitDilatedConv, lower_gd_conv


class ConvClip(nn.Module):
    """Conv (BN folded) -> Clip(0, 6), or the conv alone."""

    def __init__(self, conv: nn.Conv2d, clip: bool = True) -> None:
        super().__init__()
        self.conv = conv
        self.clip = clip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.clamp(y, 0.0, 6.0) if self.clip else y


def _conv_bn_act(seq: nn.Sequential) -> ConvClip:
    """``conv_bn_act``'s Sequential(conv, bn[, relu6]) -> ConvClip."""
    return ConvClip(fold_conv_bn(seq[0], seq[1]), clip=len(seq) > 2)


class DeployGDBlock(nn.Module):
    """Lowered GD conv (BN folded) -> Clip -> + input (in ``split`` the Clip sits in each branch)."""

    def __init__(self, block: GDBlock, mode: str) -> None:
        super().__init__()
        conv = lower_gd_conv(block.conv, mode, block.bn)
        if isinstance(conv, SplitDilatedConv):
            conv.clip = True
            self.conv: nn.Module = conv
        else:
            self.conv = ConvClip(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x


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
    """GRN as ``y = x * (gamma * N + 1) + beta`` with ``N = G / (mean_C(G) + eps)``.

    ``G = ||x||_2`` over (H, W) is computed as ``sqrt(HW) * sqrt(GlobalAveragePool(x * x))``; the
    constant ``sqrt(HW)`` cancels in N except against eps, which becomes ``eps / sqrt(HW)``.
    GlobalAveragePool runs in ONNX Runtime's blocked (NCHWc) layout, where ReduceL2 forces reorders.
    """

    def __init__(self, grn: GRN, spatial: Tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("gamma", grn.gamma.detach().clone())
        self.register_buffer("beta", grn.beta.detach().clone())
        self.eps = float(grn.eps) / math.sqrt(spatial[0] * spatial[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sqrt(F.adaptive_avg_pool2d(x * x, 1))
        n = g / (g.mean(dim=1, keepdim=True) + self.eps)
        return x * (self.gamma * n + 1.0) + self.beta


class DeployStage(nn.Module):
    def __init__(self, stage: Stage, mode: str, recombine: bool, spatial: Tuple[int, int]) -> None:
        super().__init__()
        first = stage.blocks[0].conv
        self.blocks = nn.Sequential(*[DeployGDBlock(b, mode) for b in stage.blocks])
        self.aggregator = DeployAggregator(stage.aggregator, first.channels, len(first.dilations),
                                           recombine, spatial)
        self.pool = stage.downsample.pool
        self.grn = DeployGRN(stage.downsample.grn, (spatial[0] // 2, spatial[1] // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grn(self.pool(self.aggregator(self.blocks(x), x)))


class DeployGlimmerNet(nn.Module):
    """GlimmerNet / TakuNet in export form for one input size; ``forward`` returns logits."""

    def __init__(self, model: GlimmerNet, mode: str, input_size: Tuple[int, int]) -> None:
        super().__init__()
        spatial = stage_input_sizes(model, input_size)
        cfg = model.config
        self.dilation_mode = mode
        self.stem = nn.Sequential(_conv_bn_act(model.stem.conv), _conv_bn_act(model.stem.dw))
        self.stages = nn.Sequential(*[DeployStage(s, mode, cfg.recombine, hw)
                                      for s, hw in zip(model.stages, spatial)])
        self.refiner = ConvClip(fold_conv_bn(model.refiner.conv, model.refiner.bn), clip=False)
        self.fc = model.head.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.refiner(self.stages(self.stem(x)))
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
