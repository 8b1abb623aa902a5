"""Layer-wise structured channel pruning of YOLOv8 by BatchNorm scale (network slimming).

Implements stage 2 of Sabaghian et al. (YOLOv8 compression framework): in every conv+BN layer
independently (no global threshold), remove the ``ratio`` of output channels with the smallest
|gamma| (Liu et al. 2017, "Learning efficient convolutional networks through network slimming").

YOLOv8's graph couples some channels; those are pruned with one shared mask (a *group*), ranked by
the sum of |gamma| over the group's members:

- C2f: ``cv1``'s output is split by ``chunk(2)``, so both halves keep the same number of channels;
  ``m.hidden`` (``C2f.c``) becomes that number and ``cv2``'s input is the concatenation of the kept
  halves and every bottleneck output.
- Residual C2f (backbone, ``shortcut=True``): the second half of ``cv1`` and every bottleneck
  ``cv2`` output are summed, so they form one group.
- Concat: a consumer's input channels are the concatenation of its sources' kept channels.
- SPPF: ``cv2``'s input is ``cv1``'s mask repeated four times (x, pool, pool^2, pool^3).
- Detect: the inner convs of each branch are pruned; the final 1x1 convs keep their 4*reg_max box
  and nc class outputs. By default the stem conv and the box branch are kept whole (the box width is
  already at its ``4*reg_max`` floor); with them YOLOv8m lands at 6.75M, within 2% of the paper.

The pruned model is the same ultralytics module tree with smaller tensors, so ``YOLO(path)``,
``fuse()``, ``val`` and the ultralytics exporter keep working.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from glimmer.models.yolo import ultralytics_modules
from glimmer.runtime.core.errors import GlimmerError

from .yolo import check_yolov8, layer_costs

Member = Tuple[str, int, int]  # (conv module name, first output channel, width)


@dataclass
class Group:
    """Output channels pruned with one mask: every member keeps the same positions."""

    members: List[Member]
    keep: int
    reason: str


@dataclass
class PruneResult:
    model: nn.Module
    keep: Dict[
        str, torch.Tensor
    ]  # Conv module name (ultralytics Conv: .conv + .bn) -> kept channels
    groups: List[Group] = field(default_factory=list)


def n_keep(channels: int, ratio: float) -> int:
    return max(1, channels - int(round(channels * ratio)))


def plan_groups(
    model: nn.Module, ratio: float, keep_stem: bool = True, keep_box: bool = True
) -> List[Group]:
    """Every prunable Conv output of a YOLOv8 model, as groups that share one mask."""
    mods = ultralytics_modules()
    Conv, C2f, SPPF, Detect = mods["Conv"], mods["C2f"], mods["SPPF"], mods["Detect"]
    groups: List[Group] = []

    def single(name: str, conv: nn.Module, reason: str = "layer", whole: bool = False) -> None:
        c = conv.conv.out_channels
        groups.append(Group([(name, 0, c)], c if whole else n_keep(c, ratio), reason))

    for i, layer in enumerate(model.model):
        p = f"model.{i}"
        if type(layer) is Conv:
            single(
                p,
                layer,
                "stem (kept whole)" if i == 0 and keep_stem else "layer",
                i == 0 and keep_stem,
            )
        elif type(layer) is C2f:
            c = layer.c
            k = n_keep(c, ratio)  # chunk(2) needs equal halves
            groups.append(Group([(f"{p}.cv1", 0, c)], k, "C2f cv1 first half"))
            second = [(f"{p}.cv1", c, c)]
            if layer.m[0].add:
                second += [(f"{p}.m.{j}.cv2", 0, c) for j in range(len(layer.m))]
                groups.append(
                    Group(second, k, "C2f residual sum: cv1 second half + every bottleneck cv2")
                )
            else:
                groups.append(Group(second, k, "C2f cv1 second half"))
                for j in range(len(layer.m)):
                    single(f"{p}.m.{j}.cv2", layer.m[j].cv2, "bottleneck output")
            for j in range(len(layer.m)):
                single(f"{p}.m.{j}.cv1", layer.m[j].cv1, "bottleneck hidden")
            single(f"{p}.cv2", layer.cv2, "C2f output")
        elif type(layer) is SPPF:
            single(f"{p}.cv1", layer.cv1, "SPPF cv1 (its mask repeats x4 into cv2)")
            single(f"{p}.cv2", layer.cv2, "SPPF output")
        elif type(layer) is Detect:
            for j in range(layer.nl):
                for k in (0, 1):
                    single(
                        f"{p}.cv2.{j}.{k}",
                        layer.cv2[j][k],
                        "Detect box branch (kept whole)" if keep_box else "Detect box branch",
                        keep_box,
                    )
                    single(f"{p}.cv3.{j}.{k}", layer.cv3[j][k], "Detect class branch")
    return groups


def rank_groups(model: nn.Module, groups: List[Group]) -> Dict[str, torch.Tensor]:
    """Kept output channels per Conv: each group keeps its largest summed-|gamma| positions."""
    named = dict(model.named_modules())
    keep: Dict[str, List[torch.Tensor]] = {}
    for g in groups:
        score = sum(named[n].bn.weight.detach().float().abs()[o : o + w] for n, o, w in g.members)
        idx = torch.sort(torch.topk(score, g.keep).indices).values
        for n, o, _ in g.members:
            keep.setdefault(n, []).append(idx + o)
    # members are registered in channel order (cv1's first half before its second half)
    return {n: torch.cat(parts) for n, parts in keep.items()}


def _slice_conv(
    conv: nn.Conv2d, out_idx: Optional[torch.Tensor], in_idx: Optional[torch.Tensor]
) -> None:
    if conv.groups != 1:
        raise GlimmerError("grouped convs are not part of YOLOv8; cannot prune this model")
    w = conv.weight.data
    if out_idx is not None:
        w = w[out_idx]
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[out_idx].clone())
        conv.out_channels = len(out_idx)
    if in_idx is not None:
        w = w[:, in_idx]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(w.clone())


def _slice_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight = nn.Parameter(bn.weight.data[idx].clone())
    bn.bias = nn.Parameter(bn.bias.data[idx].clone())
    bn.running_mean = bn.running_mean[idx].clone()
    bn.running_var = bn.running_var[idx].clone()
    bn.num_features = len(idx)


def _prune_conv(
    block: nn.Module, out_idx: Optional[torch.Tensor], in_idx: Optional[torch.Tensor]
) -> None:
    """Prune an ultralytics Conv (conv + bn + act)."""
    _slice_conv(block.conv, out_idx, in_idx)
    if out_idx is not None:
        _slice_bn(block.bn, out_idx)


def _cat(parts: List[torch.Tensor], widths: List[int]) -> torch.Tensor:
    """Indices into a channel concatenation of tensors of the given original widths."""
    out, offset = [], 0
    for idx, w in zip(parts, widths):
        out.append(idx + offset)
        offset += w
    return torch.cat(out)


def apply_masks(model: nn.Module, keep: Dict[str, torch.Tensor]) -> None:
    """Cut every Conv to its kept outputs and every consumer to its sources' kept channels."""
    mods = ultralytics_modules()
    Conv, C2f, SPPF, Concat, Detect = (mods[k] for k in ("Conv", "C2f", "SPPF", "Concat", "Detect"))
    out_idx: List[torch.Tensor] = []
    out_width: List[int] = []
    for i, layer in enumerate(model.model):
        p = f"model.{i}"
        src = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        src = [s if s >= 0 else i + s for s in src]
        if i == 0:
            in_idx = None
        elif type(layer) is Concat:
            in_idx = _cat([out_idx[s] for s in src], [out_width[s] for s in src])
        else:
            in_idx = out_idx[src[0]]
        if type(layer) is Conv:
            width = layer.conv.out_channels
            _prune_conv(layer, keep[p], in_idx)
            out_idx.append(keep[p])
        elif type(layer) is C2f:
            c, width = layer.c, layer.cv2.conv.out_channels
            _prune_conv(layer.cv1, keep[f"{p}.cv1"], in_idx)
            both = keep[f"{p}.cv1"]
            half_a, half_b = both[: len(both) // 2], both[len(both) // 2 :] - c
            chain, parts = half_b, [half_a, half_b]
            for j, bott in enumerate(layer.m):
                hidden = keep[f"{p}.m.{j}.cv1"]
                _prune_conv(bott.cv1, hidden, chain)
                chain = keep[f"{p}.m.{j}.cv2"]
                _prune_conv(bott.cv2, chain, hidden)
                parts.append(chain)
            _prune_conv(layer.cv2, keep[f"{p}.cv2"], _cat(parts, [c] * len(parts)))
            layer.c = len(half_a)
            out_idx.append(keep[f"{p}.cv2"])
        elif type(layer) is SPPF:
            c_, width = layer.cv1.conv.out_channels, layer.cv2.conv.out_channels
            _prune_conv(layer.cv1, keep[f"{p}.cv1"], in_idx)
            n = getattr(layer, "n", 3) + 1
            _prune_conv(layer.cv2, keep[f"{p}.cv2"], _cat([keep[f"{p}.cv1"]] * n, [c_] * n))
            out_idx.append(keep[f"{p}.cv2"])
        elif type(layer) in (nn.Upsample, Concat):
            width = (
                out_width[src[0]] if type(layer) is nn.Upsample else sum(out_width[s] for s in src)
            )
            out_idx.append(in_idx)
        elif type(layer) is Detect:
            for j, s in enumerate(src):
                for branch in ("cv2", "cv3"):
                    seq = getattr(layer, branch)[j]
                    a, b = keep[f"{p}.{branch}.{j}.0"], keep[f"{p}.{branch}.{j}.1"]
                    _prune_conv(seq[0], a, out_idx[s])
                    _prune_conv(seq[1], b, a)
                    _slice_conv(seq[2], None, b)  # final 1x1: box / class outputs stay
            width = 0
            out_idx.append(torch.empty(0, dtype=torch.long))
        else:
            raise GlimmerError(f"layer {i} ({type(layer).__name__}) is not part of YOLOv8")
        out_width.append(width)


def prune_yolov8(
    model: nn.Module, ratio: float = 0.5, keep_stem: bool = True, keep_box: bool = True
) -> PruneResult:
    """Prune ``model`` in place (pass a copy to keep the original) and return the masks used."""
    if not 0.0 <= ratio < 1.0:
        raise GlimmerError(f"--ratio must be in [0, 1), got {ratio}")
    check_yolov8(model, "model")
    model.float().eval()
    groups = plan_groups(model, ratio, keep_stem, keep_box)
    keep = rank_groups(model, groups)
    apply_masks(model, keep)
    return PruneResult(model, keep, groups)


def per_layer_table(
    before: nn.Module, after: nn.Module, imgsz: int
) -> Tuple[str, Dict[str, float]]:
    """Markdown table of params and GFLOPs per layer, before and after, plus the totals."""
    rows_b, rows_a = layer_costs(before, imgsz), layer_costs(after, imgsz)
    lines = [
        f"| layer | type | params before | params after | GFLOPs@{imgsz} before | after |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for rb, ra in zip(rows_b, rows_a):
        lines.append(
            f"| {rb['layer']} | {rb['type']} | {rb['params']:,} | {ra['params']:,} | "
            f"{rb['flops'] / 1e9:.3f} | {ra['flops'] / 1e9:.3f} |"
        )
    totals = {
        "params_before": sum(r["params"] for r in rows_b),
        "params_after": sum(r["params"] for r in rows_a),
        "gflops_before": sum(r["flops"] for r in rows_b) / 1e9,
        "gflops_after": sum(r["flops"] for r in rows_a) / 1e9,
    }
    lines.append(
        f"| total | | {totals['params_before']:,} | {totals['params_after']:,} | "
        f"{totals['gflops_before']:.2f} | {totals['gflops_after']:.2f} |"
    )
    return "\n".join(lines), totals
