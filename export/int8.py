"""INT8 ONNX with explicit Q/DQ: the form every TensorRT from 8.x to 11 builds and ONNX Runtime runs.

Spec: /work/shared/spec/tensorrt.md "INT8". ONNX Runtime's ``quantize_static`` with
``QuantFormat.QDQ``, int8 activations and weights, per-channel weights, ``ActivationSymmetric`` and
``WeightSymmetric`` (every zero point 0, as TensorRT requires), MinMax calibration over the images of
:class:`glimmer.calibration.dataset.CalibrationSet`. Two options chosen for TensorRT:

- ``AddQDQPairToWeight``: weights stay float with a Quantize->Dequantize pair, the pattern TensorRT
  8.x's parser was built around (pytorch-quantization's export); 10/11 read it too.
- ``QuantizeBias = False``: biases stay float. ORT's default is an int32 DequantizeLinear on the bias,
  which TensorRT's Q/DQ fusion does not take (it quantises biases itself).

On CPUs the result is rarely faster than FP32 (spec: 6.7 ms vs 2.5 ms measured); we measure and say.
"""
import logging
import tempfile
from pathlib import Path
from typing import Any, Dict

import onnx

from glimmer.calibration.dataset import CalibrationSet, OrtCalibrationReader
from glimmer.runtime.errors import GlimmerError
from glimmer.runtime.fsutil import atomic_path
from glimmer.runtime.metadata import ModelMeta

from .onnx_export import INPUT_NAME, attach_metadata

QUANT_OPTIONS: Dict[str, Any] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "AddQDQPairToWeight": True,
    "QuantizeBias": False,
}


def quantize_int8(fp32: onnx.ModelProto, out_path: Path, calib: CalibrationSet, meta: ModelMeta) -> onnx.ModelProto:
    """Write ``out_path`` (atomically) as the Q/DQ INT8 form of ``fp32``; returns the model written."""
    calib.data  # noqa: B018 - read and check the images before any quantiser work
    # ORT's quantiser logs "run pre-processing first" hints on the root logger: quiet them for
    # this call only, and give the caller's logging back afterwards.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        model = _quantize(fp32, calib)
    finally:
        root.setLevel(level)
    attach_metadata(model, meta)
    with atomic_path(Path(out_path)) as tmp:
        onnx.save(model, str(tmp))
    return model


def _quantize(fp32: onnx.ModelProto, calib: CalibrationSet) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="glimmer-int8-") as work:
        src = Path(work) / "fp32.onnx"
        dst = Path(work) / "int8.onnx"
        onnx.save(fp32, str(src))
        try:
            quantize_static(str(src), str(dst), OrtCalibrationReader(calib, INPUT_NAME),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options=dict(QUANT_OPTIONS))
        except GlimmerError:
            raise
        except Exception as exc:  # ORT raises plain Exceptions with the reason in the text
            raise GlimmerError(f"INT8 quantisation failed: {str(exc).splitlines()[0]}") from None
        return onnx.load(str(dst))


def zero_points_all_zero(model: onnx.ModelProto) -> bool:
    """True when every Q/DQ zero point is 0 (symmetric), as TensorRT requires."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits.get(node.input[2])
            if zp is None or numpy_helper.to_array(zp).any():
                return False
    return True
