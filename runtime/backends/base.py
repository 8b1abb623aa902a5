"""The Backend seam: one small interface that every inference engine implements.

The pipeline never asks which backend it holds. Shape follows Polygraphy's runners: construction is
cheap, ``activate()`` does the expensive work (deserialize, allocate), ``infer()`` checks its feed
against the input spec, ``close()`` frees; also usable as a context manager.
"""

import abc
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta

#: ``--device cpu``; any other device is a CUDA index
CPU = "cpu"
_CUDA = re.compile(r"^(?:cuda:?)?(\d+)$")


def parse_device(
    device: Optional[Union[str, int]], flag: str = "--device"
) -> Union[str, int, None]:
    """ultralytics' device vocabulary -> None (choose by backend), ``"cpu"``, or a CUDA index.

    ``cpu``, ``0``, ``1``, ``cuda:0``, ``cuda`` (device 0) are accepted; several devices
    (``0,1``) are not: one model runs on one device.
    """
    if device is None:
        return None
    text = str(device).strip().lower()
    if text in ("", "auto"):
        return None
    if text == CPU:
        return CPU
    if text == "cuda":
        return 0
    found = _CUDA.match(text)
    if found:
        return int(found.group(1))
    if "," in text:
        raise GlimmerError(f"{flag} {device}: one device only (a model runs on one device)")
    raise GlimmerError(f"{flag} {device}: expected cpu, a CUDA index (0, 1, ...) or cuda:N")


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output; ``None`` in ``shape`` marks a dynamic dimension."""

    name: str
    shape: Tuple[Optional[int], ...]
    dtype: str  # numpy dtype name: float32, float16, int8, ...


class Backend(abc.ABC):
    """Runs one model on batches of preprocessed input."""

    #: short name for reports: "onnxruntime", "tensorrt", ...
    name = "backend"

    def __init__(self) -> None:
        self._active = False

    # -- what the model says about itself ---------------------------------------------------
    @property
    @abc.abstractmethod
    def meta(self) -> ModelMeta:
        """The model's metadata (task, classes, preprocessing)."""

    @property
    @abc.abstractmethod
    def inputs(self) -> List[TensorSpec]:
        """Input specs (one image input for our models)."""

    @property
    @abc.abstractmethod
    def outputs(self) -> List[TensorSpec]:
        """Output specs, in the order :meth:`infer` returns them."""

    def describe(self) -> str:
        """One line for reports: backend, device, providers or engine details."""
        return self.name

    # -- life cycle ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None:
        """Load / allocate; called once by :meth:`activate`."""

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> List[np.ndarray]:
        """Run one batch already checked against the input spec."""

    def _close(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to free
        """Free resources; the default has none."""

    def activate(self) -> "Backend":
        if not self._active:
            self._activate()
            self._active = True
        return self

    def infer(self, batch: np.ndarray) -> List[np.ndarray]:
        if not self._active:
            raise GlimmerError(f"{self.name} backend used before activate()")
        self.check_feed(batch)
        return self._infer(batch)

    def close(self) -> None:
        if self._active:
            self._close()
            self._active = False

    def __enter__(self) -> "Backend":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def check_feed(self, batch: np.ndarray) -> None:
        """Reject a batch whose rank, fixed dimensions or dtype disagree with the input spec."""
        spec = self.inputs[0]
        if batch.dtype != np.dtype(spec.dtype):
            raise GlimmerError(f"input {spec.name!r} expects {spec.dtype}, got {batch.dtype}")
        if batch.ndim != len(spec.shape) or any(
            want is not None and want != got for want, got in zip(spec.shape, batch.shape)
        ):
            raise GlimmerError(
                "input {!r} expects shape {}, got {}".format(
                    spec.name, ["?" if d is None else d for d in spec.shape], list(batch.shape)
                )
            )
