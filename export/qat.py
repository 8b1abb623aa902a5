"""INT8 scales from a quantisation-aware-trained checkpoint, for the Q/DQ export.

``glimmer-train --qat-from`` (:mod:`glimmer.train.qat`) trains with fixed input ranges on modules of
the training form and stores them in the checkpoint's ``qat`` entry by module name. The Q/DQ export
quantises tensors of the deploy form (:mod:`glimmer.export.deploy_model`) instead, where the stem is
cut by output channel into parts, each GDBlock into per-stream convs, and the head's Linear is
``fc``. Each quantised Conv / Gemm reads its range from the training module whose input it consumes:

======================================  ==============================  ===========================
deploy layer (weight name)              training module                 deploy structure
======================================  ==============================  ===========================
``stem.parts.J.0.conv``                 ``stem.conv.0``                 DeployStem: stem conv slice
``stem.parts.J.1.conv``                 ``stem.dw.0``                   DeployStem: depthwise slice
``stages.I.blocks.K.convs.J``           ``stages.I.blocks.K.conv``      DeployGDBlock: stream J
``stages.I.aggregator.pw.conv``         ``stages.I.aggregator.pw.0``    DeployAggregator
``refiner.conv``                        ``refiner.conv``                DeployGlimmerNet.refiner
``fc``                                  ``head.fc``                     DeployGlimmerNet.fc
======================================  ==============================  ===========================

Every stream of a GDBlock reads the one range of the whole block input, which is why the streams
of every dilation mode (split, aligned, embed) quantise alike.
"""

import re
from typing import Any, Dict, Mapping, Optional, Tuple

import onnx

from glimmer.calibration.qdq import quant_targets
from glimmer.runtime.core.errors import GlimmerError

#: (deploy layer pattern, training module template), following the table above.
LAYER_MAP: Tuple[Tuple[str, str], ...] = (
    (r"stem\.parts\.\d+\.0\.conv", "stem.conv.0"),
    (r"stem\.parts\.\d+\.1\.conv", "stem.dw.0"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.convs\.\d+", r"stages.\1.blocks.\2.conv"),
    (r"stages\.(\d+)\.aggregator\.pw\.conv", r"stages.\1.aggregator.pw.0"),
    (r"refiner\.conv", "refiner.conv"),
    (r"fc", "head.fc"),
)


def training_module(layer: str) -> Optional[str]:
    """The training-form module whose input the deploy-form ``layer`` consumes (None: not ours)."""
    for pattern, template in LAYER_MAP:
        match = re.fullmatch(pattern, layer)
        if match:
            return match.expand(template)
    return None


def qat_activation_amax(model: onnx.ModelProto, qat: Mapping[str, Any]) -> Dict[str, float]:
    """``max|x|`` of the activation input of every ``quant_targets(model)`` layer, by tensor name,
    from a checkpoint's ``qat`` entry; ready for ``insert_qdq(model, amax, weight_bits=...)``.

    Raises GlimmerError naming the first layer without a QAT range.
    """
    ranges = qat.get("activation_amax") if isinstance(qat, Mapping) else None
    if not isinstance(ranges, Mapping):
        raise GlimmerError("the checkpoint's QAT entry has no 'activation_amax' ranges")
    amax: Dict[str, float] = {}
    for target in quant_targets(model):
        module = training_module(target.layer)
        if module is None or module not in ranges:
            where = f"training module {module!r}" if module else "no GlimmerNet training module"
            raise GlimmerError(
                f"layer {target.layer!r} has no QAT activation range ({where}); "
                "was the checkpoint trained with --qat-from for this architecture?"
            )
        value = float(ranges[module])
        if amax.setdefault(target.activation, value) != value:
            raise GlimmerError(
                f"tensor {target.activation!r} feeds layers with different QAT ranges"
            )
    return amax
