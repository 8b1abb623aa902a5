"""glimmer.train.augment: the paper's recipe, framed by the runtime's own preprocessing."""

import math

import albumentations as A
import numpy as np
import pytest

from glimmer.models.checkpoint import DEFAULT_PREPROCESS
from glimmer.runtime.core.preprocess import Preprocessor
from glimmer.train.augment import ClassifierTransform, classifier_meta, paper_augmentations

CLASSES = ["Earthquake", "Fire", "Flood", "Normal"]


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)  # BGR, not square: the resize matters


def test_evaluation_input_is_exactly_the_deployment_preprocessing(frame):
    meta = classifier_meta(CLASSES, 64)
    assert (meta.channel_order, meta.scale, meta.mean, meta.std) == (
        DEFAULT_PREPROCESS["channel_order"],
        DEFAULT_PREPROCESS["scale"],
        None,
        None,
    )
    out = ClassifierTransform(meta, train=False)(frame)
    expected = Preprocessor(meta).image(frame)[0]
    assert out.dtype == np.float32 and out.shape == (3, 64, 64)
    np.testing.assert_array_equal(out, expected)
    # RGB order, /255: the first channel is the frame's last (red) channel after the resize.
    import cv2

    resized = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out[0], resized[:, :, 2] / 255.0, atol=1e-7)


def test_training_input_is_seeded_per_sample_and_stays_in_range(frame):
    transform = ClassifierTransform(classifier_meta(CLASSES, 64), train=True, seed=22)
    outs = [transform(frame, (i, 1)) for i in range(12)]
    for out in outs:
        assert out.shape == (3, 64, 64) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    np.testing.assert_array_equal(transform(frame, (3, 1)), outs[3])
    distinct = {out.tobytes() for out in outs}
    assert len(distinct) >= 6  # at least the horizontal flip (p 0.5) varies across 12 samples
    plain = ClassifierTransform(classifier_meta(CLASSES, 64), train=False)(frame)
    assert sum(not np.array_equal(out, plain) for out in outs) >= 3


def test_recipe_probabilities_and_parameters_follow_the_paper():
    transforms = {type(t).__name__: t for t in paper_augmentations().transforms}
    probabilities = {name: t.p for name, t in transforms.items()}
    assert probabilities == {
        "HorizontalFlip": 0.5,
        "Perspective": 0.1,
        "GridDistortion": 0.2,
        "CoarseDropout": 0.1,
        "GaussNoise": 0.1,
        "Affine": 0.2,
        "ColorJitter": 0.2,
        "Blur": 0.1,
        "ToGray": 0.1,
        "RandomGamma": 0.1,
    }
    assert tuple(transforms["Perspective"].scale) == (0.01, 0.05)
    noise = transforms["GaussNoise"].std_range
    assert (noise[0] * 255) ** 2 == pytest.approx(40) and (noise[1] * 255) ** 2 == pytest.approx(70)
    dropout = transforms["CoarseDropout"]
    assert tuple(dropout.num_holes_range) == (1, 10)
    assert dropout.hole_height_range[1] * 224 == pytest.approx(25)
    assert tuple(transforms["RandomGamma"].gamma_limit) == (20, 200)
    assert tuple(transforms["Blur"].blur_limit) == (3, 9)
    jitter = transforms["ColorJitter"]
    assert tuple(jitter.brightness) == pytest.approx((0.6, 1.4)) and tuple(
        jitter.hue
    ) == pytest.approx((-0.2, 0.2))
    affine = transforms["Affine"]
    assert tuple(affine.rotate) == (-10, 10) and tuple(affine.scale["x"]) == pytest.approx(
        (0.9, 1.1)
    )


def test_coarse_dropout_holes_are_25_pixels_at_224():
    dropout = next(t for t in paper_augmentations().transforms if isinstance(t, A.CoarseDropout))
    one = A.Compose(
        [
            A.CoarseDropout(
                num_holes_range=(1, 1),
                hole_height_range=dropout.hole_height_range,
                hole_width_range=dropout.hole_width_range,
                fill=0,
                p=1.0,
            )
        ],
        seed=3,
    )
    out = one(image=np.full((224, 224, 3), 255, np.uint8))["image"]
    assert int((out[:, :, 0] == 0).sum()) == 25 * 25
    assert math.isclose(dropout.hole_width_range[0], 25 / 224)
