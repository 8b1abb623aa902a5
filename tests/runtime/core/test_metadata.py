"""glimmer.runtime.core.metadata: the model metadata schema, its JSON round trip, errors naming the
key, and ultralytics' metadata read without eval."""

import pytest

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta


def _meta(**kw):
    base = dict(task="classify", name="glimmernet", class_names=["a", "b"], input_size=(64, 64))
    base.update(kw)
    return ModelMeta(**base)


def test_metadata_json_round_trip():
    meta = _meta(mean=(0.1, 0.2, 0.3), std=(1, 2, 3), extra={"k": [1, 2]})
    back = ModelMeta.from_props({METADATA_KEY: meta.to_json()})
    assert back == meta and back.mean == (0.1, 0.2, 0.3)


@pytest.mark.parametrize(
    "change, key",
    [
        ({"task": "segment"}, "task"),
        ({"class_names": []}, "class_names"),
        ({"input_size": (0, 64)}, "input_size"),
        ({"channel_order": "RGBA"}, "channel_order"),
        ({"precision": "int4"}, "precision"),
        ({"std": (1, 0, 1)}, "std"),
    ],
)
def test_metadata_errors_name_the_key(change, key):
    with pytest.raises(GlimmerError, match=key):
        _meta(**change)


def test_metadata_unknown_and_missing_keys():
    data = _meta().to_dict()
    with pytest.raises(GlimmerError, match="unknown metadata key 'colour'"):
        ModelMeta.from_dict(dict(data, colour=1))
    del data["task"]
    with pytest.raises(GlimmerError, match="'task' is missing"):
        ModelMeta.from_dict(data)
    with pytest.raises(GlimmerError, match="not valid JSON"):
        ModelMeta.from_json("{oops")
    with pytest.raises(GlimmerError, match="no model metadata"):
        ModelMeta.from_props({"producer": "x"})


def test_ultralytics_metadata_is_read_without_eval():
    props = {
        "names": "{0: 'car', 1: 'bus'}",
        "imgsz": "[640, 640]",
        "stride": "32",
        "task": "detect",
        "batch": "1",
    }
    meta = ModelMeta.from_props(props)
    assert meta.task == "detect" and meta.class_names == ["car", "bus"] and meta.letterbox
    with pytest.raises(GlimmerError, match="unreadable"):
        ModelMeta.from_props(dict(props, names="__import__('os').system('true')"))
