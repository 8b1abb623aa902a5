"""Fold an inference-mode BatchNorm into the convolution in front of it.

For a conv ``y = W * x + b`` followed by ``BN(y) = gamma * (y - mu) / sqrt(var + eps) + beta``, with
``s = gamma / sqrt(var + eps)`` per output channel:

    W' = W * s[:, None, None, None]        b' = (b - mu) * s + beta

so ``BN(conv(x)) == conv'(x)`` exactly (up to fp32 rounding). Same rule as onnxscript's
``_fuse_batchnorm`` rewrite, done on the PyTorch modules so the exported graph never holds a
BatchNormalization node. Works for any conv shape (groups, dilation, bias or not).

A conv -> BN -> ReLU6 sequence (``conv_bn_act``, the Refiner's conv -> BN) becomes
:class:`ConvClip`: the folded conv, then ReLU6 as ``Clip(0, 6)``, which ONNX Runtime and TensorRT
fuse into the conv.
"""

from typing import Optional, Tuple

import torch
from torch import nn


def bn_scale_shift(bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with ``BN(y) == y * scale + shift`` in inference mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(inv_std)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(inv_std)
    scale = gamma * inv_std
    return scale, beta - bn.running_mean.double() * scale


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> nn.Conv2d:
    """A new Conv2d (always with bias) equal to ``bn(conv(x))``; the originals are untouched.

    The arithmetic runs in float64 so folding adds no rounding beyond the final cast.
    """
    out = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    )
    weight = conv.weight.double()
    bias = (
        conv.bias.double()
        if conv.bias is not None
        else torch.zeros(conv.out_channels, dtype=torch.float64)
    )
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = bias * scale + shift
    out.weight.copy_(weight.to(conv.weight.dtype))
    out.bias.copy_(bias.to(conv.weight.dtype))
    return out.eval()


def relu6(x: torch.Tensor) -> torch.Tensor:
    """ReLU6, exported as ``Clip(0, 6)`` (fuses into the conv in front in ONNX Runtime and
    TensorRT)."""
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


def fold_conv_bn_act(module: nn.Module) -> ConvClip:
    """A module whose children are Conv2d, BatchNorm2d and optionally ReLU6, in that order (a
    ``conv_bn_act`` Sequential, the Refiner) -> :class:`ConvClip`, read by type, not by name."""
    children = list(module.children())
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6)
    if not 2 <= len(children) <= 3 or not all(isinstance(c, k) for c, k in zip(children, kinds)):
        raise ValueError(
            f"{type(module).__name__} is not conv -> BatchNorm [-> ReLU6]: "
            f"{[type(c).__name__ for c in children]}"
        )
    return ConvClip(fold_conv_bn(children[0], children[1]), clip=len(children) == 3)
