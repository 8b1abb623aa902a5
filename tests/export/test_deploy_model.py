"""The deploy form of GlimmerNet as a whole (each rewrite has its parity test in
``tests/export/test_rewrite_<name>.py``): the exact op histogram of the default GlimmerNet's export
form, FP32 parity with PyTorch through ONNX Runtime, the streams every stage runs on, and the
assembly by module type (a variant with other attribute names exports alike)."""

import onnx
import pytest
import torch
from random_weights import randomise
from torch import nn

from glimmer.export.deploy_model import REWRITES, deploy_form, rule_for
from glimmer.export.onnx_export import (
    CRUFT_OPS,
    export_onnx,
    input_shape,
    op_histogram,
    unsupported_ops,
)
from glimmer.export.verify import compare, ort_session
from glimmer.models.glimmernet import GlimmerNet, Head, Refiner, Stage, Stem, TakuNet
from glimmer.runtime.core.metadata import ModelMeta

# Default GlimmerNet (4,4,4,1) blocks, 4 stages: stem 2 convs + 13 GDBlocks + 4 Aggregators +
# Refiner.
_STREAMED = {
    "Add": 50,
    "AveragePool": 1,
    "Clip": 49,
    "Concat": 9,
    "Conv": 60,
    "Div": 4,
    "Flatten": 1,
    "Gemm": 1,
    "GlobalAveragePool": 5,
    "MaxPool": 3,
    "Mul": 12,
    "ReduceMean": 4,
    "Reshape": 12,
    "Split": 3,
    "Sqrt": 4,
    "Transpose": 4,
}
# split/aligned: 3 streams per stage. Conv: stem 2x3 + 13 blocks x 3 + 4 Aggregators + GRN unit
# convs (3 + 3 + 3 + 1) + Refiner = 60; Add: 39 residuals + 2 per GRN + the 3 stage inputs
# (x*s + beta).
# embed: one stream. Conv: 2 + 13 + 4 + 4 + 1 = 24; Add: 13 + 2 per GRN = 21.
EXPECTED = {
    "split": _STREAMED,
    "aligned": _STREAMED,
    "embed": {
        "Add": 21,
        "AveragePool": 1,
        "Clip": 19,
        "Concat": 4,
        "Conv": 24,
        "Div": 4,
        "Flatten": 1,
        "Gemm": 1,
        "GlobalAveragePool": 5,
        "MaxPool": 3,
        "Mul": 12,
        "ReduceMean": 4,
        "Reshape": 12,
        "Sqrt": 4,
        "Transpose": 4,
    },
}


@pytest.fixture(scope="module")
def default_glimmernet():
    torch.manual_seed(0)
    return randomise(GlimmerNet())


@pytest.mark.parametrize("mode", ["split", "aligned", "embed"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_default_glimmernet_op_histogram_is_exact(default_glimmernet, mode, dynamic):
    model = export_onnx(
        deploy_form(default_glimmernet, mode, (224, 224)),
        torch.zeros(1, 3, 224, 224),
        dynamic_batch=dynamic,
        output_names=("logits",),
    )
    hist = op_histogram(model)
    assert hist == EXPECTED[mode]
    assert not any(op in hist for op in CRUFT_OPS + ("BatchNormalization", "Constant", "Identity"))
    assert unsupported_ops(model) == []
    assert model.opset_import[0].version == 17
    assert input_shape(model) == ([None, 3, 224, 224] if dynamic else [1, 3, 224, 224])
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("arch", ["glimmernet", "takunet"])
@pytest.mark.parametrize("mode", ["split", "aligned", "embed"])
def test_fp32_onnx_matches_pytorch_within_1e_4(arch, mode):
    torch.manual_seed(1)
    net = randomise(GlimmerNet() if arch == "glimmernet" else TakuNet(), seed=3)
    size = 96
    model = export_onnx(
        deploy_form(net, mode, (size, size)),
        torch.zeros(1, 3, size, size),
        dynamic_batch=True,
        output_names=("logits",),
    )
    check = compare(
        net,
        ort_session(model.SerializeToString()),
        ModelMeta(
            task="classify", name="t", class_names=list("abcd"), input_size=(size, size), batch=None
        ),
        count=4,
    )
    assert check["max_abs_diff_random"] <= 1e-4
    assert check["max_abs_diff_image_like"] <= 1e-4
    assert check["top1_agreement"] == 1.0
    assert check["max_abs_reference"] > 1e-2  # the logits are not trivially zero


def test_streams_run_from_stage_input_to_aggregator(default_glimmernet):
    """Per stage, the streams each GDBlock convolves: split at runs of equal dilation, aligned at
    multiples of 4 channels with the outer streams' foreign channels embedded, embed all at once."""
    shapes = {
        mode: [
            [(c.in_channels, c.kernel_size[0], c.dilation[0]) for c in stage.blocks[0].convs]
            for stage in deploy_form(default_glimmernet, mode, (224, 224)).stages
        ]
        for mode in ("split", "aligned", "embed")
    }
    assert shapes["split"][0] == [(10, 3, 1), (20, 3, 2), (10, 3, 3)]
    assert shapes["aligned"][0] == [(12, 5, 1), (16, 3, 2), (12, 7, 1)]
    assert (
        shapes["split"][1:]
        == shapes["aligned"][1:]
        == [
            [(20, 3, 1), (40, 3, 2), (20, 3, 3)],
            [(40, 3, 1), (80, 3, 2), (40, 3, 3)],
            [(60, 3, 1), (120, 3, 2), (60, 3, 3)],
        ]
    )
    assert shapes["embed"] == [[(40, 7, 1)], [(80, 7, 1)], [(160, 7, 1)], [(240, 7, 1)]]


class Variant(nn.Module):
    """GlimmerNet's blocks under other attribute names and containers than GlimmerNet's."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = Stem(16)
        self.body = nn.ModuleList(
            [Stage(16, 24, 1, (1, 3), "max", True, 4), Stage(24, 24, 2, (1, 3), "avg", True, 4)]
        )
        self.tail = nn.Sequential(Refiner(24), Head(24, 3, dropout=0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        for stage in self.body:
            x = stage(x)
        return self.tail(x)


@pytest.mark.parametrize("mode", ["split", "aligned", "embed"])
def test_assembly_dispatches_on_module_type_not_attribute_paths(mode):
    torch.manual_seed(2)
    variant = randomise(Variant(), seed=4)
    same = GlimmerNet(
        num_classes=3,
        depths=(1, 2),
        widths=(16, 24),
        dilations=(1, 3),
        poolings=("max", "avg"),
        pw_group_inputs=4,
    )
    deployed, reference = deploy_form(variant, mode, (64, 64)), deploy_form(same, mode, (64, 64))
    assert list(deployed.state_dict()) == list(reference.state_dict())  # the deploy form's names
    assert (
        "stages.1.grn.shifts.0.weight" in deployed.state_dict()
        and "refiner.conv.weight" in deployed.state_dict()
    )
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), variant(x), atol=1e-4, rtol=1e-4)
    example = torch.zeros(1, 3, 64, 64)
    assert op_histogram(export_onnx(deployed, example)) == op_histogram(
        export_onnx(reference, example)
    )


def test_rules_cover_subclasses():
    class WiderStem(Stem):
        pass

    assert rule_for(WiderStem(8)) is REWRITES[Stem]
    assert rule_for(nn.ReLU()) is None


def test_a_module_without_a_rewrite_is_an_error_not_dropped():
    net = GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1))
    net.extra = nn.ReLU()
    with pytest.raises(ValueError, match="no export rewrite for ReLU"):
        deploy_form(net, "split", (64, 64))


def test_modules_out_of_the_export_layout_are_an_error():
    class NoStages(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.refiner, self.head = Stem(8), Refiner(8), Head(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.refiner(self.stem(x)))

    with pytest.raises(ValueError, match="cannot run: stem refiner fc"):
        deploy_form(NoStages(), "split", (64, 64))


def test_unknown_dilation_mode_is_an_error():
    with pytest.raises(ValueError, match="dilation mode"):
        deploy_form(GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)), "dense", (64, 64))
