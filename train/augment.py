"""The GlimmerNet paper's training augmentations (albumentations), inside deployment's resize.

Recipe (docs/glimmernet.md, "Training recipe of the paper"; train split only, each p = 0.1 unless
given): resize (p 1), horizontal flip (p 0.5), perspective (scale 0.01-0.05), grid distortion
(p 0.2), coarse dropout (up to 10 holes of 25x25 at 224), Gaussian noise (variance 40-70),
shift-scale-rotate (0.1, 0.1, 10 deg, p 0.2), colour jitter (0.4, 0.4, 0.4, 0.2, p 0.2),
blur (limit 10), to-gray, random gamma (20-200).

The resize and the tensor scaling are not albumentations': they are
``glimmer.runtime.core.preprocess``, the code the drone runs (cv2 INTER_LINEAR resize, BGR -> RGB,
/255, no mean/std), so training sees exactly what deployment sees. The reference used
albumentations 1.x; the parameters below carry its meaning over to 2.x (noted where the API
changed).
"""

import math
import random
from typing import Sequence, Tuple

import albumentations as A
import cv2
import numpy as np

from glimmer.models.checkpoint import DEFAULT_PREPROCESS
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor, resize

# 1.x GaussNoise(var_limit=(40, 70)) added noise of variance 40-70 in uint8 units; 2.x takes the
# standard deviation as a fraction of 255.
NOISE_STD_RANGE = (math.sqrt(40.0) / 255.0, math.sqrt(70.0) / 255.0)
# 25x25 holes at the paper's 224, kept proportional at other sizes.
HOLE_FRACTION = 25.0 / 224.0


def paper_augmentations() -> A.Compose:
    """The paper's augmentations after the resize, on an RGB uint8 image of the input size."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Perspective(scale=(0.01, 0.05), p=0.1),
            # 1.x reflected the borders of grid distortion and shift-scale-rotate; 2.x pads black.
            A.GridDistortion(border_mode=cv2.BORDER_REFLECT_101, p=0.2),
            A.CoarseDropout(
                num_holes_range=(1, 10),
                hole_height_range=(HOLE_FRACTION, HOLE_FRACTION),
                hole_width_range=(HOLE_FRACTION, HOLE_FRACTION),
                fill=0,
                p=0.1,
            ),
            A.GaussNoise(std_range=NOISE_STD_RANGE, p=0.1),
            # ShiftScaleRotate(0.1, 0.1, 10) as the Affine 2.x recommends in its place.
            A.Affine(
                translate_percent=(-0.1, 0.1),
                scale=(0.9, 1.1),
                rotate=(-10, 10),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.2,
            ),
            A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2, p=0.2),
            # 1.x drew odd kernels from [3, 10]: 3, 5, 7, 9 (2.x would round the limit up to 11).
            A.Blur(blur_limit=(3, 9), p=0.1),
            A.ToGray(p=0.1),
            A.RandomGamma(gamma_limit=(20, 200), p=0.1),
        ]
    )


def classifier_meta(
    class_names: Sequence[str], img_size: int, arch: str = "glimmernet"
) -> ModelMeta:
    """The runtime metadata a checkpoint from this training run will carry."""
    return ModelMeta(
        task="classify",
        name=arch,
        class_names=list(class_names),
        input_size=(img_size, img_size),
        channel_order=DEFAULT_PREPROCESS["channel_order"],
        scale=DEFAULT_PREPROCESS["scale"],
        mean=DEFAULT_PREPROCESS["mean"],
        std=DEFAULT_PREPROCESS["std"],
    )


class ClassifierTransform:
    """BGR uint8 frame -> CHW float32 network input, augmented for training.

    Evaluation is ``Preprocessor.image`` alone. Training resizes with the runtime's resize, augments
    in RGB (colour jitter and to-gray assume RGB), then hands the augmented frame back to the same
    ``Preprocessor``, whose resize is then a no-op.

    Args:
        meta: the input contract (size, channel order, scale) shared with deployment.
        train: apply the paper's augmentations.
        seed: run seed; each sample's augmentation is seeded by (seed, index, epoch), so it does
            not depend on which worker draws it (albumentations' own generator would be copied,
            identically seeded, into every forked worker).
    """

    def __init__(self, meta: ModelMeta, train: bool, seed: int = 22) -> None:
        self.preprocessor = Preprocessor(meta)
        self.size: Tuple[int, int] = tuple(meta.input_size)  # type: ignore[assignment]
        self.seed = int(seed)
        self.augment = paper_augmentations() if train else None

    def __call__(self, frame_bgr: np.ndarray, key: Tuple[int, int] = (0, 0)) -> np.ndarray:
        if self.augment is not None:
            rgb = np.ascontiguousarray(resize(frame_bgr, self.size)[0][:, :, ::-1])
            rng = np.random.default_rng([self.seed, int(key[0]), int(key[1])])
            self.augment.set_random_state(rng, random.Random(int(rng.integers(1 << 62))))
            rgb = self.augment(image=rgb)["image"]
            frame_bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        return self.preprocessor.image(frame_bgr)[0]
