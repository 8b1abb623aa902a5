"""Layer-wise pruning of YOLOv8: exact counts, output equivalence, ultralytics compatibility,
errors."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from glimmer.models.macs import count_macs
from glimmer.models.yolo import ultralytics_modules
from glimmer.runtime.core.errors import GlimmerError
from glimmer.train import compress_cli
from glimmer.train.compress.prune import prune_yolov8
from glimmer.train.compress.yolo import (
    build_detector,
    count_params,
    gflops,
    layer_costs,
    load_detector,
    save_detector,
)

PAPER_BASE_M, PAPER_PRUNED_M = 25_862_110, 6_845_710


@pytest.fixture(scope="module")
def v8m():
    return build_detector("yolov8m.yaml", nc=10)


@pytest.fixture(scope="module")
def v8n_random_bn():
    """YOLOv8n (2 classes) with BN statistics randomised, so every channel matters."""
    torch.manual_seed(0)
    model = build_detector("yolov8n.yaml", nc=2).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.05, 1.0)
            m.bias.data.normal_(0, 0.5)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_yolov8m_ten_classes_has_the_papers_parameter_count(v8m):
    assert count_params(v8m) == PAPER_BASE_M


#: FLOPs per layer of YOLOv8n (2 classes) at 64 px as glimmer-compress counted them with its own
#: conv hooks before it used glimmer.models.macs: the one counter must give the same figures
V8N_2CLS_FLOPS_64 = [
    884736,
    2359296,
    3670016,
    2359296,
    6291456,
    2359296,
    6291456,
    2359296,
    3670016,
    1310720,
    0,
    0,
    4718592,
    0,
    0,
    4718592,
    1179648,
    0,
    3932160,
    1179648,
    0,
    3932160,
    29621760,
]


def test_compress_counts_flops_with_the_models_mac_counter(v8n_random_bn):
    rows = layer_costs(v8n_random_bn, 64)
    assert [r["flops"] for r in rows] == V8N_2CLS_FLOPS_64
    assert [r["type"] for r in rows][-1] == "Detect" and rows[0]["params"] == count_params(
        v8n_random_bn.model[0]
    )
    total, _ = count_macs(
        v8n_random_bn, 64, part=lambda name: "all" if name.startswith("model.") else None
    )
    assert 2 * total == sum(V8N_2CLS_FLOPS_64) and gflops(v8n_random_bn, 64) == pytest.approx(
        2 * total / 1e9
    )


def test_yolov8m_at_640_costs_the_same_as_before(v8m):
    assert round(gflops(v8m, 640), 4) == 78.7109


def test_prune_half_lands_within_5_percent_of_the_paper(v8m):
    pruned = prune_yolov8(copy.deepcopy(v8m), 0.5).model
    n = count_params(pruned)
    assert abs(n - PAPER_PRUNED_M) / PAPER_PRUNED_M < 0.05, n
    assert n == 6_745_246  # coupling rules of docs/yolo-compression.md; stem, box branch kept whole


def test_coupling_rules_hold_after_pruning(v8m):
    result = prune_yolov8(copy.deepcopy(v8m), 0.5)
    model = result.model
    for layer in model.model:
        if type(layer).__name__ == "C2f":
            assert layer.cv1.conv.out_channels == 2 * layer.c  # chunk(2) halves equal
            if layer.m[0].add:  # residual: one shared mask for cv1's second half and every m.cv2
                shared = [
                    g
                    for g in result.groups
                    if g.members[0][0].endswith(".cv1")
                    and len(g.members) > 1
                    and g.members[0][0].startswith(f"model.{layer.i}.")
                ]
                assert len(shared) == 1 and len(shared[0].members) == 1 + len(layer.m)
    head = model.model[-1]
    assert all(seq[2].out_channels == 64 for seq in head.cv2)  # 4 * reg_max box outputs kept
    assert all(seq[2].out_channels == 10 for seq in head.cv3)  # nc class outputs kept
    assert model.model[0].conv.out_channels == v8m.model[0].conv.out_channels  # stem kept
    assert model.model[21].cv2.conv.out_channels == v8m.model[21].cv2.conv.out_channels // 2


def test_pruned_outputs_differ_only_through_the_removed_channels(v8n_random_bn):
    original = v8n_random_bn
    result = prune_yolov8(copy.deepcopy(original), 0.5)
    zeroed = copy.deepcopy(original)
    named = dict(zeroed.named_modules())
    removed = 0
    for name, kept in result.keep.items():
        bn = named[name].bn
        mask = torch.ones(bn.num_features, dtype=torch.bool)
        mask[kept] = False
        bn.weight.data[mask] = 0.0
        bn.bias.data[mask] = 0.0
        removed += int(mask.sum())
    assert removed > 0
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got, untouched = zeroed(x)[0], result.model(x)[0], original(x)[0]
    assert got.shape == want.shape == (2, 6, 189)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert (untouched - want).abs().max() > 1e-2  # the removed channels did carry signal


def test_prune_keeps_largest_gammas_per_layer(v8n_random_bn):
    result = prune_yolov8(copy.deepcopy(v8n_random_bn), 0.5)
    gamma = dict(v8n_random_bn.named_modules())["model.1"].bn.weight.abs()
    kept = result.keep["model.1"]
    dropped = torch.tensor([i for i in range(len(gamma)) if i not in set(kept.tolist())])
    assert len(kept) == len(gamma) // 2
    assert gamma[kept].min() >= gamma[dropped].max()


@pytest.fixture(scope="module")
def pruned_pt(tmp_path_factory, v8n_random_bn):
    d = tmp_path_factory.mktemp("prune")
    src = save_detector(v8n_random_bn, d / "base.pt", {"stage": "test"})
    dst = d / "pruned.pt"
    assert (
        compress_cli.main(["prune", "--model", str(src), "--out", str(dst), "--imgsz", "64"]) == 0
    )
    return src, dst


def test_pruned_checkpoint_loads_with_ultralytics_yolo(pruned_pt, capsys):
    from ultralytics import YOLO

    src, dst = pruned_pt
    yolo = YOLO(str(dst))
    assert type(yolo.model.model[2]).__name__ == "C2f"  # ultralytics' own classes kept
    assert count_params(yolo.model) < 0.35 * count_params(load_detector(src)[0])
    results = yolo.predict(torch.zeros(1, 3, 64, 64), imgsz=64, verbose=False)
    assert results[0].boxes is not None


def test_prune_cli_prints_per_layer_table(tmp_path, pruned_pt, capsys):
    src, _ = pruned_pt
    assert (
        compress_cli.main(
            ["prune", "--model", str(src), "--out", str(tmp_path / "p.pt"), "--imgsz", "64"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| 22 | Detect |" in out and "params 3,011,238 -> 914,214" in out


def test_prune_refuses_to_overwrite_its_input(pruned_pt, capsys):
    src, _ = pruned_pt
    rc = compress_cli.run_cli(
        "glimmer-compress", compress_cli.main, ["prune", "--model", str(src), "--out", str(src)]
    )
    assert rc == 1
    assert "would overwrite the unpruned --model" in capsys.readouterr().err


def test_not_a_yolov8_detector_is_one_clear_error(tmp_path, capsys):
    from glimmer.models.checkpoint import save_checkpoint
    from glimmer.models.glimmernet import build_model

    glimmer_pt = tmp_path / "glimmer.pt"
    save_checkpoint(
        glimmer_pt,
        build_model("glimmernet", num_classes=4),
        "glimmernet",
        ["a", "b", "c", "d"],
        (64, 64),
    )
    v11 = ultralytics_modules()["DetectionModel"]("yolo11n.yaml", nc=2, verbose=False)
    v11_pt = save_detector(v11, tmp_path / "yolo11n.pt", {})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = [
        (glimmer_pt, "not a YOLOv8 detector (a GlimmerNet checkpoint)"),
        (v11_pt, "not a YOLOv8 detector (layer 2 is C3k2)"),
        (junk, "not a YOLOv8 detector (not an ultralytics checkpoint)"),
        (tmp_path / "missing.pt", "no such file"),
    ]
    for path, message in cases:
        rc = compress_cli.run_cli(
            "glimmer-compress",
            compress_cli.main,
            ["prune", "--model", str(path), "--out", str(tmp_path / "o.pt")],
        )
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1, err
        assert err.startswith("glimmer-compress: error: ") and message in err, err
        assert not (tmp_path / "o.pt").exists()


def test_prune_ratio_out_of_range_is_rejected(v8m):
    with pytest.raises(GlimmerError, match="--ratio"):
        prune_yolov8(copy.deepcopy(v8m), 1.0)


def test_bad_ratio_flag(capsys, pruned_pt):
    src, _ = pruned_pt
    rc = compress_cli.run_cli(
        "glimmer-compress",
        compress_cli.main,
        ["prune", "--model", str(src), "--out", "x.pt", "--ratio", "1.5"],
    )
    assert rc == 1 and "--ratio must be in [0, 1)" in capsys.readouterr().err
    assert not Path("x.pt").exists()
