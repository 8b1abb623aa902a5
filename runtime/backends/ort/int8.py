"""How ONNX Runtime's CPU execution provider runs an INT8 (Q/DQ) model: ``int8_kernels``.

    fused      ONNX Runtime's default: Q/DQ groups fused into integer kernels where it can (only
               groups whose output is quantised too: never for glimmer-export's TensorRT placement).
    simulated  Q/DQ left unfused (session config ``session.disable_quant_qdq = 1``): the model is
               evaluated in float with quantize/dequantize rounding, which is what TensorRT
               computes up to rounding. Slower, never saturates.
    auto       fused, except for a model with 8-bit weights on a CPU whose fused u8*s8 kernels
               saturate int16 (x86 without VNNI, see cpu.py): there simulated, since fused lost
               accuracy there (weighted F1 0.969 -> 0.856 measured with Q/DQ on every op). 7-bit
               weights fit int16. A TensorRT-placement file (Q/DQ on Conv/Gemm inputs only,
               ``extra["int8"]["placement"]``) has no group ONNX Runtime can fuse into an integer
               kernel (that needs a quantised conv output), so both modes compute the same float
               maths on every CPU; auto picks simulated there because, with the fusion off, ONNX
               Runtime folds the weights' DequantizeLinear into constants instead of running it on
               every frame (measured 6x faster on GlimmerNet: 0.41 vs 2.45 ms at 96 px, 1 thread).

Both remedies, 7-bit weights (``reduce_range``) and unfused Q/DQ, are ONNX Runtime's documented
answers to the saturation: https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
The policy is for the CPU EP only; on the TensorRT / CUDA EPs the backend leaves ONNX Runtime alone.
"""

from typing import Any, Optional, Tuple

from glimmer.runtime.core.cpu import CpuFacts
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta

INT8_KERNELS = ("auto", "fused", "simulated")
#: each mode in a few words (describe()), and in full (start-up lines, reports)
MODES = {"fused": "Q/DQ fusion on", "simulated": "simulated in float"}
MODE_LINES = {
    "fused": "ONNX Runtime's Q/DQ fusion on",
    "simulated": "simulated in float: Q/DQ left unfused",
}
DISABLE_QDQ = "session.disable_quant_qdq"  # ONNX Runtime's session config key
#: widest weights whose u8*s8 pair sums fit int16 (255*63*2 = 32130 <= 32767)
MAX_UNSATURATED_BITS = 7


def check_int8_kernels(value: Any, name: str = "int8_kernels") -> str:
    """``value`` if it is one of :data:`INT8_KERNELS`, else an error naming ``name``."""
    if value not in INT8_KERNELS:
        raise GlimmerError(f"{name} must be one of {', '.join(INT8_KERNELS)}, got {value!r}")
    return str(value)


def weight_bits(meta: ModelMeta) -> int:
    """The weights' bit width from ``extra["int8"]["weight_bits"]``; older files without it
    are 8."""
    info = (meta.extra or {}).get("int8")
    bits = info.get("weight_bits") if isinstance(info, dict) else None
    return bits if isinstance(bits, int) and not isinstance(bits, bool) and 2 <= bits <= 8 else 8


def tensorrt_placement(meta: ModelMeta) -> bool:
    """True for glimmer-export's TensorRT placement (``extra["int8"]["placement"]`` =
    "tensorrt...")."""
    info = (meta.extra or {}).get("int8")
    placement = info.get("placement") if isinstance(info, dict) else None
    return isinstance(placement, str) and placement.startswith("tensorrt")


def int8_policy(meta: ModelMeta, cpu: CpuFacts, setting: str = "auto") -> Tuple[Optional[str], str]:
    """(mode, reason) for ``meta`` on ``cpu``: mode is ``fused`` or ``simulated``, or None for a
    model that is not INT8 (nothing to decide). Pure, so every case is testable without ORT."""
    setting = check_int8_kernels(setting)
    if meta.precision != "int8":
        return None, f"not an INT8 model ({meta.precision})"
    bits = weight_bits(meta)
    reason = [cpu.description]
    unfusable = tensorrt_placement(meta)
    if unfusable:
        reason.append(
            "TensorRT placement: no integer kernels either way; unfused, the weights' "
            "dequantisation folds into constants"
        )
    elif cpu.saturates:
        reason.append(
            f"{bits}-bit weights"
            + (": pair sums fit int16" if bits <= MAX_UNSATURATED_BITS else "")
        )
    if setting != "auto":
        return setting, "; ".join([f"int8_kernels = {setting}"] + reason)
    simulated = unfusable or (cpu.saturates and bits > MAX_UNSATURATED_BITS)
    return ("simulated" if simulated else "fused"), "; ".join(reason)


def describe_int8(mode: str, reason: str) -> str:
    """One line: ``simulated in float: Q/DQ left unfused (x86_64, AVX2 without VNNI: ...)``."""
    return f"{MODE_LINES[mode]} ({reason})"


def int8_note(backend: Any) -> Optional[str]:
    """How an activated backend runs its INT8 model, for start-up lines and reports ("executed as
    fused integer kernels (...)"; other backends: "executed by <backend>"); None for other
    models."""
    if backend.meta.precision != "int8":
        return None
    text = getattr(backend, "int8_execution", None)
    return f"executed as {text}" if text else f"executed by {backend.describe()}"
