"""The runtime floor every layer shares: metadata schema, preprocessing, metrics, atomic writes."""
import json

import numpy as np
import pytest

from glimmer.runtime.core.console import run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path, atomic_write_text, sha256_file
from glimmer.runtime.core.images import labelled_images, list_images, read_image
from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta
from glimmer.runtime.core.preprocess import Preprocessor, letterbox
from glimmer.runtime.tools.metrics import classification_report


def _meta(**kw):
    base = dict(task="classify", name="glimmernet", class_names=["a", "b"], input_size=(64, 64))
    base.update(kw)
    return ModelMeta(**base)


# ---- metadata ---------------------------------------------------------------------------------
def test_metadata_json_round_trip():
    meta = _meta(mean=(0.1, 0.2, 0.3), std=(1, 2, 3), extra={"k": [1, 2]})
    back = ModelMeta.from_props({METADATA_KEY: meta.to_json()})
    assert back == meta and back.mean == (0.1, 0.2, 0.3)


@pytest.mark.parametrize("change, key", [
    ({"task": "segment"}, "task"), ({"class_names": []}, "class_names"), ({"input_size": (0, 64)}, "input_size"),
    ({"channel_order": "RGBA"}, "channel_order"), ({"precision": "int4"}, "precision"), ({"std": (1, 0, 1)}, "std"),
])
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
    props = {"names": "{0: 'car', 1: 'bus'}", "imgsz": "[640, 640]", "stride": "32", "task": "detect",
             "batch": "1"}
    meta = ModelMeta.from_props(props)
    assert meta.task == "detect" and meta.class_names == ["car", "bus"] and meta.letterbox
    with pytest.raises(GlimmerError, match="unreadable"):
        ModelMeta.from_props(dict(props, names="__import__('os').system('true')"))


# ---- preprocessing ------------------------------------------------------------------------------
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
    y, _ = Preprocessor(_meta(input_size=(4, 4), channel_order="BGR", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))([frame])
    np.testing.assert_allclose(y[0, :, 0, 0], [1.0, -1.0, -1.0])
    with pytest.raises(GlimmerError, match="HxWx3"):
        Preprocessor(_meta())([np.zeros((8, 8), np.uint8)])


# ---- metrics -----------------------------------------------------------------------------------
def test_classification_report_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    p[p == 3] = 2  # class 3 never predicted: precision undefined -> 0, as sklearn
    rep = classification_report(y, p, list("wxyz"))
    assert rep["f1_weighted"] == pytest.approx(metrics.f1_score(y, p, average="weighted", zero_division=0))
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
    prec, rec, f1, sup = metrics.precision_recall_fscore_support(y, p, labels=range(4), zero_division=0)
    for i, name in enumerate("wxyz"):
        assert rep["per_class"][name]["precision"] == pytest.approx(prec[i])
        assert rep["per_class"][name]["recall"] == pytest.approx(rec[i])
        assert rep["per_class"][name]["support"] == sup[i]
    assert np.array_equal(rep["confusion_matrix"], metrics.confusion_matrix(y, p, labels=range(4)))


# ---- image folders and files --------------------------------------------------------------------
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


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"ok": 1}))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("export failed")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert len(sha256_file(target)) == 64


def test_run_cli_turns_user_errors_into_one_line(capsys):
    def bad(argv):
        raise GlimmerError("--flag must be positive")

    assert run_cli("glimmer-x", bad, []) == 1
    assert capsys.readouterr().err == "glimmer-x: error: --flag must be positive\n"
