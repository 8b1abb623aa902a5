"""ONNX Runtime backend: the Backend seam over an ``InferenceSession``.

Execution providers are chosen by availability, best first: TensorRT EP (engine cache on, FP16 /
INT8 from the model's precision), CUDA EP, CPU EP; ONNX Runtime itself falls back to the next
provider for nodes one cannot run. The model's metadata comes from the ONNX custom metadata map
(key ``glimmer``, or ultralytics' own keys), so no flags are needed to preprocess or decode.
On the CPU EP an INT8 model's Q/DQ are fused or simulated in float by ``int8_kernels``
(backends/ort/int8.py): fused u8*s8 kernels saturate on x86 without VNNI.
"""

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from glimmer.runtime.backends.base import Backend, TensorSpec
from glimmer.runtime.backends.ort.int8 import (
    DISABLE_QDQ,
    MODES,
    check_int8_kernels,
    describe_int8,
    int8_policy,
)
from glimmer.runtime.backends.ort.session import (
    ProviderArg,
    import_onnxruntime,
    open_session,
    session_options,
)
from glimmer.runtime.core.cpu import cpu_facts
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.onnx_meta import read_onnx_metadata

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def check_half(provider: str) -> None:
    """``--half`` on ``provider`` (the first the session would use): only the TensorRT EP has an
    FP16 switch for an FP32 model; elsewhere FP16 would silently be FP32, so it is refused."""
    if provider == "CPUExecutionProvider":
        raise GlimmerError(
            "--half: ONNX Runtime on the CPU has no FP16 path; use --backend tensorrt on a GPU or "
            "drop --half"
        )
    if provider == "CUDAExecutionProvider":
        raise GlimmerError(
            "--half: ONNX Runtime's CUDA provider runs an FP32 model in FP32 (it has no FP16 "
            "switch); use --backend tensorrt, or drop --half"
        )


def _dim(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and value > 0 else None


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX model in ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file.
        meta: metadata to use instead of the file's own (the file's is read otherwise).
        providers: provider names to allow, in preference order (default: all available).
        threads: intra-op threads (default: ONNX Runtime's choice, one per physical core).
        spin: let idle worker threads spin; off by default because the pipeline's other stages
            need those cores while inference waits.
        trt_cache_dir: where the TensorRT EP caches its engines (default: beside the model).
        int8_kernels: ``auto``, ``fused`` or ``simulated``: how the CPU EP runs an INT8 model's
            Q/DQ (backends/ort/int8.py); ignored for other models and on the TensorRT / CUDA EPs.
        device_id: the CUDA device of the TensorRT and CUDA EPs.
        half: ``--half``: FP16 inference, which only the TensorRT EP offers for an FP32 model
            (``trt_fp16_enable``); on the CUDA or CPU EP it is an error, not a silent FP32 run.
        gpu: ``--device N`` was given: a GPU provider must be available.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        meta: Optional[ModelMeta] = None,
        providers: Optional[Sequence[str]] = None,
        threads: Optional[int] = None,
        spin: bool = False,
        trt_cache_dir: Optional[Path] = None,
        device_id: int = 0,
        int8_kernels: str = "auto",
        half: bool = False,
        gpu: bool = False,
    ) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise GlimmerError(f"{self.model_path}: no such model file")
        if threads is not None and threads < 1:
            raise GlimmerError(f"threads must be at least 1, got {threads}")
        self.int8_kernels = check_int8_kernels(int8_kernels)
        self._meta = meta
        self._wanted = list(providers) if providers else None
        self.threads = threads
        self.spin = spin
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else self.model_path.parent
        self.device_id = device_id
        self.half = half
        self.gpu = gpu
        self._session = None
        self._input_names: List[str] = []
        self._int8: Optional[Tuple[str, str]] = None  # (mode, reason) once the session exists

    # -- session -------------------------------------------------------------------------------
    def _provider_list(self, ort, precision: str) -> List[ProviderArg]:
        available = ort.get_available_providers()
        names = [p for p in (self._wanted or PREFERENCE) if p in available]
        if self._wanted and not names:
            raise GlimmerError(
                "none of the execution providers {} is available (available: {})".format(
                    ", ".join(self._wanted), ", ".join(available)
                )
            )
        gpus = [n for n in names if n != "CPUExecutionProvider"]
        if self.gpu and not gpus:
            raise GlimmerError(
                f"--device {self.device_id}: this ONNX Runtime has no GPU provider (available: "
                f"{', '.join(available)}); install onnxruntime-gpu, or use --device cpu"
            )
        if self.half:
            check_half(names[0] if names else "CPUExecutionProvider")
        if "CPUExecutionProvider" not in names and "CPUExecutionProvider" in available:
            names.append("CPUExecutionProvider")  # the fallback for nodes a GPU provider refuses
        chosen: List[ProviderArg] = []
        for name in names:
            if name == "TensorrtExecutionProvider":
                chosen.append(
                    (
                        name,
                        {
                            "device_id": self.device_id,
                            # Engines take minutes to build on a Jetson: cache them.
                            "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(self.trt_cache_dir),
                            "trt_timing_cache_enable": True,
                            "trt_fp16_enable": self.half or precision in ("fp16", "int8"),
                            # Q/DQ models need the INT8 flag on TensorRT 8.x; fp16 covers
                            # unquantized layers.
                            "trt_int8_enable": precision == "int8",
                        },
                    )
                )
            elif name == "CUDAExecutionProvider":
                chosen.append((name, {"device_id": self.device_id}))
            else:
                chosen.append(name)
        return chosen

    def plan_providers(self) -> List[ProviderArg]:
        """The providers the session will be given, without opening it: ``--device`` and
        ``--half`` problems are found at construction rather than at the first frame."""
        meta = self._early_meta()
        return self._provider_list(
            import_onnxruntime(), meta.precision if meta is not None else "fp32"
        )

    def _early_meta(self) -> Optional[ModelMeta]:
        """The metadata before the session exists: the TensorRT EP's FP16 / INT8 flags and the CPU
        EP's INT8 policy are session options. Given metadata is used as is; otherwise the file's map
        is read (a walk of the protobuf's top level, not the graph) and kept for :attr:`meta`. None
        when the file has none: the session then reports the problem."""
        if self._meta is not None:
            return self._meta
        try:  # the session that would tell us does not exist yet
            return ModelMeta.from_props(
                read_onnx_metadata(self.model_path), origin=str(self.model_path)
            )
        except GlimmerError:
            return None

    def _int8_options(
        self, opts, meta: Optional[ModelMeta], providers: Sequence[ProviderArg]
    ) -> Optional[Tuple[str, str]]:
        """Apply ``int8_kernels`` to an INT8 model bound for the CPU EP; its (mode, reason)."""
        first = providers[0] if providers else "CPUExecutionProvider"
        if (
            meta is None
            or (first if isinstance(first, str) else first[0]) != "CPUExecutionProvider"
        ):
            return None  # no metadata, or a GPU EP, which runs Q/DQ its own way
        mode, reason = int8_policy(meta, cpu_facts(), self.int8_kernels)
        if mode == "simulated":  # Q/DQ evaluated in float: no integer kernel to saturate
            opts.add_session_config_entry(DISABLE_QDQ, "1")
        return (mode, reason) if mode is not None else None

    def _open(self):
        if self._session is not None:
            return self._session
        opts = session_options(self.threads, spin=self.spin)
        meta = self._early_meta()
        providers = self._provider_list(
            import_onnxruntime(), meta.precision if meta is not None else "fp32"
        )
        int8 = self._int8_options(opts, meta, providers)
        session = open_session(self.model_path, opts, providers)
        if self._meta is None and meta is not None:
            self._meta = meta  # read from the file above: not parsed a second time
        if self._meta is None:
            props = dict(session.get_modelmeta().custom_metadata_map)
            self._meta = ModelMeta.from_props(props, origin=str(self.model_path))
        self._session, self._int8 = session, int8
        self._input_names = [i.name for i in session.get_inputs()]
        if len(self._input_names) != 1:
            raise GlimmerError(
                f"{self.model_path}: expected one image input, the model has "
                f"{len(self._input_names)}: {', '.join(self._input_names)}"
            )
        return session

    # -- Backend -------------------------------------------------------------------------------
    @property
    def meta(self) -> ModelMeta:
        if self._meta is None:
            self._open()
        assert self._meta is not None
        return self._meta

    @staticmethod
    def _specs(items) -> List[TensorSpec]:
        return [
            TensorSpec(i.name, tuple(_dim(d) for d in i.shape), _ORT_TYPES.get(i.type, i.type))
            for i in items
        ]

    @property
    def inputs(self) -> List[TensorSpec]:
        return self._specs(self._open().get_inputs())

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._specs(self._open().get_outputs())

    @property
    def providers(self) -> List[str]:
        """The providers the session actually uses, best first."""
        return list(self._open().get_providers())

    @property
    def concurrency(self) -> int:
        """Frames worth running at once: on the CPU, the cores left idle by one run's intra-op
        threads (session.run is thread-safe); on a GPU provider one, as the device serialises."""
        if self.providers[0] != "CPUExecutionProvider":
            return 1
        cores = os.cpu_count() or 1
        return max(1, min(4, cores // (self.threads or cores)))

    @property
    def int8_mode(self) -> Optional[str]:
        """``fused`` or ``simulated`` for an INT8 model on the CPU EP, else None."""
        self._open()
        return self._int8[0] if self._int8 else None

    @property
    def int8_execution(self) -> Optional[str]:
        """How the CPU EP runs this INT8 model, with why (``ONNX Runtime's Q/DQ fusion on (x86_64,
        AVX-512 VNNI)``); None for other models and on GPU EPs."""
        self._open()
        return describe_int8(*self._int8) if self._int8 else None

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        int8 = f", INT8 {MODES[self.int8_mode]}" if self.int8_mode else ""
        return f"onnxruntime ({', '.join(self.providers)}{threads}{int8})"

    def _activate(self) -> None:
        self._open()
        # Cache the specs: they are read on every frame by check_feed.
        self._in_specs = self._specs(self._session.get_inputs())

    def check_feed(self, batch: np.ndarray) -> None:
        spec = self._in_specs[0]
        if (
            batch.dtype != np.dtype(spec.dtype)
            or batch.ndim != len(spec.shape)
            or any(want is not None and want != got for want, got in zip(spec.shape, batch.shape))
        ):
            super().check_feed(batch)

    def _infer(self, batch: np.ndarray) -> List[np.ndarray]:
        try:
            return list(self._session.run(None, {self._input_names[0]: batch}))
        except Exception as exc:  # ORT's runtime errors carry no common base type
            raise GlimmerError(
                f"{self.model_path}: inference failed: {str(exc).strip().splitlines()[0]}"
            ) from None

    def _close(self) -> None:
        self._session = None
