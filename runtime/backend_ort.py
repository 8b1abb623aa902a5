"""ONNX Runtime backend: the Backend seam over an ``InferenceSession``.

Execution providers are chosen by availability, best first: TensorRT EP (engine cache on, FP16 /
INT8 from the model's precision), CUDA EP, CPU EP; ONNX Runtime itself falls back to the next
provider for nodes one cannot run. The model's metadata comes from the ONNX custom metadata map
(key ``glimmer``, or ultralytics' own keys), so no flags are needed to preprocess or decode.
"""
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .backend import Backend, TensorSpec
from .errors import GlimmerError
from .metadata import ModelMeta

PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int32)": "int32",
              "tensor(int64)": "int64", "tensor(bool)": "bool"}

ProviderArg = Union[str, Tuple[str, Dict[str, Any]]]


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise GlimmerError("ONNX Runtime is not installed: pip install onnxruntime (x86) or NVIDIA's "
                           "onnxruntime-gpu wheel for JetPack; or run an .engine with --backend "
                           "tensorrt") from None
    return onnxruntime


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
    """

    name = "onnxruntime"

    def __init__(self, model_path: Path, meta: Optional[ModelMeta] = None,
                 providers: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                 spin: bool = False, trt_cache_dir: Optional[Path] = None, device_id: int = 0) -> None:
        super().__init__()
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise GlimmerError(f"{self.model_path}: no such model file")
        if threads is not None and threads < 1:
            raise GlimmerError(f"threads must be at least 1, got {threads}")
        self._meta = meta
        self._wanted = list(providers) if providers else None
        self.threads = threads
        self.spin = spin
        self.trt_cache_dir = Path(trt_cache_dir) if trt_cache_dir else self.model_path.parent
        self.device_id = device_id
        self._session = None
        self._input_names: List[str] = []

    # -- session -------------------------------------------------------------------------------
    def _provider_list(self, ort, precision: str) -> List[ProviderArg]:
        available = ort.get_available_providers()
        names = [p for p in (self._wanted or PREFERENCE) if p in available]
        if self._wanted and not names:
            raise GlimmerError("none of the execution providers {} is available (available: {})"
                               .format(", ".join(self._wanted), ", ".join(available)))
        if "CPUExecutionProvider" not in names and "CPUExecutionProvider" in available:
            names.append("CPUExecutionProvider")  # the fallback for nodes a GPU provider refuses
        chosen: List[ProviderArg] = []
        for name in names:
            if name == "TensorrtExecutionProvider":
                chosen.append((name, {
                    "device_id": self.device_id,
                    # Engines take minutes to build on a Jetson: cache them (spec complaint 4).
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(self.trt_cache_dir),
                    "trt_timing_cache_enable": True,
                    "trt_fp16_enable": precision in ("fp16", "int8"),
                    # Q/DQ models need the INT8 flag on TensorRT 8.x; fp16 covers unquantized layers.
                    "trt_int8_enable": precision == "int8",
                }))
            elif name == "CUDAExecutionProvider":
                chosen.append((name, {"device_id": self.device_id}))
            else:
                chosen.append(name)
        return chosen

    def _precision(self, ort) -> str:
        """The model's precision, for the TensorRT EP's FP16 / INT8 flags (known before the session)."""
        if self._meta is not None:
            return self._meta.precision
        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            return "fp32"
        from .loader import read_onnx_metadata  # the session that would tell us does not exist yet

        try:
            return ModelMeta.from_props(read_onnx_metadata(self.model_path)).precision
        except GlimmerError:
            return "fp32"

    def _open(self):
        if self._session is not None:
            return self._session
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.inter_op_num_threads = 1
        if self.threads:
            opts.intra_op_num_threads = self.threads
        if not self.spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: provider fallback notices are ours to report
        try:
            session = ort.InferenceSession(str(self.model_path), sess_options=opts,
                                           providers=self._provider_list(ort, self._precision(ort)))
        except GlimmerError:
            raise
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise GlimmerError(f"{self.model_path}: ONNX Runtime cannot load the model: "
                               f"{str(exc).strip().splitlines()[0]}") from None
        if self._meta is None:
            props = dict(session.get_modelmeta().custom_metadata_map)
            self._meta = ModelMeta.from_props(props, origin=str(self.model_path))
        self._session = session
        self._input_names = [i.name for i in session.get_inputs()]
        if len(self._input_names) != 1:
            raise GlimmerError(f"{self.model_path}: expected one image input, the model has "
                               f"{len(self._input_names)}: {', '.join(self._input_names)}")
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
        return [TensorSpec(i.name, tuple(_dim(d) for d in i.shape), _ORT_TYPES.get(i.type, i.type))
                for i in items]

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

    def describe(self) -> str:
        threads = f", {self.threads} threads" if self.threads else ""
        return f"onnxruntime ({', '.join(self.providers)}{threads})"

    def _activate(self) -> None:
        self._open()
        # Cache the specs: they are read on every frame by check_feed.
        self._in_specs = self._specs(self._session.get_inputs())

    def check_feed(self, batch: np.ndarray) -> None:
        spec = self._in_specs[0]
        if batch.dtype != np.dtype(spec.dtype) or batch.ndim != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, batch.shape)):
            super().check_feed(batch)

    def _infer(self, batch: np.ndarray) -> List[np.ndarray]:
        try:
            return list(self._session.run(None, {self._input_names[0]: batch}))
        except Exception as exc:  # ORT's runtime errors carry no common base type
            raise GlimmerError(f"{self.model_path}: inference failed: "
                               f"{str(exc).strip().splitlines()[0]}") from None

    def _close(self) -> None:
        self._session = None
