"""glimmer.runtime.core.images: labelled image folders, unreadable files, missing folders."""

import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.images import labelled_images, list_images, read_image


def test_labelled_images_and_unreadable_files(tmp_path):
    import cv2

    for cls in ("b", "a"):
        (tmp_path / cls).mkdir()
        cv2.imwrite(str(tmp_path / cls / "x.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    paths, labels, names = labelled_images(tmp_path)
    assert names == ["a", "b"] and labels == [0, 0, 1]
    assert read_image(tmp_path / "a" / "broken.jpg") is None
    assert read_image(tmp_path / "a" / "x.png").shape == (4, 4, 3)
    with pytest.raises(GlimmerError, match="do not match"):
        labelled_images(tmp_path, ["a", "c"])
    with pytest.raises(GlimmerError, match="no such folder"):
        list_images(tmp_path / "absent")
