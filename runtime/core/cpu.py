"""What this CPU means for INT8 inference in ONNX Runtime's CPU execution provider.

ONNX Runtime fuses an INT8 model's QuantizeLinear/DequantizeLinear pairs into u8*s8 integer
kernels. On x86 without an int8 dot-product instruction (VNNI) its AVX2 / AVX-512 kernels use
VPMADDUBSW, which adds pairs of u8*s8 products into int16 *with saturation* (255*127*2 = 64770 >
32767), so a model with full 8-bit weights loses accuracy there. VNNI (VPDPBUSD, AMX) accumulates
into int32 and ARM's kernels widen to 16/32 bits: neither saturates. ONNX Runtime's quantization
guide documents this and its remedies (7-bit weights, or Q/DQ left unfused):
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
"""

import functools
import platform
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple

X86 = ("x86_64", "amd64", "i386", "i486", "i586", "i686", "x86")
#: x86 flags of a non-saturating int8 dot product, best first, with their names for reports
X86_INT8_DOT: Tuple[Tuple[str, str], ...] = (
    ("amx_int8", "AMX-INT8"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
)
#: x86 flags whose ONNX Runtime u8*s8 kernels sum pairs into int16 (without VNNI they saturate);
#: older x86 CPUs get SSE2 kernels that widen to 16 bits before multiplying
X86_PAIRWISE = (("avx512bw", "AVX-512"), ("avx2", "AVX2"))
SATURATION = "u8*s8 pair sums saturate int16"
CPUINFO = "/proc/cpuinfo"


def is_x86(arch: str) -> bool:
    return arch.lower() in X86


def is_arm(arch: str) -> bool:
    return arch.lower().startswith(("aarch64", "arm"))


def parse_cpu_flags(text: str, arch: str) -> FrozenSet[str]:
    """The feature flags in a /proc/cpuinfo text: x86's ``flags`` line, ARM's ``Features`` line."""
    key = "flags" if is_x86(arch) else "features" if is_arm(arch) else None
    if key is None:
        return frozenset()
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == key:
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags() -> FrozenSet[str]:
    """This CPU's feature flags, empty where /proc/cpuinfo is absent or unreadable (tests stub
    this)."""
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as fh:
            return parse_cpu_flags(fh.read(), platform.machine())
    except OSError:
        return frozenset()


@dataclass(frozen=True)
class CpuFacts:
    """The INT8-relevant facts of one CPU.

    Attributes:
        arch: ``platform.machine()`` (x86_64, aarch64, ...).
        int8_dot: the non-saturating int8 dot-product instruction ("AVX-512 VNNI", "dotprod
            (SDOT/UDOT)"), empty without one.
        saturates: ONNX Runtime's fused u8*s8 kernels saturate int16 here (x86 without VNNI).
        description: one line for start-up lines and reports.
    """

    arch: str
    int8_dot: str
    saturates: bool
    description: str

    @classmethod
    def from_flags(cls, arch: str, flags: FrozenSet[str]) -> "CpuFacts":
        arch = arch or "unknown"
        if is_x86(arch):
            dot = next((name for flag, name in X86_INT8_DOT if flag in flags), "")
            if dot:
                return cls(arch, dot, False, f"{arch}, {dot}")
            if not flags:  # Windows, a container without /proc: assume the common AVX2 case
                return cls(arch, "", True, f"{arch}, CPU flags unreadable: assuming {SATURATION}")
            simd: Optional[str] = next((name for flag, name in X86_PAIRWISE if flag in flags), None)
            if simd is None:
                return cls(
                    arch,
                    "",
                    False,
                    f"{arch}, SSE without AVX2: int8 widened to 16 bits, no saturation",
                )
            return cls(arch, "", True, f"{arch}, {simd} without VNNI: {SATURATION}")
        if is_arm(arch):
            dot = "dotprod (SDOT/UDOT)" if "asimddp" in flags else ""
            tail = dot if dot else "no dotprod: int8 widened to 16 bits"
            return cls(arch, dot, False, f"{arch}, {tail}, no saturation")
        return cls(arch, "", False, f"{arch}: portable int8 kernels, no saturation")


@functools.lru_cache(maxsize=None)
def cpu_facts() -> CpuFacts:
    """This machine's :class:`CpuFacts`, read once (``cpu_facts.cache_clear()`` re-reads)."""
    return CpuFacts.from_flags(platform.machine(), read_cpu_flags())
