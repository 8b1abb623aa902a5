"""glimmer.runtime.core.preprocess: letterboxing (as ultralytics does it, and mapped back), RGB
scaling and normalisation."""

import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor, letterbox


def _meta(**kw):
    base = dict(task="classify", name="glimmernet", class_names=["a", "b"], input_size=(64, 64))
    base.update(kw)
    return ModelMeta(**base)


@pytest.mark.parametrize("shape", [(360, 640), (480, 400), (641, 333)])
def test_letterbox_matches_ultralytics(shape):
    lb = pytest.importorskip("ultralytics.data.augment").LetterBox
    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, t = letterbox(img, (320, 320))
    theirs = lb(new_shape=(320, 320), auto=False, scaleup=True, center=True)(image=img)
    assert ours.shape == theirs.shape == (320, 320, 3)
    np.testing.assert_array_equal(ours, theirs)


def test_letterbox_transform_maps_boxes_back():
    img = np.zeros((100, 200, 3), np.uint8)
    _, t = letterbox(img, (100, 100))  # gain 0.5, 25 px padding top and bottom
    assert (t.gain_x, t.pad_x, t.pad_y) == (0.5, 0.0, 25.0)
    box = np.array([[10.0, 30.0, 60.0, 70.0]])  # in network pixels
    np.testing.assert_allclose(t.to_frame(box), [[20.0, 10.0, 120.0, 90.0]])


def test_preprocessor_rgb_scaling_and_normalisation():
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    x, _ = Preprocessor(_meta(input_size=(4, 4)))([frame])
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, :, 0, 0], [0.0, 0.0, 1.0])  # RGB order: blue last
    y, _ = Preprocessor(
        _meta(input_size=(4, 4), channel_order="BGR", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )([frame])
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, -1.0, -1.0])
    with pytest.raises(GlimmerError, match="HxWx3"):
        Preprocessor(_meta())([np.zeros((8, 8), np.uint8)])
