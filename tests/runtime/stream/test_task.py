"""The Task protocol: both tasks implement it, and the model's metadata picks which."""

import copy

import numpy as np
import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import ModelMeta
from glimmer.runtime.stream.classify import Classifier, ClassifySettings
from glimmer.runtime.stream.detect import Detector
from glimmer.runtime.stream.pipeline import build_task
from glimmer.runtime.stream.task import Task

CLASSIFIER = ModelMeta(task="classify", name="c", class_names=["Fire", "Normal"], input_size=(8, 8))
DETECTOR = ModelMeta(
    task="detect",
    name="d",
    class_names=["person", "car"],
    input_size=(32, 32),
    letterbox=True,
    stride=32,
)


@pytest.mark.parametrize("meta, kind", [(CLASSIFIER, Classifier), (DETECTOR, Detector)])
def test_metadata_picks_a_task_that_implements_the_protocol(meta, kind):
    task = build_task(meta)
    assert type(task) is kind and isinstance(task, Task)
    task.reset()


def test_a_task_turns_one_batch_into_one_prediction_per_frame():
    task = build_task(CLASSIFIER, ClassifySettings(smoothing=0.0))
    preds = task([np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], np.float32)])
    assert [p["name"] for p in preds] == ["Fire", "Normal", "Fire"]
    assert task.summary(preds[1]).startswith("Normal 0.88")


def test_a_task_the_runtime_has_no_postprocessor_for_is_refused():
    with pytest.raises(GlimmerError, match="metadata key 'task' must be one of"):
        ModelMeta(task="segment", name="s", class_names=["a"], input_size=(8, 8))
    meta = copy.copy(CLASSIFIER)
    object.__setattr__(meta, "task", "segment")  # past the schema, build_task still refuses it
    with pytest.raises(GlimmerError, match="has no postprocessor"):
        build_task(meta)
