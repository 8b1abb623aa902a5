"""True multiply-accumulate counting for conv and linear layers.

What is counted: one MAC per weight tap per output element of every ``nn.Conv2d`` (including each
grouped dilated sub-conv) and ``nn.Linear``, plus one accumulate per input element of the head's
global average pool (a linear map too; 2,160 at 224), batch 1. Not counted: bias adds, BatchNorm,
activations, 2x2 pooling, GRN, residual adds. Default GlimmerNet at 224: 26,464,280. The paper's
"22.26M FLOPs" comes from fvcore skipping the GDBlock convs (docs/glimmernet.md, "FLOPs, counted
honestly"); :func:`paper_compatible_flops` reproduces that figure for comparison and is always
labelled as such.

The one MAC counter of the project: glimmer-compress counts YOLOv8 layers with it too (``part``).
"""

from collections import OrderedDict
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch
from torch import nn


def _conv_macs(module: nn.Conv2d, output: torch.Tensor) -> int:
    kh, kw = module.kernel_size
    per_output = (module.in_channels // module.groups) * kh * kw
    return int(output[0].numel()) * per_output


def _top_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "stages" and len(parts) > 1:
        return f"stage{int(parts[1]) + 1}"
    return parts[0]


@torch.no_grad()
def count_macs(
    model: nn.Module, img_size: int = 224, part: Callable[[str], Optional[Hashable]] = _top_name
) -> Tuple[int, "OrderedDict[Hashable, int]"]:
    """Return (total MACs, MACs per part) for one ``img_size`` x ``img_size`` image.

    ``part`` names the part a module (by its qualified name) counts towards, None to leave it out:
    GlimmerNet's stem / stage<i> / head by default, ``model.<i>`` layers for a YOLOv8.
    """
    per_part: OrderedDict[Hashable, int] = OrderedDict()
    hooks = []

    def hook(key: Hashable):
        def fn(module: nn.Module, inputs, output) -> None:
            if isinstance(module, nn.Conv2d):
                macs = _conv_macs(module, output)
            elif isinstance(module, nn.Linear):
                macs = int(output[0].numel()) * module.in_features
            else:  # global average pool: one accumulate per input element
                macs = int(inputs[0][0].numel())
            per_part[key] = per_part.get(key, 0) + macs

        return fn

    for name, module in model.named_modules():
        key = (
            part(name) if isinstance(module, (nn.Conv2d, nn.Linear, nn.AdaptiveAvgPool2d)) else None
        )
        if key is not None:
            hooks.append(module.register_forward_hook(hook(key)))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, 3, img_size, img_size, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sum(per_part.values()), per_part


@torch.no_grad()
def paper_compatible_flops(model: nn.Module, img_size: int = 224) -> int:
    """fvcore's count as the paper ran it, GD convs skipped.

    fvcore's rules: conv/linear MACs, 2 per element for an affine BatchNorm in eval, 1 per input
    element for adaptive average pooling.

    Reproduces 22,264,920 for the default GlimmerNet at 224 (docs/glimmernet.md). Only for
    comparison with the paper; it is not the model's real cost.
    """
    from .layers import GroupedDilatedConv2d

    skipped = {
        id(m) for gd in model.modules() if isinstance(gd, GroupedDilatedConv2d) for m in gd.convs
    }
    total = [0]
    hooks = []

    def fn(module: nn.Module, inputs, output) -> None:
        if isinstance(module, nn.Conv2d):
            if id(module) not in skipped:
                total[0] += _conv_macs(module, output)
        elif isinstance(module, nn.Linear):
            total[0] += int(output[0].numel()) * module.in_features
        elif isinstance(module, nn.BatchNorm2d):
            total[0] += int(output[0].numel()) * (2 if module.affine else 1)
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            total[0] += int(inputs[0][0].numel())

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)):
            hooks.append(module.register_forward_hook(fn))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, img_size, img_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return total[0]


def params_per_part(model: nn.Module) -> Dict[str, int]:
    out: Dict[str, int] = OrderedDict()
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = _top_name(name)
            out[key] = out.get(key, 0) + p.numel()
    return out
