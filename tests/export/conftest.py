"""Fixtures the export tests share."""

import pytest
import torch
from random_weights import randomise

from glimmer.models.checkpoint import save_checkpoint
from glimmer.models.glimmernet import GlimmerNet
from glimmer.train.synthetic import CLASSES, make_scene_dataset


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """``tiny.pt`` (a small GlimmerNet with randomised BN and GRN, 64 px) and ``data/`` (a scene
    dataset: Train 5 and Val 3 images per class), made once per test module."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = randomise(GlimmerNet(widths=(8, 16, 32, 48), depths=(2, 1, 1, 1)))
    save_checkpoint(root / "tiny.pt", model, "glimmernet", CLASSES, (64, 64))
    make_scene_dataset(root / "data", {"Train": 5, "Val": 3}, size=64)
    return root
