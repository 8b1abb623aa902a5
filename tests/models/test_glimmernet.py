"""GlimmerNet / TakuNet: exact parameter counts, true MACs, shapes, and the blocks' defining
maths."""

import pytest
import torch

from glimmer.models.glimmernet import (
    FeatureMapsRecomb,
    GlimmerConfig,
    GlimmerNet,
    TakuNet,
    build_model,
    count_params,
    mixed_concat,
)
from glimmer.models.layers import GRN, GroupedDilatedConv2d
from glimmer.models.macs import count_macs, paper_compatible_flops


@pytest.mark.parametrize(
    "depths, params",
    [
        ((4, 4, 4, 1), 31_204),
        ((4, 3, 2, 1), 26_404),
        ((4, 2, 2, 1), 25_444),
        ((1, 1, 1, 1), 21_124),
    ],
)
def test_glimmernet_parameter_counts_match_the_paper(depths, params):
    assert count_params(GlimmerNet(depths=depths)) == params


def test_takunet_parameter_count():
    assert count_params(TakuNet(num_classes=4)) == 37_444
    assert count_params(build_model("takunet")) == 37_444


def test_parameter_formula_holds_for_other_depths():
    # docs/glimmernet.md: total = 14,884 + 480*d1 + 960*d2 + 1,920*d3 + 2,880*d4
    d = (2, 1, 3, 2)
    assert (
        count_params(GlimmerNet(depths=d))
        == 14_884 + 480 * d[0] + 960 * d[1] + 1_920 * d[2] + 2_880 * d[3]
    )


def test_true_macs_and_paper_compatible_figure_at_224():
    model = GlimmerNet()
    total, parts = count_macs(model, 224)
    assert total == 26_464_280
    assert parts["stem"] == 13_547_520 + 1_169_640  # dense dilated conv alone is 13.55M
    assert paper_compatible_flops(model, 224) == 22_264_920


@pytest.mark.parametrize("size", [64, 224, 240])
def test_forward_shapes(size):
    model = GlimmerNet().eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 4)


def test_stem_gives_57_at_224_and_refiner_runs_at_3x3():
    model = GlimmerNet().eval()
    with torch.no_grad():
        x = model.stem(torch.rand(1, 3, 224, 224))
        assert x.shape[-2:] == (57, 57)
        x = model.stages(x)
        assert x.shape[1:] == (240, 3, 3)


def test_grouped_dilated_conv_equals_separate_dilated_convs():
    torch.manual_seed(0)
    gd = GroupedDilatedConv2d(8, (1, 2, 2, 3))
    x = torch.randn(1, 8, 11, 11)
    y = gd(x)
    for i, (conv, d) in enumerate(zip(gd.convs, (1, 2, 2, 3))):
        ref = torch.nn.functional.conv2d(
            x[:, 2 * i : 2 * i + 2], conv.weight, conv.bias, padding=d, dilation=d, groups=2
        )
        torch.testing.assert_close(y[:, 2 * i : 2 * i + 2], ref)
    assert [c.dilation for c in gd.convs] == [(1, 1), (2, 2), (2, 2), (3, 3)]


def test_feature_maps_recomb_channel_order():
    c, m = 8, 4
    x = torch.arange(c, dtype=torch.float32).view(1, c, 1, 1)
    y = FeatureMapsRecomb(m)(x).flatten().tolist()
    # new channel k*m + i is old channel i*(C/m) + k
    for k in range(c // m):
        for i in range(m):
            assert y[k * m + i] == i * (c // m) + k


def test_mixed_concat_strict_interleave():
    a = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1)
    b = 10 + a
    assert mixed_concat(a, b).flatten().tolist() == [0, 10, 1, 11, 2, 12]


def test_grn_is_identity_at_init_and_matches_formula():
    grn = GRN(4)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(grn(x), x)
    with torch.no_grad():
        grn.gamma.fill_(0.5)
        grn.beta.fill_(0.1)
    g = x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), 0.5 * x * n + 0.1 + x)


def test_config_round_trip_and_validation():
    cfg = GlimmerConfig(num_classes=3, depths=(1, 2, 1, 1))
    assert GlimmerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        GlimmerConfig(widths=(42, 80, 160, 240))  # not divisible into 4 groups
    with pytest.raises(ValueError):
        GlimmerConfig(poolings=("max", "max", "min", "avg"))


def test_gd_block_exports_without_scatternd(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = GlimmerNet(depths=(1, 1, 1, 1)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.rand(1, 3, 64, 64), str(path), dynamo=False, opset_version=17)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "ScatterND" not in ops and "Conv" in ops
