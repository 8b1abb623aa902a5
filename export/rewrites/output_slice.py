"""A conv's output channels ``[a, b)`` as a conv of their own, and the stem cut that way into
streams.

Output channel ``o`` of a conv reads only its own weights ``W[o]`` and bias ``b[o]``, so

    conv(x)[:, a:b] == conv_ab(x)    with W_ab = W[a:b], b_ab = b[a:b]

for a dense conv (all inputs kept); for a depthwise conv output ``o`` also reads only input ``o``,
so ``conv_ab`` is a depthwise conv on input channels ``[a, b)``. Each output channel is computed as
before: exact.

Why: the first stage's GDBlocks run on streams (``streams``). Cutting the stem's convs hands them
their input with no Split node, each stream starting as a conv output (as the GRN's unit convs do
for later stages, see ``grn``). The stem is conv -> depthwise conv (each BN folded, ReLU6 as Clip),
so the cut runs through both: part ``j`` is the dense conv's slice for stream ``j``, then the
depthwise conv's slice on it.
"""

from typing import Sequence, Tuple

import torch
from torch import nn

from glimmer.models.glimmernet import Stem

from .fold_bn import ConvClip, fold_conv_bn_act
from .streams import Streams, cat_streams, stream_bounds


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


@torch.no_grad()
def output_slice(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """Output channels ``[start, stop)`` of ``conv`` as a conv of their own (a depthwise conv keeps
    only the matching inputs too). Exact: each output channel is computed as before."""
    depthwise = is_depthwise(conv)
    if not depthwise and conv.groups != 1:
        raise ValueError("only dense or depthwise convs are sliced by output channel")
    n = stop - start
    out = nn.Conv2d(
        n if depthwise else conv.in_channels,
        n,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=n if depthwise else 1,
        bias=True,
    )
    out.weight.copy_(conv.weight[start:stop])
    if conv.bias is not None:
        out.bias.copy_(conv.bias[start:stop])
    else:
        out.bias.zero_()
    return out.eval()


class DeployStem(nn.Module):
    """The stem's conv -> BN -> ReLU6 layers (BN folded, Clip), cut by output channel into the first
    stage's streams; returns (stem output, streams)."""

    def __init__(self, stem: Stem, sizes: Sequence[int]) -> None:
        super().__init__()
        layers = [fold_conv_bn_act(layer) for layer in stem.children()]
        if not layers or not all(is_depthwise(layer.conv) for layer in layers[1:]):
            raise ValueError("a stem is cut into streams only as one conv then depthwise convs")
        bounds = stream_bounds(sizes)
        if bounds[-1] != layers[0].conv.out_channels:
            raise ValueError(
                f"stream sizes {list(sizes)} do not partition the stem's "
                f"{layers[0].conv.out_channels} channels"
            )
        self.parts = nn.ModuleList(
            nn.Sequential(
                *(ConvClip(output_slice(layer.conv, a, b), layer.clip) for layer in layers)
            )
            for a, b in zip(bounds, bounds[1:])
        )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Streams]:
        streams = [part(x) for part in self.parts]
        return cat_streams(streams), streams
