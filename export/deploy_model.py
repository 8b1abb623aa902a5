"""The export form of GlimmerNet / TakuNet: the same function as the training model, written so the
traced ONNX graph is small and static (docs/glimmernet.md, "Export form"); the training model
keeps the readable form.

What changes against ``glimmer.models.glimmernet``, one rewrite per module of
:mod:`glimmer.export.rewrites` (each exact up to fp32 rounding, each with its own parity test):
- every BatchNorm folded into the conv in front of it, ReLU6 as ``Clip(0, 6)`` (``fold_bn``);
- the grouped dilated depthwise conv lowered to one depthwise conv per stream of channels
  (``dilation``: ``split``, ``aligned`` or ``embed``). The streams stay separate tensors from the
  stage input to the Aggregator (``streams``): the stem is cut into the first stage's streams by
  output channel (``output_slice``), the GRN in front of every later stage cuts them (``grn``);
- FeatureMapsRecomb + MixedConcatenation as one constant Reshape/Transpose/Concat/Reshape chain
  (``interleave``);
- GRN through GlobalAveragePool of x*x and ``y = x * (gamma * N + 1) + beta`` (``grn``).

Assembly dispatches on module type, timm's ``reparameterize_model`` idea: the model is walked in
registration order, which is its data order, and every module whose type (or a base of it) has a
:class:`Rule` in ``REWRITES`` goes to that rule's rewrite with its :class:`Site`; what is inside it
is the rewrite's business. A rule also names the slot its rewrite fills, so the deploy form's names
(``stem.parts.0.0.conv``, ``stages.0.blocks.1.convs.0``, ``stages.0.aggregator.pw.conv``,
``stages.0.grn.shifts.0``, ``refiner.conv``, ``fc``) come from the rules, never from the training
model's attribute paths: ONNX node and initializer names, the Q/DQ layer names and
:mod:`glimmer.export.qat`'s table depend on them. A model variant built from the same blocks needs
nothing new here. The slots must come in the order
``stem (blocks+ aggregator pool grn)+ refiner fc``.

The module is tied to one input size (the Aggregator's constant shapes, the GRN's eps); the batch is
free.
"""

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torch.nn import functional as F

from glimmer.models.glimmernet import Aggregator, GDBlock, GlimmerNet, Refiner, Stem
from glimmer.models.layers import GRN

from .rewrites.dilation import MODES, DeployGDBlock, block_streams
from .rewrites.fold_bn import fold_conv_bn_act
from .rewrites.grn import DeployGRN
from .rewrites.interleave import DeployAggregator
from .rewrites.output_slice import DeployStem
from .rewrites.streams import Streams, cat_streams


@dataclass(frozen=True)
class Site:
    """What a rewrite needs beyond its module: where the module sits in this export."""

    mode: str  # dilation lowering
    spatial: Tuple[int, ...]  # (H, W) of the module's input at the export's input size
    streams: Tuple[int, ...]  # channels of each stream its output is cut into (a GDBlock: its own)


@dataclass(frozen=True)
class Rule:
    """The slot (attribute name in the deploy form) and the rewrite of one module type."""

    slot: str
    rewrite: Callable[[nn.Module, Site], nn.Module]


def keep(module: nn.Module, site: Site) -> nn.Module:
    """Modules the export form uses as they are (pooling, the classifier)."""
    return module


REWRITES: Dict[Type[nn.Module], Rule] = {
    Stem: Rule("stem", lambda stem, site: DeployStem(stem, site.streams)),
    GDBlock: Rule("blocks", lambda block, site: DeployGDBlock(block, site.mode)),
    Aggregator: Rule("aggregator", lambda agg, site: DeployAggregator(agg, site.spatial)),
    nn.MaxPool2d: Rule("pool", keep),
    nn.AvgPool2d: Rule("pool", keep),
    GRN: Rule("grn", lambda grn, site: DeployGRN(grn, site.spatial, site.streams)),
    Refiner: Rule("refiner", lambda refiner, site: fold_conv_bn_act(refiner)),
    nn.Linear: Rule("fc", keep),
}
#: leaves with no rule that compute nothing to rewrite: the head's global pool is
#: DeployGlimmerNet.forward's, Dropout and Identity are nothing in eval.
ABSORBED = (nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)
LAYOUT = re.compile(r"stem(?: (?:blocks )+aggregator pool grn)+ refiner fc")
STAGE_SLOTS = ("blocks", "aggregator", "pool", "grn")


def rule_for(module: nn.Module) -> Optional[Rule]:
    """The rule of ``module``'s type or its nearest base with one."""
    for cls in type(module).__mro__:
        if cls in REWRITES:
            return REWRITES[cls]
    return None


def rewritable_modules(model: nn.Module) -> List[nn.Module]:
    """The modules with a rule, in registration order, not looking inside them; a leaf with neither
    a rule nor a place in ``ABSORBED`` is an error rather than silently dropped."""
    found: List[nn.Module] = []
    for child in model.children():
        if rule_for(child) is not None:
            found.append(child)
        elif next(child.children(), None) is not None:
            found.extend(rewritable_modules(child))
        elif not isinstance(child, ABSORBED):
            raise ValueError(f"no export rewrite for {type(child).__name__}")
    return found


@torch.no_grad()
def module_sites(
    model: nn.Module, modules: Sequence[nn.Module], mode: str, input_size: Tuple[int, int]
) -> List[Site]:
    """The site of each of ``modules`` (in data order), found by running ``model`` once: its input
    size, and the streams of the GDBlock after it (or its whole output as one stream)."""
    spatial: Dict[int, Tuple[int, ...]] = {}
    channels: Dict[int, int] = {}
    hooks = []
    for i, module in enumerate(modules):
        hooks.append(
            module.register_forward_pre_hook(
                lambda _m, args, i=i: spatial.__setitem__(i, tuple(args[0].shape[2:]))
            )
        )
        hooks.append(
            module.register_forward_hook(
                lambda _m, _args, out, i=i: channels.__setitem__(i, int(out.shape[1]))
            )
        )
    try:
        model.eval()(torch.zeros(1, 3, int(input_size[0]), int(input_size[1])))
    finally:
        for hook in hooks:
            hook.remove()
    sites: List[Site] = []
    for i, module in enumerate(modules):
        nxt = modules[i + 1] if i + 1 < len(modules) else None
        if isinstance(module, GDBlock):
            streams = tuple(block_streams(module, mode))
            if sites and sites[-1].streams != streams:
                raise ValueError(
                    f"GDBlock streams {list(streams)} differ from its input's "
                    f"{list(sites[-1].streams)}"
                )
        elif isinstance(nxt, GDBlock):
            streams = tuple(block_streams(nxt, mode))
        else:
            streams = (channels[i],)
        sites.append(Site(mode, spatial[i], streams))
    return sites


def rewrite_modules(
    model: nn.Module, mode: str, input_size: Tuple[int, int]
) -> List[Tuple[str, nn.Module]]:
    """(slot, rewritten module) for every module with a rule, in data order."""
    modules = rewritable_modules(model)
    sites = module_sites(model, modules, mode, input_size)
    rules = [rule_for(module) for module in modules]
    return [
        (rule.slot, rule.rewrite(module, site)) for rule, module, site in zip(rules, modules, sites)
    ]


class DeployStage(nn.Module):
    """GDBlocks on streams -> Aggregator -> pool -> GRN (cutting the next stage's streams)."""

    def __init__(
        self, blocks: Sequence[nn.Module], aggregator: nn.Module, pool: nn.Module, grn: nn.Module
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.aggregator = aggregator
        self.pool = pool
        self.grn = grn

    def forward(self, dense: torch.Tensor, streams: Streams) -> Tuple[torch.Tensor, Streams]:
        for block in self.blocks:
            streams = block(streams)
        return self.grn(self.pool(self.aggregator(cat_streams(streams), dense)))


def assemble(
    parts: Sequence[Tuple[str, nn.Module]],
) -> Tuple[nn.Module, List[DeployStage], nn.Module, nn.Module]:
    """(stem, stages, refiner, fc) from the rewritten modules in data order."""
    slots = " ".join(slot for slot, _ in parts)
    if not LAYOUT.fullmatch(slots):
        raise ValueError(f"modules in an order the export form cannot run: {slots}")
    stages: List[DeployStage] = []
    blocks: List[nn.Module] = []
    stage: Dict[str, nn.Module] = {}
    named: Dict[str, nn.Module] = {}
    for slot, module in parts:
        if slot == "blocks":
            blocks.append(module)
        elif slot in STAGE_SLOTS:
            stage[slot] = module
            if slot == "grn":
                stages.append(DeployStage(blocks, **stage))
                blocks, stage = [], {}
        else:
            named[slot] = module
    return named["stem"], stages, named["refiner"], named["fc"]


class DeployGlimmerNet(nn.Module):
    """GlimmerNet / TakuNet in export form for one input size; ``forward`` returns logits."""

    def __init__(self, model: GlimmerNet, mode: str, input_size: Tuple[int, int]) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"dilation mode must be one of {MODES}, got {mode!r}")
        self.dilation_mode = mode
        stem, stages, refiner, fc = assemble(rewrite_modules(model, mode, input_size))
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.refiner = refiner
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense, streams = self.stem(x)
        for stage in self.stages:
            dense, streams = stage(dense, streams)
        y = self.refiner(dense)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def deploy_form(model: GlimmerNet, mode: str, input_size: Tuple[int, int]) -> DeployGlimmerNet:
    """The export form of ``model`` (left untouched) for ``input_size`` = (h, w)."""
    return DeployGlimmerNet(model.eval(), mode, input_size).eval()
