"""GlimmerNet (Nedeljkovic, arXiv 2512.07391) and TakuNet (Rossi et al., WACVW 2025).

One parameterised network covers both (docs/glimmernet.md): GlimmerNet's GDBlocks give each of m
channel groups its own dilation and its Aggregator recombines the groups before mixing; TakuNet is
the same network with one undilated group, no recombination, and 4 inputs per pointwise group.

Data path: Stem -> 4 x [GDBlock x depth -> Aggregator -> Downsampler (pool + GRN)] ->
Refiner -> Head.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .layers import GRN, GroupedDilatedConv2d, conv_bn_act

AIDER_CLASSES = ("Earthquake", "Fire", "Flood", "Normal")


@dataclass
class GlimmerConfig:
    """The architecture as data: saved in checkpoints and ONNX metadata, rebuilt without flags.

    Attributes:
        num_classes: classifier outputs.
        depths: blocks per stage.
        widths: channels per stage; the last stage's Aggregator keeps ``widths[-1]``.
        dilations: one dilation per channel group of every GDBlock (m = len(dilations)).
        poolings: ``max`` or ``avg`` per stage.
        recombine: FeatureMapsRecomb before the interleave (GlimmerNet yes, TakuNet no).
        pw_group_inputs: inputs each group of the Aggregator's grouped 1x1 conv sees
            (GlimmerNet 2m = 8, TakuNet 4).
        dropout: before the classifier (0 for AIDERv2).
    """

    num_classes: int = 4
    depths: Tuple[int, ...] = (4, 4, 4, 1)
    widths: Tuple[int, ...] = (40, 80, 160, 240)
    dilations: Tuple[int, ...] = (1, 2, 2, 3)
    poolings: Tuple[str, ...] = ("max", "max", "max", "avg")
    recombine: bool = True
    pw_group_inputs: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.depths = tuple(int(d) for d in self.depths)
        self.widths = tuple(int(w) for w in self.widths)
        self.dilations = tuple(int(d) for d in self.dilations)
        self.poolings = tuple(str(p) for p in self.poolings)
        if not (len(self.depths) == len(self.widths) == len(self.poolings)):
            raise ValueError("depths, widths and poolings must have one entry per stage")
        if any(p not in ("max", "avg") for p in self.poolings):
            raise ValueError(f"poolings must be 'max' or 'avg', got {self.poolings}")
        if self.num_classes < 1 or min(self.depths) < 1 or min(self.dilations) < 1:
            raise ValueError("num_classes, depths and dilations must be positive")
        for w in self.widths:
            if w % len(self.dilations) or (2 * w) % self.pw_group_inputs:
                raise ValueError(
                    f"width {w} does not divide into {len(self.dilations)} dilation groups "
                    "and pointwise groups "
                    f"of {self.pw_group_inputs} inputs"
                )

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GlimmerConfig":
        return cls(**data)


def takunet_config(num_classes: int = 4) -> GlimmerConfig:
    """TakuNet as the paper's baseline: effective depths (5, 5, 5, 3), plain depthwise blocks."""
    return GlimmerConfig(
        num_classes=num_classes,
        depths=(5, 5, 5, 3),
        dilations=(1,),
        recombine=False,
        pw_group_inputs=4,
    )


class Stem(nn.Module):
    """The only dense conv: 3x3 dilated stride-2 conv, then a stride-2 depthwise conv
    (224 -> 57)."""

    def __init__(self, out_chs: int) -> None:
        super().__init__()
        self.conv = conv_bn_act(3, out_chs, 3, stride=2, padding=2, dilation=2)
        self.dw = conv_bn_act(out_chs, out_chs, 3, stride=2, padding=2, groups=out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dw(self.conv(x))


class GDBlock(nn.Module):
    """Grouped dilated depthwise block: GD conv -> BN -> ReLU6 -> + input (12*C parameters)."""

    def __init__(self, channels: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.conv = GroupedDilatedConv2d(channels, dilations)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU6(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x))) + x


class FeatureMapsRecomb(nn.Module):
    """Channel shuffle with m groups: new channel ``k*m + i`` is old channel ``i*(C/m) + k``.

    After it, every run of m neighbouring channels holds one feature from each dilation.
    """

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def mixed_concat(x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """Strict interleave: channel 2j is ``x[j]``, channel 2j+1 is ``dense[j]``."""
    b, c, h, w = x.shape
    return torch.stack((x, dense), dim=2).reshape(b, 2 * c, h, w)


class Aggregator(nn.Module):
    """Mixes a stage's GDBlock output with the stage input and maps to the next width.

    (recombine) -> interleave with the stage input -> grouped 1x1 conv -> BN -> ReLU6.
    """

    def __init__(
        self, in_chs: int, out_chs: int, groups: int, recombine: bool, pw_group_inputs: int
    ) -> None:
        super().__init__()
        self.recomb = FeatureMapsRecomb(groups) if recombine and groups > 1 else nn.Identity()
        self.pw = conv_bn_act(2 * in_chs, out_chs, 1, groups=2 * in_chs // pw_group_inputs)

    def forward(self, x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.pw(mixed_concat(self.recomb(x), dense))


class Downsampler(nn.Module):
    """2x2 pooling (max, or avg in the last stage) then GRN."""

    def __init__(self, channels: int, pooling: str) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)
        self.grn = GRN(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grn(self.pool(x))


class Stage(nn.Module):
    """GDBlocks at one width, then Aggregator and Downsampler."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        dilations: Sequence[int],
        pooling: str,
        recombine: bool,
        pw_group_inputs: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[GDBlock(in_chs, dilations) for _ in range(depth)])
        self.aggregator = Aggregator(in_chs, out_chs, len(dilations), recombine, pw_group_inputs)
        self.downsample = Downsampler(out_chs, pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.aggregator(self.blocks(x), x))


class Refiner(nn.Module):
    """Depthwise 3x3 conv -> BN, no activation."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Head(nn.Module):
    """Global average pool -> dropout -> linear classifier."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


class GlimmerNet(nn.Module):
    """GlimmerNet classifier (defaults: the paper's AIDERv2 model, 31,204 parameters).

    Args mirror :class:`GlimmerConfig`; or pass ``config=`` directly.
    """

    def __init__(
        self,
        num_classes: int = 4,
        depths: Sequence[int] = (4, 4, 4, 1),
        widths: Sequence[int] = (40, 80, 160, 240),
        dilations: Sequence[int] = (1, 2, 2, 3),
        poolings: Sequence[str] = ("max", "max", "max", "avg"),
        recombine: bool = True,
        pw_group_inputs: Optional[int] = None,
        dropout: float = 0.0,
        config: Optional[GlimmerConfig] = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = GlimmerConfig(
                num_classes,
                tuple(depths),
                tuple(widths),
                tuple(dilations),
                tuple(poolings),
                recombine,
                pw_group_inputs or 2 * len(tuple(dilations)),
                dropout,
            )
        self.config = config
        widths = config.widths
        out_widths = widths[1:] + widths[-1:]
        self.stem = Stem(widths[0])
        self.stages = nn.Sequential(
            *[
                Stage(w, o, d, config.dilations, p, config.recombine, config.pw_group_inputs)
                for w, o, d, p in zip(widths, out_widths, config.depths, config.poolings)
            ]
        )
        self.refiner = Refiner(widths[-1])
        self.head = Head(widths[-1], config.num_classes, config.dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.refiner(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TakuNet(GlimmerNet):
    """TakuNet baseline (37,444 parameters with 4 classes)."""

    def __init__(self, num_classes: int = 4, config: Optional[GlimmerConfig] = None) -> None:
        super().__init__(config=config or takunet_config(num_classes))


ARCHS = {"glimmernet": GlimmerNet, "takunet": TakuNet}


def build_model(
    arch: str = "glimmernet",
    config: Optional[Dict[str, Any]] = None,
    num_classes: Optional[int] = None,
) -> GlimmerNet:
    """Build a registered architecture, optionally from a saved config dict."""
    if arch not in ARCHS:
        raise KeyError(
            "unknown architecture {!r}; known: {}".format(arch, ", ".join(sorted(ARCHS)))
        )
    if config is not None:
        return GlimmerNet(config=GlimmerConfig.from_dict(dict(config)))
    if arch == "takunet":
        return TakuNet(num_classes or 4)
    return GlimmerNet(num_classes or 4)


def count_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, so excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def stage_names(model: GlimmerNet) -> List[str]:
    return ["stem"] + [f"stage{i + 1}" for i in range(len(model.stages))] + ["refiner", "head"]
