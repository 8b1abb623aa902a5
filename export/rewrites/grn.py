"""GRN (ConvNeXt V2) in export form, handing the next stage its input cut into streams.

The training form: ``G = ||x||_2`` over (H, W), ``N = G / (mean_C(G) + eps)``,
``y = gamma * (x * N) + beta + x``. Rewritten:

    y = x * (gamma * N + 1) + beta

with ``G`` computed as ``sqrt(HW) * sqrt(GlobalAveragePool(x * x))``: the constant ``sqrt(HW)``
cancels in N except against eps, which becomes ``eps / sqrt(HW)``. So the module is tied to one
spatial size. GlobalAveragePool runs in ONNX Runtime's blocked (NCHWc) layout, where ReduceL2 forces
reorders.

Each stream of the next stage (``streams``) gets ``+ beta`` as the bias of a unit-weight 1x1
depthwise conv: ONNX Runtime moves convs, and only then the Adds fed by them, into its blocked
layout, so a stage whose input came from a plain Add would pay a reorder pair in every GDBlock. For
TensorRT it is a per-channel shift like the Add it replaces (not measured there: no TensorRT on our
machines). With several streams the whole ``y`` (for the Aggregator's interleave) keeps the plain
Add; with one stream ``y`` is that stream.
"""

import math
from typing import Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from glimmer.models.layers import GRN

from .streams import Streams


class DeployGRN(nn.Module):
    """GRN as ``y = x * (gamma * N + 1) + beta`` for inputs of ``spatial`` = (H, W), cutting ``y``
    into streams of ``sizes`` channels; returns (y, streams)."""

    def __init__(self, grn: GRN, spatial: Tuple[int, int], sizes: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("gamma", grn.gamma.detach().clone())
        self.register_buffer("beta", grn.beta.detach().clone())
        self.eps = float(grn.eps) / math.sqrt(spatial[0] * spatial[1])
        self.sizes = [int(s) for s in sizes]
        if sum(self.sizes) != grn.beta.numel() or min(self.sizes) < 1:
            raise ValueError(
                f"stream sizes {self.sizes} do not partition {grn.beta.numel()} channels"
            )
        beta = grn.beta.detach().flatten()
        shifts, start = [], 0
        for size in self.sizes:
            shift = nn.Conv2d(size, size, 1, groups=size, bias=True)
            with torch.no_grad():
                shift.weight.fill_(1.0)
                shift.bias.copy_(beta[start : start + size])
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
