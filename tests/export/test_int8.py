"""INT8 in glimmer-export: layer groups, the accuracy budget's fallback, calibration choice, the
report's two accuracy figures, and flags that are refused before anything is written."""

import json

import numpy as np
import onnx
import pytest
import torch
from cli_runs import export
from random_weights import randomise

from glimmer.calibration.qdq import QuantTarget, qdq_layers
from glimmer.export.deploy_model import deploy_form
from glimmer.export.int8 import Int8Builder, layer_group, tensorrt_int8
from glimmer.export.onnx_export import export_onnx
from glimmer.models.glimmernet import GlimmerNet
from glimmer.runtime.core.metadata import ModelMeta


@pytest.mark.parametrize(
    "layer, group",
    [
        ("stem.parts.0.0.conv", "stem.conv"),
        ("stem.parts.2.1.conv", "stem.dw"),
        ("stages.0.blocks.1.convs.2", "stages.0.blocks.1"),
        ("stages.3.aggregator.pw.conv", "stages.3.aggregator"),
        ("refiner.conv", "refiner"),
        ("fc", "fc"),
        ("model.12.cv1.conv", "model.12"),
        ("model.22.dfl.conv", "model.22"),
    ],
)
def test_layer_groups(layer, group):
    assert layer_group(layer) == group


def test_tensorrt_int8_support_follows_its_grouped_conv_rules():
    def conv(per_group):
        return QuantTarget("n", "Conv", "x", "w", 0, "l", per_group)

    assert tensorrt_int8(conv(3), groups=1) == "int8"  # a dense conv, even on 3 input channels
    assert tensorrt_int8(conv(8), groups=10) == "int8"  # the Aggregator: 8 inputs per group
    assert tensorrt_int8(conv(1), groups=40).startswith("fp16: depthwise")
    assert tensorrt_int8(conv(6), groups=4).startswith("fp16: grouped convolution with 6 channels")
    assert tensorrt_int8(QuantTarget("n", "Gemm", "x", "w", 0, "fc", 240), groups=1) == "int8"


@pytest.fixture(scope="module")
def tiny_fp32():
    torch.manual_seed(0)
    net = randomise(GlimmerNet(widths=(8, 16, 32, 48), depths=(1, 1, 1, 1)))
    return export_onnx(
        deploy_form(net, "embed", (64, 64)), torch.zeros(1, 3, 64, 64), output_names=("logits",)
    )


COST = {"stem.conv": 0.002, "stages.1.blocks.0": 0.03, "refiner": 0.012, "fc": 0.004}


def fake_score(model: onnx.ModelProto, simulated: bool) -> float:
    """1 minus the known cost of every quantised group: the fallback's arithmetic made visible."""
    quantised = {layer_group(layer) for layer in qdq_layers(model)}
    return 1.0 - sum(COST.get(g, 0.0) for g in quantised)


def test_budget_leaves_the_most_sensitive_groups_float_until_it_holds(tiny_fp32):
    builder = Int8Builder(tiny_fp32, fake_score)
    amax = {t.activation: 1.0 for t in builder.targets}
    record = builder.fit_budget(amax, max_drop=0.01)
    assert record["f1_all_int8"] == pytest.approx(1 - sum(COST.values()))
    assert record["sensitivity"]["stages.1.blocks.0"] == pytest.approx(0.03)
    assert record["sensitivity"]["stages.2.aggregator"] == pytest.approx(0.0)
    # 0.048 lost; dropping 0.03 then 0.012 leaves 0.006 <= 0.01; the cheap stem and fc stay INT8
    assert record["float_groups"] == ["stages.1.blocks.0", "refiner"]
    assert record["drop_simulated"] == pytest.approx(0.006) and record["budget_met"]
    model = builder.quantize(amax, record["float_groups"])
    assert {layer_group(t) for t in qdq_layers(model)} == {
        layer_group(t.layer) for t in builder.targets
    } - {"stages.1.blocks.0", "refiner"}
    assert builder.fit_budget(amax, max_drop=0.05)["float_groups"] == []
    assert builder.fit_budget(amax, max_drop=0.0)["float_groups"] == [
        "stages.1.blocks.0",
        "refiner",
        "fc",
        "stem.conv",
    ]


def test_the_calibration_method_that_loses_least_is_kept(tiny_fp32, monkeypatch):
    builder = Int8Builder(tiny_fp32, lambda model, simulated: 0.0)
    scores = iter([0.90, 0.95, 0.95])  # percentile and entropy tie: the earlier one wins
    monkeypatch.setattr(
        builder, "amax", lambda calib, method: {t.activation: 1.0 for t in builder.targets}
    )
    monkeypatch.setattr(builder, "score", lambda model, simulated: next(scores))
    chosen = builder.choose_method(None, ["minmax", "percentile", "entropy"])
    assert chosen["method"] == "percentile"
    assert chosen["f1_simulated_by_method"] == {"minmax": 0.90, "percentile": 0.95, "entropy": 0.95}


@pytest.mark.slow
def test_export_report_states_how_int8_accuracy_was_computed(workdir, tmp_path):
    out = tmp_path / "out"
    assert (
        export(
            [
                workdir / "tiny.pt",
                "--out",
                out,
                "--int8",
                "--calib",
                workdir / "data" / "Train",
                "--calib-count",
                12,
                "--val",
                workdir / "data" / "Val",
                "--latency-runs",
                3,
                "--dilation-mode",
                "aligned",
                "--int8-max-drop",
                0.0,
            ]
        )
        == 0
    )
    report = json.loads((out / "export-report.json").read_text())
    int8 = report["int8"]
    assert set(int8["calibration"]["f1_simulated_by_method"]) == {"minmax", "percentile", "entropy"}
    acc = int8["accuracy"]
    assert "what TensorRT computes" in acc["int8_simulated"]["how"]
    assert (
        acc["int8_onnxruntime_cpu"]["integer_kernels"] == 0 and acc["int8_onnxruntime_cpu"]["cpu"]
    )
    assert "reduce_range" in acc["int8_reduce_range_simulated"]["how"]
    # a zero budget: every group that costs anything stays float, so INT8 equals FP32 on --val
    assert int8["budget"]["budget_met"] and int8["budget"]["drop_simulated"] <= 0.0
    assert acc["int8_simulated"]["f1_weighted"] == pytest.approx(
        acc["fp32"]["f1_weighted"] if isinstance(acc["fp32"], dict) else acc["fp32"]
    )
    meta = ModelMeta.from_props(
        {p.key: p.value for p in onnx.load(str(out / "tiny.int8.onnx")).metadata_props}
    )
    assert meta.precision == "int8" and meta.extra["int8"]["weight_bits"] == 8
    assert meta.extra["int8"]["placement"].startswith("tensorrt")
    assert meta.extra["int8"]["float_groups"] == int8["budget"]["float_groups"]
    rows = int8["layers"]
    assert {r["precision"] for r in rows if r["group"] in int8["budget"]["float_groups"]} <= {
        "float"
    }
    assert int8["tensorrt_int8_layers"]["of"] == len(rows)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--int8", "--calib", "{root}/data/Train", "--int8-max-drop", "1.5"],
            "--int8-max-drop must be between 0 and 1",
        ),
        (
            [
                "--int8",
                "--calib",
                "{root}/data/Train",
                "--calib-count",
                "12",
                "--val",
                "{root}/wrong",
            ],
            "--val {root}/wrong: class folders",
        ),
        (
            ["--int8", "--calib", "{root}/data/Train", "--batch", "4", "--calib-count", "3"],
            "--calib-count 3 is smaller than the model's batch 4",
        ),
        (
            ["--int8", "--calib", "{root}/data/Train", "--calib-method", "kl"],
            "invalid choice: 'kl'",
        ),
    ],
)
def test_bad_int8_input_is_refused_before_anything_is_written(
    workdir, tmp_path, capsys, argv, message
):
    wrong = workdir / "wrong"
    for name in ("Cat", "Dog"):
        (wrong / name).mkdir(parents=True, exist_ok=True)
        np.save(wrong / name / "x.npy", np.zeros(1))
    out = tmp_path / "out"
    out.mkdir()
    (out / "tiny.onnx").write_bytes(b"an earlier export")
    try:
        code = export(
            [
                workdir / "tiny.pt",
                "--out",
                out,
                "--dilation-mode",
                "split",
                *[a.format(root=workdir) for a in argv],
            ]
        )
    except SystemExit as exc:  # argparse's own refusal of a bad choice
        code = exc.code
    assert code != 0
    err = capsys.readouterr().err
    assert message.format(root=workdir) in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["tiny.onnx"]
    assert (out / "tiny.onnx").read_bytes() == b"an earlier export"
