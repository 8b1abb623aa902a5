"""FeatureMapsRecomb + MixedConcatenation as one Reshape/Transpose/Concat/Reshape chain with
constant shapes, and the Aggregator built on it.

The training form shuffles x (C channels, m groups: new channel ``k*m + i`` is old ``i*C/m + k``),
then interleaves it with the stage input ``dense``: channel ``2j`` is ``x'[j]``, ``2j + 1`` is
``dense[j]``. Together, channel ``2(k*m + i) + s`` of the result is

    x[i*C/m + k]   (s = 0)        dense[k*m + i]   (s = 1)

so x viewed as (m, C/m) is transposed to (C/m, m), dense is viewed as (C/m, m), and the two are
stacked on a new last channel axis; without the recombination both are viewed as (C, 1) and stacked.
Every shape is a constant (the batch as -1), so the graph holds no Shape/Gather/Slice from shape
arithmetic and a dynamic batch stays dynamic without cruft. The price: the module is tied to one
spatial size.

The Aggregator's grouped 1x1 conv -> BN -> ReLU6 follows with the BN folded (``fold_bn``).
"""

from typing import Tuple

import torch
from torch import nn

from glimmer.models.glimmernet import Aggregator, FeatureMapsRecomb

from .fold_bn import fold_conv_bn_act


class RecombInterleave(nn.Module):
    """FeatureMapsRecomb (optional) + strict interleave with the stage input, constant shapes."""

    def __init__(
        self, channels: int, groups: int, recombine: bool, spatial: Tuple[int, int]
    ) -> None:
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
    """Aggregator for inputs of ``spatial`` = (H, W): recombine + interleave, folded 1x1 conv,
    Clip."""

    def __init__(self, agg: Aggregator, spatial: Tuple[int, int]) -> None:
        super().__init__()
        pw = fold_conv_bn_act(agg.pw)
        recomb = agg.recomb if isinstance(agg.recomb, FeatureMapsRecomb) else None
        groups = recomb.groups if recomb is not None else 1
        self.mix = RecombInterleave(pw.conv.in_channels // 2, groups, recomb is not None, spatial)
        self.pw = pw

    def forward(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.pw(self.mix(x, dense))
