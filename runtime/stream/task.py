"""The Task protocol: what the pipeline needs from a model's postprocessing, whatever the task.

A task turns a backend's raw outputs for one batch into one prediction per frame, keeps whatever
state a stream needs (the classifier's smoothing and alert run length; the detector has none) and
prints a prediction as one line. :class:`~glimmer.runtime.stream.classify.Classifier` and
:class:`~glimmer.runtime.stream.detect.Detector` implement it; the model's metadata picks which
(:func:`glimmer.runtime.stream.pipeline.build_task`), never a flag. A new task (say, segmentation)
is a new class with these three methods and one line in ``build_task``.
"""

from typing import (  # 3.8+, the runtime's floor
    Any,
    Dict,
    List,
    Protocol,
    Sequence,
    runtime_checkable,
)

import numpy as np


@runtime_checkable
class Task(Protocol):
    """Postprocessing of one model's outputs, frame by frame."""

    def __call__(
        self, outputs: Sequence[np.ndarray], transforms: Sequence[Any] = ()
    ) -> List[Dict[str, Any]]:
        """Outputs of one batch (and each frame's letterbox transform) -> one prediction per
        frame."""

    def reset(self) -> None:
        """Forget per-stream state before a new stream."""

    @staticmethod
    def summary(pred: Dict[str, Any]) -> str:
        """One human line for a prediction (console output)."""
