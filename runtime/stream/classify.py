"""Classification postprocessing for a stream of frames: softmax, top-k, temporal smoothing, alerts.

A drone's classifier sees the same scene for many frames; single-frame predictions flicker. The
class probabilities are smoothed with an exponential moving average (``s_t = a * s_(t-1) +
(1 - a) * p_t``), and an ``alert`` is raised when one non-normal class (any class but the configured
"normal" one) stays at or above a threshold for K consecutive frames, the debounce that keeps one
bright frame from paging an operator. The model outputs logits ``[B, nc]`` (GlimmerNet's head).

Stills (a folder of photos) are unrelated images, not a stream: each is judged alone
(:meth:`ClassifySettings.for_stills`: no smoothing, no alerts), since averaging one photo into the
next, or alerting on "five photos in a row", means nothing.
"""

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (max subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


@dataclass
class ClassifySettings:
    """Attributes:
    top_k: classes listed per frame.
    smoothing: EMA weight of the past, in [0, 1); 0 turns smoothing off.
    normal_class: the class that never alerts (matched case-insensitively); None (the default):
        a class named "Normal" if the model has one, else none; "" : no class is exempt.
    alert_threshold: smoothed probability a non-normal class must reach.
    alert_frames: K, the consecutive frames it must hold there.
    alerts: False turns alerts off (stills: each image judged alone).
    """

    top_k: int = 3
    smoothing: float = 0.6
    normal_class: Optional[str] = None
    alert_threshold: float = 0.7
    alert_frames: int = 5
    alerts: bool = True

    def for_stills(self) -> "ClassifySettings":
        """The same settings for unrelated images: no smoothing, no alerts."""
        return replace(self, smoothing=0.0, alerts=False)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise GlimmerError(f"classify top_k must be at least 1, got {self.top_k}")
        if not 0.0 <= self.smoothing < 1.0:
            raise GlimmerError(f"classify smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 < self.alert_threshold <= 1.0:
            raise GlimmerError(
                f"classify alert_threshold must be in (0, 1], got {self.alert_threshold}"
            )
        if self.alert_frames < 1:
            raise GlimmerError(f"classify alert_frames must be at least 1, got {self.alert_frames}")


def normal_index(normal_class: Optional[str], class_names: Sequence[str]) -> Optional[int]:
    """The index of the class exempt from alerts, or None when no class is.

    None asks for the usual convention (a class named Normal, any case, if there is one), so a
    model without one still runs; "" says no class is exempt; any other name must be a class.
    """
    lowered = [c.lower() for c in class_names]
    if normal_class is None:
        return lowered.index("normal") if "normal" in lowered else None
    if normal_class == "":
        return None
    if normal_class.lower() not in lowered:
        raise GlimmerError(
            'classify normal_class {!r} is not one of the model\'s classes ({}); use "" for '
            "none".format(normal_class, ", ".join(class_names))
        )
    return lowered.index(normal_class.lower())


class Classifier:
    """Stateful postprocessor for one stream (its smoothing and alert counters carry across
    frames)."""

    task = "classify"

    def __init__(self, meta: ModelMeta, settings: Optional[ClassifySettings] = None) -> None:
        self.meta = meta
        self.settings = settings or ClassifySettings()
        self.class_names = list(meta.class_names)
        self.normal_index = normal_index(self.settings.normal_class, self.class_names)
        self.reset()

    def reset(self) -> None:
        self._smoothed: Optional[np.ndarray] = None
        self._run_class: Optional[int] = None
        self._run_length = 0

    def _update_alert(self, smoothed: np.ndarray) -> Optional[Dict[str, Any]]:
        s = self.settings
        if not s.alerts:
            return None
        masked = smoothed.copy()
        if self.normal_index is not None:
            masked[self.normal_index] = -1.0
        leader = int(masked.argmax())
        if smoothed[leader] >= s.alert_threshold:
            self._run_length = self._run_length + 1 if leader == self._run_class else 1
            self._run_class = leader
        else:
            self._run_class, self._run_length = None, 0
        if self._run_class is None or self._run_length < s.alert_frames:
            return None
        return {
            "name": self.class_names[leader],
            "class": leader,
            "confidence": round(float(smoothed[leader]), 4),
            "frames": self._run_length,
            "new": self._run_length == s.alert_frames,
        }

    def _top(self, probs: np.ndarray) -> List[Dict[str, Any]]:
        order = np.argsort(-probs, kind="stable")[: self.settings.top_k]
        return [
            {"name": self.class_names[i], "class": int(i), "confidence": round(float(probs[i]), 4)}
            for i in order
        ]

    def frame(self, logits: np.ndarray) -> Dict[str, Any]:
        """Postprocess one frame's logits ``[nc]`` (updates the stream state)."""
        logits = np.asarray(logits).reshape(-1)
        if logits.size != len(self.class_names):
            raise GlimmerError(
                f"model output has {logits.size} classes, its metadata names "
                f"{len(self.class_names)}"
            )
        probs = softmax(logits)
        a = self.settings.smoothing
        if self._smoothed is None or a == 0.0:
            self._smoothed = probs
        else:
            self._smoothed = (a * self._smoothed + (1.0 - a) * probs).astype(np.float32)
        top = self._top(self._smoothed)
        return {
            "task": "classify",
            "name": top[0]["name"],
            "class": top[0]["class"],
            "confidence": top[0]["confidence"],
            "top": top,
            "raw": self._top(probs)[0],
            "alert": self._update_alert(self._smoothed),
        }

    def __call__(
        self, outputs: Sequence[np.ndarray], transforms: Sequence[Any] = ()
    ) -> List[Dict[str, Any]]:
        """Outputs of one batch -> one prediction per frame, in batch order."""
        logits = np.asarray(outputs[0])
        if logits.ndim == 1:
            logits = logits[None]
        return [self.frame(row) for row in logits.reshape(logits.shape[0], -1)]

    @staticmethod
    def summary(pred: Dict[str, Any]) -> str:
        """One human line: label, smoothed score, and the alert when one is active."""
        text = "{} {:.2f}".format(pred["name"], pred["confidence"])
        alert = pred.get("alert")
        if alert:
            text += "  ALERT {} {:.2f} ({} frames)".format(
                alert["name"], alert["confidence"], alert["frames"]
            )
        return text
