"""Checkpoints: our format round-trips, the reference Lightning layout loads, bad files fail
clearly."""

import pytest
import torch

from glimmer.models.checkpoint import (
    load_checkpoint,
    reference_state_dict,
    save_checkpoint,
    sniff_kind,
)
from glimmer.models.glimmernet import GlimmerNet, TakuNet
from glimmer.runtime.core.errors import GlimmerError


def _randomised(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model.eval()


def test_round_trip_keeps_weights_config_and_provenance(tmp_path):
    model = _randomised(GlimmerNet(num_classes=3, depths=(2, 1, 1, 1)))
    path = tmp_path / "m.pt"
    save_checkpoint(
        path, model, "glimmernet", ["a", "b", "c"], (96, 96), {"dataset": "x", "epoch": 7}
    )
    ck = load_checkpoint(path)
    assert (ck.kind, ck.arch, ck.class_names, ck.input_size) == (
        "glimmer",
        "glimmernet",
        ["a", "b", "c"],
        (96, 96),
    )
    assert ck.provenance == {"dataset": "x", "epoch": 7}
    assert ck.model.config == model.config
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model(x), rtol=0, atol=0)
    meta = ck.meta()
    assert (
        meta.task == "classify"
        and meta.class_names == ["a", "b", "c"]
        and meta.scale == pytest.approx(1 / 255)
    )
    assert meta.source_sha256 == ck.sha256 and len(ck.sha256) == 64
    assert sniff_kind(path) == "glimmer"
    assert not list(tmp_path.glob(".*.tmp")), "atomic save left a temp file"


@pytest.mark.parametrize("prefix", ["model.", ""])
@pytest.mark.parametrize("arch", ["glimmernet", "takunet"])
def test_reference_lightning_checkpoint_loads(tmp_path, prefix, arch):
    model = _randomised(GlimmerNet() if arch == "glimmernet" else TakuNet())
    state = reference_state_dict(model, prefix=prefix)
    # the reference layout: stem indices 0,1,3,4; GD convs under layers.* and again under stage.*
    assert prefix + "backbone.0.stem.3.weight" in state
    assert prefix + "backbone.1.layers.0.convs.0.weight" in state
    assert prefix + "backbone.1.stage.0.convs.0.weight" in state
    assert prefix + "backbone.4.aggregate_downsample.grn.gamma" in state
    assert prefix + "classifier.2.weight" in state
    path = tmp_path / "ref.ckpt"
    torch.save(
        {"epoch": 41, "global_step": 9, "state_dict": state, "hyper_parameters": {"lr": 1e-3}},
        str(path),
    )
    assert sniff_kind(path) == "reference"
    ck = load_checkpoint(path)
    assert ck.kind == "reference" and ck.arch == arch and ck.provenance["epoch"] == 41
    assert ck.model.config.depths == model.config.depths
    assert ck.class_names == ["Earthquake", "Fire", "Flood", "Normal"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ck.model(x), model(x), rtol=0, atol=0)


def test_reference_shape_mismatch_names_the_key(tmp_path):
    state = reference_state_dict(GlimmerNet(), prefix="model.")
    state["model.refiner.1.weight"] = torch.ones(7)
    torch.save({"state_dict": state}, str(tmp_path / "bad.ckpt"))
    with pytest.raises(GlimmerError, match=r"'model\.refiner\.1\.weight' has shape \[7\]"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_reference_unknown_key_is_named(tmp_path):
    state = reference_state_dict(GlimmerNet(), prefix="model.")
    state["model.backbone.9.mystery.weight"] = torch.ones(1)
    torch.save({"state_dict": state}, str(tmp_path / "bad.ckpt"))
    with pytest.raises(GlimmerError, match="model.backbone.9.mystery.weight"):
        load_checkpoint(tmp_path / "bad.ckpt")


def test_missing_key_in_our_format_is_named(tmp_path):
    model = GlimmerNet(depths=(1, 1, 1, 1))
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, "glimmernet", list("abcd"), (64, 64))
    raw = torch.load(str(path), weights_only=True)
    del raw["state_dict"]["head.fc.bias"]
    torch.save(raw, str(path))
    with pytest.raises(GlimmerError, match="missing key 'head.fc.bias'"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_give_one_line_errors(tmp_path):
    good = tmp_path / "m.pt"
    save_checkpoint(good, GlimmerNet(depths=(1, 1, 1, 1)), "glimmernet", list("abcd"), (64, 64))
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(good.read_bytes()[:4000])
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(2)}, str(other))
    for path, pattern in [
        (truncated, "not a PyTorch checkpoint|not a readable checkpoint"),
        (text, "not a PyTorch checkpoint"),
        (other, "not a GlimmerNet checkpoint"),
        (tmp_path / "absent.pt", "no such file"),
    ]:
        with pytest.raises(GlimmerError, match=pattern) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"state_dict": {}, "model": torch.nn.Linear(2, 2)}, str(path))
    with pytest.raises(GlimmerError, match="pickles Python objects"):
        load_checkpoint(path)
