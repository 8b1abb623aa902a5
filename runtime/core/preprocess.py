"""Frame preprocessing from model metadata: the one implementation training calibration and
deployment share, so INT8 statistics and accuracy checks see exactly what the drone sees.

Frames are uint8 HxWx3 BGR (OpenCV's convention). Classification resizes straight to the input
size (as the GlimmerNet recipe trains); detection letterboxes like ultralytics (aspect kept,
centred padding of 114) and returns the transform needed to map boxes back to the frame.
"""

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np

from glimmer.runtime.core.metadata import ModelMeta


def _cv2():
    try:
        import cv2
    except ImportError:  # pragma: no cover - depends on the install
        from glimmer.runtime.core.errors import GlimmerError

        raise GlimmerError(
            "OpenCV (cv2) is not installed: on x86 `pip install opencv-python-headless`; "
            "on a Jetson use JetPack's python3-opencv"
        ) from None
    return cv2


@dataclass(frozen=True)
class LetterboxTransform:
    """Maps network-input coordinates back to the original frame:
    ``x_frame = (x - pad_x) / gain``."""

    gain_x: float
    gain_y: float
    pad_x: float
    pad_y: float
    frame_width: int
    frame_height: int

    def to_frame(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        out = np.asarray(boxes_xyxy, dtype=np.float32).copy()
        out[..., [0, 2]] = (out[..., [0, 2]] - self.pad_x) / self.gain_x
        out[..., [1, 3]] = (out[..., [1, 3]] - self.pad_y) / self.gain_y
        out[..., [0, 2]] = out[..., [0, 2]].clip(0, self.frame_width)
        out[..., [1, 3]] = out[..., [1, 3]].clip(0, self.frame_height)
        return out


def letterbox(
    image: np.ndarray, size: Tuple[int, int], pad_value: int = 114
) -> Tuple[np.ndarray, LetterboxTransform]:
    """Resize keeping aspect ratio into ``size`` = (height, width), padding the rest (centred)."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    out_h, out_w = size
    gain = min(out_h / h, out_w / w)
    new_w, new_h = int(round(w * gain)), int(round(h * gain))
    pad_w, pad_h = (out_w - new_w) / 2.0, (out_h - new_h) / 2.0
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # The same -0.1/+0.1 rounding as ultralytics, so both put an odd padding pixel on the same side.
    top, bottom = int(round(pad_h - 0.1)), int(round(pad_h + 0.1))
    left, right = int(round(pad_w - 0.1)), int(round(pad_w + 0.1))
    image = cv2.copyMakeBorder(
        image,
        top,
        bottom,
        left,
        right,
        cv2.BORDER_CONSTANT,
        value=(pad_value, pad_value, pad_value),
    )
    return image, LetterboxTransform(gain, gain, float(left), float(top), w, h)


def resize(image: np.ndarray, size: Tuple[int, int]) -> Tuple[np.ndarray, LetterboxTransform]:
    """Plain resize to ``size`` = (height, width), aspect not kept."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    out_h, out_w = size
    if (h, w) != (out_h, out_w):
        image = cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    return image, LetterboxTransform(out_w / w, out_h / h, 0.0, 0.0, w, h)


class Preprocessor:
    """Turns BGR uint8 frames into the network's float32 NCHW batch, as the metadata says."""

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self._scale = np.float32(meta.scale)
        self._mean = (
            None if meta.mean is None else np.asarray(meta.mean, np.float32).reshape(1, 1, 3)
        )
        self._inv_std = (
            None if meta.std is None else (1.0 / np.asarray(meta.std, np.float32)).reshape(1, 1, 3)
        )

    def image(self, frame_bgr: np.ndarray) -> Tuple[np.ndarray, LetterboxTransform]:
        """One frame -> (CHW float32, transform back to the frame)."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            from glimmer.runtime.core.errors import GlimmerError

            raise GlimmerError(f"expected an HxWx3 colour frame, got shape {frame_bgr.shape}")
        size = self.meta.input_size
        if self.meta.letterbox:
            img, transform = letterbox(frame_bgr, size, self.meta.pad_value)
        else:
            img, transform = resize(frame_bgr, size)
        if self.meta.channel_order == "RGB":
            img = img[:, :, ::-1]
        x = img.astype(np.float32) * self._scale
        if self._mean is not None:
            x -= self._mean
        if self._inv_std is not None:
            x *= self._inv_std
        return np.ascontiguousarray(x.transpose(2, 0, 1)), transform

    def __call__(
        self, frames_bgr: Sequence[np.ndarray]
    ) -> Tuple[np.ndarray, List[LetterboxTransform]]:
        """Frames -> (NCHW float32 batch, per-frame transforms)."""
        pairs = [self.image(f) for f in frames_bgr]
        return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
