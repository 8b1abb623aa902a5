"""TensorRT backend: runs a serialized engine (with its sidecar JSON) behind the Backend seam.

Implements "Execution API by version" and "CUDA memory and streams" of docs/tensorrt.md: pinned host
buffers and device buffers sized once for the engine's largest profile shape, one non-default
stream, async H2D -> enqueue -> async D2H and a single synchronize per batch. After the first batch
of a given size the whole sequence (copies included) is captured into a CUDA graph and replayed:
GlimmerNet is ~50 small convolutions, so per-kernel launch overhead, not arithmetic, dominates on a
Jetson and one graph launch replaces them all. If the engine cannot be captured (enqueue fails under
capture) the capture is ended and the backend stays on plain enqueue. A new batch size drops the
graph: TensorRT's first enqueue after a shape change cannot be captured, so it runs plainly and the
graph is captured again after it. Both TensorRT execution generations (bindings, tensor names) come
through :mod:`glimmer.runtime.backends.trt.compat`; CUDA calls through
:mod:`glimmer.runtime.backends.trt.cuda`. An engine without a sidecar (trtexec, ultralytics) gets
its metadata from :mod:`glimmer.runtime.backends.trt.foreign`.
"""

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from glimmer.runtime.backends.base import Backend, TensorSpec
from glimmer.runtime.backends.trt import build as trt_build
from glimmer.runtime.backends.trt import compat as trt_compat
from glimmer.runtime.backends.trt import cuda as cuda_mem
from glimmer.runtime.backends.trt import foreign as trt_foreign
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import sha256_file
from glimmer.runtime.core.metadata import ModelMeta


class TensorRTBackend(Backend):
    """A TensorRT ``.engine``: built by :mod:`glimmer.runtime.backends.trt.build` (with its
    sidecar), or by trtexec / ultralytics (metadata from :mod:`~.foreign`)."""

    name = "tensorrt"

    def __init__(
        self,
        engine_path: Path,
        *,
        meta: Optional[ModelMeta] = None,
        meta_path: Optional[Path] = None,
        cuda_graphs: bool = True,
        cuda: Optional[cuda_mem.CudaMem] = None,
        log: Optional[Callable[[str], None]] = None,
        device: int = 0,
        dla_core: Optional[int] = None,
    ) -> None:
        """``meta`` (or ``meta_path``, a file for :func:`foreign.load_meta_file`) overrides the
        sidecar's metadata, e.g. read from the ONNX the engine came from; the precision stays the
        sidecar's, since that is what the engine is. ``cuda_graphs=False`` never captures (plain
        enqueue every batch); ``device`` is the CUDA device the engine runs on, ``dla_core`` the
        DLA core of an engine built for DLA."""
        super().__init__()
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise GlimmerError(f"{self.engine_path}: engine file not found")
        self.sidecar: Optional[Dict[str, Any]] = None
        self.foreign: Optional[trt_foreign.ForeignEngine] = None
        if trt_build.sidecar_path(self.engine_path).is_file():
            self.sidecar = trt_build.read_sidecar(self.engine_path)
            if meta is None and meta_path is not None:
                meta = trt_foreign.load_meta_file(meta_path)
            if meta is None:
                meta = ModelMeta.from_dict(self.sidecar["meta"], origin=str(self.engine_path))
            if meta.precision != self.sidecar["precision"]:
                meta = dataclasses.replace(meta, precision=self.sidecar["precision"])
            self._plan_offset = 0
        else:
            self.foreign = trt_foreign.resolve(self.engine_path, meta, meta_path)
            meta, self._plan_offset = self.foreign.meta, self.foreign.plan_offset
        self._meta = meta
        self._want_graphs = cuda_graphs
        self.device = int(device)
        self.dla_core = dla_core
        self._cuda = cuda
        self._own_cuda = cuda is None
        self._log = log or (lambda _msg: None)
        self._reset()

    @classmethod
    def from_onnx(
        cls,
        onnx_path: Path,
        precision: str = "fp16",
        cache_dir: Optional[Path] = None,
        log: Callable[[str], None] = print,
        **kwargs: Any,
    ) -> "TensorRTBackend":
        """Build (once, cached on this device) and open the engine for an ONNX model."""
        engine = trt_build.ensure_engine(onnx_path, precision, cache_dir, log=log)
        return cls(engine, log=log, **kwargs)

    def _reset(self) -> None:
        self._trt: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._exec: Optional[trt_compat.Execution] = None
        self._tensors: List[trt_compat.IOTensor] = []
        self._host: Dict[str, cuda_mem.HostBuffer] = {}
        self._device: Dict[str, cuda_mem.DeviceBuffer] = {}
        self._stream = 0
        self._batch: Optional[int] = None
        self._out_shapes: Dict[str, tuple] = {}
        self._graph: Any = None
        self._graph_note = "off (disabled)" if not self._want_graphs else "pending"

    # -- what the engine says about itself -----------------------------------------------------
    @property
    def meta(self) -> ModelMeta:
        return self._meta

    def _specs(self, is_input: bool) -> List[TensorSpec]:
        if self._tensors:
            return [
                TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), t.dtype.name)
                for t in self._tensors
                if t.is_input == is_input
            ]
        if self.sidecar is None:
            # Until activation reads the engine, the input is what the metadata describes.
            if not is_input:
                return []
            height, width = self._meta.input_size
            return [TensorSpec("input", (self._meta.batch, 3, height, width), "float32")]
        key = "inputs" if is_input else "outputs"
        return [
            TensorSpec(
                s["name"], tuple(None if int(d) < 0 else int(d) for d in s["shape"]), s["dtype"]
            )
            for s in self.sidecar[key]
        ]

    @property
    def inputs(self) -> List[TensorSpec]:
        return self._specs(True)

    @property
    def outputs(self) -> List[TensorSpec]:
        return self._specs(False)

    @property
    def graph_state(self) -> str:
        """'on', 'pending', or 'off (why)': reports say which path produced the timings."""
        return self._graph_note

    def describe(self) -> str:
        sc = self.sidecar
        api = self._exec.api if self._exec is not None else "not active"
        via = self._cuda.name if self._cuda is not None else "?"
        if sc is None:
            assert self.foreign is not None
            version = trt_compat.version(self._trt) if self._trt is not None else "?"
            gpu = self._cuda.device_name() if self._cuda is not None else "?"
            return (
                f"tensorrt {version} [{api}], {gpu}, {self._meta.precision} as its metadata "
                f"({self.foreign.source}) says (engine from {self.foreign.tool}: precision not "
                f"recorded), CUDA graphs {self._graph_note}, via {via}"
            )
        dla = f", DLA core {self.dla_core}" if self.dla_core is not None else ""
        return (
            f"tensorrt {sc['tensorrt_version']} [{api}], {sc['gpu_name']} "
            f"(sm {sc['compute_capability']}, cuda:{self.device}){dla}, {sc['precision']}, "
            f"CUDA graphs {self._graph_note}, via {via}"
        )

    # -- life cycle ----------------------------------------------------------------------------
    def _activate(self) -> None:
        origin = str(self.engine_path)
        if (
            self.sidecar is not None
            and sha256_file(self.engine_path) != self.sidecar["engine_sha256"]
        ):
            raise GlimmerError(
                f"{origin}: engine does not match the sha256 in its sidecar (damaged or "
                "replaced); rebuild it from its ONNX"
            )
        trt = trt_compat.import_tensorrt()
        if self._cuda is None:
            # First: the device must be current before TensorRT's Runtime is created on it.
            self._cuda = cuda_mem.open_cuda(device=self.device)
        self._cuda.make_current()
        try:
            runtime = trt_compat.create_runtime(trt, trt_compat.make_logger(trt))
            if self.dla_core is not None:
                trt_compat.set_runtime_dla_core(runtime, self.dla_core)
            plan = self.engine_path.read_bytes()[self._plan_offset :]  # no metadata header
            self._engine = trt_compat.deserialize(trt, runtime, plan, origin)
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise GlimmerError(
                    f"{origin}: TensorRT could not create an execution context (out of GPU memory?)"
                )
            self._trt = trt
            self._tensors = trt_compat.io_tensors(trt, self._engine)
            self._exec = trt_compat.make_execution(self._engine, self._context, self._tensors)
            self._allocate()
        except BaseException:
            self._release()
            raise

    def _allocate(self) -> None:
        """Buffers for the largest shape the engine accepts, bound once (graphs need fixed
        addresses)."""
        assert self._exec is not None and self._cuda is not None
        self._stream = self._cuda.stream()
        for t in self._tensors:
            if t.is_input and any(d < 0 for d in t.shape):
                self._exec.set_input_shape(t, t.max_shape)
        for t in self._tensors:
            shape = t.max_shape if t.is_input else self._exec.output_shape(t)
            if any(d < 0 for d in shape):
                raise GlimmerError(
                    f"{self.engine_path}: output {t.name!r} has a data-dependent shape "
                    f"{list(shape)}, which this backend does not support"
                )
            host = self._cuda.pinned(shape, t.dtype)
            self._host[t.name] = host
            self._device[t.name] = self._cuda.alloc(host.nbytes)
            self._exec.bind(t, self._device[t.name].ptr)
        self._batch = None

    def _bind_batch(self, n: int) -> None:
        assert self._exec is not None
        inputs = [t for t in self._tensors if t.is_input]
        limit = inputs[0].max_shape[0]
        if n > limit:
            raise GlimmerError(
                f"batch of {n} exceeds the engine's maximum batch {limit}; rebuild "
                "with a larger --max-batch"
            )
        for t in inputs:
            if any(d < 0 for d in t.shape):
                self._exec.set_input_shape(t, (n,) + tuple(t.max_shape[1:]))
        self._out_shapes = {
            t.name: self._exec.output_shape(t) for t in self._tensors if not t.is_input
        }
        self._drop_graph()
        if self._want_graphs and not self._graph_note.startswith("off"):
            self._graph_note = "pending"
        self._batch = n

    def _queue(self, nbytes_in: int) -> bool:
        """H2D copies, the inference, D2H copies: all asynchronous on the one stream."""
        cuda, stream = self._cuda, self._stream
        assert cuda is not None and self._exec is not None
        for t in self._tensors:
            if t.is_input:
                cuda.h2d_async(self._device[t.name], self._host[t.name], nbytes_in, stream)
        if not self._exec.enqueue(stream):
            return False
        for t in self._tensors:
            if not t.is_input:
                nbytes = int(np.prod(self._out_shapes[t.name])) * t.dtype.itemsize
                cuda.d2h_async(self._host[t.name], self._device[t.name], nbytes, stream)
        return True

    def _capture(self, nbytes_in: int) -> None:
        """Record H2D + enqueue + D2H once into a CUDA graph; on failure stay on plain enqueue."""
        cuda = self._cuda
        assert cuda is not None
        if not cuda.supports_graphs:
            self._graph_note = f"off ({cuda.name} has no stream capture)"
            return
        cuda.begin_capture(self._stream)
        try:
            queued = self._queue(nbytes_in)
        except Exception as exc:  # noqa: BLE001 - any failure under capture means: no graph
            queued, why = False, str(exc)
        else:
            why = "enqueue failed under capture"
        graph = cuda.end_capture(self._stream)
        if not queued or graph is None:
            if graph is not None:
                cuda.destroy_graph(graph)
            self._graph_note = (
                f"off ({why if not queued else 'capture invalidated'}; plain enqueue)"
            )
            self._log(
                f"CUDA graph capture not possible for {self.engine_path.name}: {self._graph_note}"
            )
            return
        self._graph = graph
        self._graph_note = "on"

    def _drop_graph(self) -> None:
        if self._graph is not None and self._cuda is not None:
            self._cuda.destroy_graph(self._graph)
        self._graph = None

    def _infer(self, batch: np.ndarray) -> List[np.ndarray]:
        cuda = self._cuda
        assert cuda is not None
        cuda.make_current()  # this thread may not be the one that activated the backend
        n = int(batch.shape[0])
        if n != self._batch:
            self._bind_batch(n)
        inp = [t for t in self._tensors if t.is_input][0]
        host = self._host[inp.name].array
        staged = host.reshape(-1)[: batch.size].reshape(batch.shape)
        np.copyto(staged, batch)
        nbytes_in = batch.size * inp.dtype.itemsize
        if self._graph is not None:
            cuda.launch_graph(self._graph, self._stream)
        else:
            if not self._queue(nbytes_in):
                raise GlimmerError(
                    f"{self.engine_path.name}: TensorRT failed to enqueue the inference"
                )
        cuda.synchronize(self._stream)  # the one synchronize per batch
        outputs = []
        for t in self._tensors:
            if not t.is_input:
                shape = self._out_shapes[t.name]
                flat = self._host[t.name].array.reshape(-1)[: int(np.prod(shape))]
                outputs.append(flat.reshape(shape).copy())  # pinned buffers are reused next batch
        if self._graph is None and self._graph_note == "pending":
            # The first plain run has flushed TensorRT's lazy setup; now the sequence can be
            # captured.
            self._capture(nbytes_in)
        return outputs

    def _release(self) -> None:
        cuda = self._cuda
        self._drop_graph()
        if cuda is not None:
            for buf in list(self._host.values()) + list(self._device.values()):
                cuda.free(buf)
            if self._own_cuda:
                cuda.close()
                self._cuda = None
        self._context = None
        self._engine = None
        self._reset()

    def _close(self) -> None:
        self._release()
