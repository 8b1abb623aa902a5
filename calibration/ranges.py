"""Activation ranges (``amax``) for Q/DQ scales, measured with ONNX Runtime's calibrators.

Three methods, the ones ONNX Runtime ships (``onnxruntime.quantization.calibrate``) and TensorRT's
own calibrators mirror: ``minmax`` (the largest |x| seen), ``percentile`` (the 99.999th percentile
of |x|, which ignores rare outliers) and ``entropy`` (the clipping threshold whose quantised
histogram keeps the most information, KL divergence, TensorRT's IInt8EntropyCalibrator2 idea). Which
one loses least depends on the model; with a labelled set the export measures all three and keeps
the best (see :mod:`glimmer.export.int8`).

The calibrators run the float model with the activation inputs of the quantised layers added as
outputs, over :class:`CalibrationSet`'s images, preprocessed exactly as deployment preprocesses.
"""

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Sequence

import numpy as np

from glimmer.runtime.core.errors import GlimmerError

from .dataset import CalibrationSet, OrtCalibrationReader

if TYPE_CHECKING:
    import onnx

METHODS = ("minmax", "percentile", "entropy")


def _calibration_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def activation_amax(
    model: "onnx.ModelProto",
    tensors: Sequence[str],
    calib: CalibrationSet,
    method: str,
    input_name: str,
) -> Dict[str, float]:
    """``max|x|`` to quantise each of ``tensors`` with, as ``method`` calibrates it on ``calib``."""
    if method not in METHODS:
        raise GlimmerError(
            f"calibration method must be one of {', '.join(METHODS)}, got {method!r}"
        )
    from onnxruntime.quantization.calibrate import create_calibrator

    wanted = set(tensors)
    # ORT's calibrator logs hints on the root logger: quiet them for this call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="glimmer-calib-") as work:
            src = Path(work) / "fp32.onnx"
            import onnx  # lazily: METHODS is read by code that must not need onnx

            onnx.save(model, str(src))
            calibrator = create_calibrator(
                src,
                op_types_to_calibrate=["Conv", "Gemm"],
                augmented_model_path=str(Path(work) / "augmented.onnx"),
                calibrate_method=_calibration_method(method),
                extra_options={"symmetric": True},
            )
            try:
                calibrator.collect_data(OrtCalibrationReader(calib, input_name))
                data = calibrator.compute_data()
            finally:
                calibrator.clear_collected_data() if hasattr(
                    calibrator, "clear_collected_data"
                ) else None
    except GlimmerError:
        raise
    except Exception as exc:  # ORT raises plain Exceptions with the reason in the text
        raise GlimmerError(
            f"INT8 calibration ({method}) failed: {str(exc).splitlines()[0]}"
        ) from None
    finally:
        root.setLevel(level)
    amax: Dict[str, float] = {}
    for name in wanted:
        if name not in data.data:
            raise GlimmerError(f"INT8 calibration ({method}) measured no range for tensor {name!r}")
        low, high = data.data[name].range_value
        amax[name] = float(
            max(abs(float(np.asarray(low).min())), abs(float(np.asarray(high).max())))
        )
    return amax
