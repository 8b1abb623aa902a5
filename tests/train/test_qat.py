"""Quantisation-aware training: BN folding, the simulation against the exported Q/DQ ONNX (exact for
every dilation mode), QAT against post-training quantisation, and glimmer-train --qat-from's
checkpoints and errors."""

import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
from cli_runs import error_line, train

from glimmer.calibration.qdq import insert_qdq, qdq_layers, quant_targets
from glimmer.export.deploy_model import deploy_form
from glimmer.export.loaders import load_source
from glimmer.export.onnx_export import export_onnx
from glimmer.export.qat import qat_activation_amax, training_module
from glimmer.models.checkpoint import load_checkpoint, save_checkpoint
from glimmer.models.glimmernet import GlimmerNet
from glimmer.runtime.core.errors import GlimmerError
from glimmer.train.qat import (
    QATModel,
    calibrate_amax,
    fold_batchnorms,
    qat_entry,
    quantized_inputs,
)
from glimmer.train.synthetic import CLASSES, make_scene_dataset, render_scene
from glimmer.train.trainer import build_optimizer, predict, seed_everything, train_one_epoch

SIZE = 64  # the smallest convenient input that survives the stem and four 2x2 poolings
TINY = dict(depths=(1, 1, 1, 1), widths=(8, 16, 24, 48), dilations=(1, 2, 2, 3))
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@torch.no_grad()
def random_model(seed: int = 0, num_classes: int = 3, **config) -> GlimmerNet:
    """A GlimmerNet whose BNs and GRNs are not identities, so folding and shifts are exercised."""
    torch.manual_seed(seed)
    model = GlimmerNet(num_classes=num_classes, **(config or TINY))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        if hasattr(m, "gamma"):
            m.gamma.uniform_(-0.5, 0.5)
            m.beta.uniform_(-0.2, 0.2)
    return model.eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def test_folding_keeps_the_logits_and_the_qat_checkpoint_round_trips(tmp_path):
    model = random_model()
    x = images(4, 1)
    with torch.no_grad():
        before = model(x)
    fold_batchnorms(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        assert (
            torch.all(bn.weight == 1)
            and torch.all(bn.bias == 0)
            and torch.all(bn.running_mean == 0)
        )
        assert torch.all(bn.running_var == torch.tensor(1.0 - bn.eps))
        assert not bn.weight.requires_grad and not bn.bias.requires_grad

    amax, seen = calibrate_amax(model, [images(8, 2)])
    qmodel = QATModel(model, amax).train()
    assert qmodel.model.training and not any(bn.training for bn in bns)  # BN stays in eval mode
    assert list(model.state_dict()) == list(GlimmerNet(num_classes=3, **TINY).state_dict())
    entry = qat_entry(qmodel, seen, epochs=3)
    assert set(entry["activation_amax"]) == set(quantized_inputs(model)) and seen == 8

    path = tmp_path / "qat.pt"
    save_checkpoint(path, model, "glimmernet", ["a", "b", "c"], (SIZE, SIZE), qat=entry)
    ck = load_checkpoint(path)
    assert type(ck.model) is GlimmerNet and ck.qat == entry
    assert entry == {
        "activation_amax": amax,
        "weight_bits": 8,
        "calibration": "max",
        "images": 8,
        "epochs": 3,
    }
    loaded = ck.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())

    save_checkpoint(tmp_path / "plain.pt", model, "glimmernet", ["a", "b", "c"], (SIZE, SIZE))
    assert load_checkpoint(tmp_path / "plain.pt").qat is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda q: q.pop("weight_bits"), "entry 'weight_bits' is missing"),
        (lambda q: q.update(weight_bits=9), "'weight_bits' is 9, not 2 to 8"),
        (
            lambda q: q["activation_amax"].update({"stem.nothing": 1.0}),
            "names 'stem.nothing', which is no module",
        ),
        (lambda q: q["activation_amax"].update({"head.fc": float("nan")}), "not a finite range"),
        (lambda q: q.update(epochs=-1), "'epochs' is -1, not a count"),
    ],
)
def test_a_bad_qat_entry_is_a_clear_error(tmp_path, change, message):
    model = random_model()
    path = tmp_path / "qat.pt"
    entry = {
        "activation_amax": {n: 1.0 for n in quantized_inputs(model)},
        "weight_bits": 8,
        "calibration": "max",
        "images": 1,
        "epochs": 0,
    }
    save_checkpoint(path, model, "glimmernet", ["a", "b", "c"], (SIZE, SIZE), qat=entry)
    raw = torch.load(str(path), weights_only=True)
    change(raw["qat"])
    torch.save(raw, str(path))
    with pytest.raises(
        GlimmerError, match="bad checkpoint key 'qat': .*" + message.replace("(", r"\(")
    ):
        load_checkpoint(path)


def simulated(model_proto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime with each Quantize/Dequantize evaluated as written (no integer kernels)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"images": x})[0]


TAKU = dict(
    depths=(2, 1, 1, 1), widths=(8, 16, 24, 36), dilations=(1,), recombine=False, pw_group_inputs=4
)


@pytest.mark.parametrize(
    "mode, config, bits",
    [
        ("split", TINY, 8),
        ("aligned", TINY, 8),
        ("embed", TINY, 8),
        ("split", TINY, 4),
        ("embed", TAKU, 8),
    ],
    ids=["split", "aligned", "embed", "split-4bit-weights", "takunet"],
)
def test_fake_quantisation_computes_what_the_qdq_export_computes(mode, config, bits):
    model = fold_batchnorms(random_model(**config))
    amax, seen = calibrate_amax(model, [images(8, 2)])
    x = images(6, 3)  # other images than calibration: some inputs saturate
    qmodel = QATModel(model, amax, bits).eval()
    with torch.no_grad():
        fake = qmodel(x).numpy()
        plain = qmodel.remove()(x).numpy()

    fp32 = export_onnx(deploy_form(model, mode, (SIZE, SIZE)), x[:1], dynamic_batch=True)
    targets = quant_targets(fp32)
    assert all(training_module(t.layer) in amax for t in targets)
    int8 = insert_qdq(fp32, qat_activation_amax(fp32, qat_entry(qmodel, seen, 0)), weight_bits=bits)
    assert len(qdq_layers(int8)) == len(targets)
    onnx_out = simulated(int8, x.numpy())
    scale = np.abs(fake).max()
    assert np.abs(onnx_out - fake).max() <= 1e-4 * scale
    assert (
        np.abs(plain - fake).max() > 1e-3 * scale
    )  # the quantisation is visible, so the match means something


def test_a_layer_without_a_qat_range_is_named():
    model = fold_batchnorms(random_model())
    amax, _ = calibrate_amax(model, [images(2, 2)])
    del amax["stages.1.blocks.0.conv"]
    fp32 = export_onnx(deploy_form(model, "split", (SIZE, SIZE)), images(1, 0))
    with pytest.raises(
        GlimmerError, match=r"layer 'stages\.1\.blocks\.0\.convs\.0' has no QAT activation range"
    ):
        qat_activation_amax(fp32, {"activation_amax": amax, "weight_bits": 8})


def scenes(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = [
        torch.from_numpy(render_scene(CLASSES[i % 4], rng, SIZE)[:, :, ::-1].copy())
        for i in range(n)
    ]
    # contiguous NCHW: a channels-last view would pick other conv kernels and another trajectory
    return torch.stack(x).permute(0, 3, 1, 2).contiguous().float() / 255.0, torch.arange(n) % 4


def batches(x, y, size, seed=None):
    order = (
        torch.arange(len(y))
        if seed is None
        else torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    )
    return [(x[order[i : i + size]], y[order[i : i + size]]) for i in range(0, len(y), size)]


def accuracy(model, x, y) -> float:
    _, true, pred = predict(model, batches(x, y, 128), CPU, "eval")
    return float(np.mean(np.asarray(true) == np.asarray(pred)))


@pytest.mark.slow
def test_qat_recovers_the_accuracy_post_training_quantisation_loses():
    """2-bit (ternary) weights, 8-bit activations, test accuracy on 256 scenes.

    This easy task shrugs off 3-bit weights under PTQ for some seeds (PTQ lost 0 to 43 points over
    seeds 0-4), so the loss is only large for every seed at 2 bits. Over seeds 0-7: float 0.96-1.00,
    PTQ 0.25-0.48, QAT after 4 epochs 0.78-0.98 (QAT - PTQ at least 0.30). Seed 0, asserted here
    with margins of 0.2: float 0.957, PTQ 0.371, QAT 0.938."""
    train_x, train_y = scenes(256, 0)
    test_x, test_y = scenes(256, 1)
    seed_everything(0)
    model = GlimmerNet(num_classes=4, depths=(1, 1, 1, 1), widths=(4, 8, 16, 32))
    optimizer = build_optimizer(model, 1e-3)
    for epoch in range(10):
        train_one_epoch(model, batches(train_x, train_y, 32, epoch), optimizer, CPU, "float")
    fold_batchnorms(model)
    float_acc = accuracy(model, test_x, test_y)
    amax, _ = calibrate_amax(model, [train_x[:128]])
    qmodel = QATModel(model, amax, weight_bits=2)
    ptq_acc = accuracy(qmodel, test_x, test_y)
    optimizer = build_optimizer(model, 3e-4)
    for epoch in range(4):
        train_one_epoch(qmodel, batches(train_x, train_y, 32, 100 + epoch), optimizer, CPU, "qat")
    qat_acc = accuracy(qmodel, test_x, test_y)
    print(f"accuracy: float {float_acc:.3f}  PTQ {ptq_acc:.3f}  QAT {qat_acc:.3f}")
    assert float_acc >= 0.9
    assert ptq_acc <= float_acc - 0.2
    assert qat_acc >= ptq_acc + 0.2


# ---- glimmer-train --qat-from --------------------------------------------------------------------


@pytest.fixture(scope="module")
def qat_inputs(tmp_path_factory):
    """A 4-class scene folder at 64 px and an untrained tiny checkpoint of its classes."""
    root = tmp_path_factory.mktemp("qat")
    data = make_scene_dataset(root / "data", {"Train": 8, "Val": 4, "Test": 4}, size=SIZE, seed=0)
    source = root / "source.pt"
    save_checkpoint(
        source,
        random_model(num_classes=4, widths=(4, 8, 16, 32), depths=(1, 1, 1, 1)),
        "glimmernet",
        CLASSES,
        (SIZE, SIZE),
    )
    return data, source


def write_fake_yolo(path):
    """What sniffing sees of an ultralytics .pt (only the pickle's bytes are read)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("yolo/data.pkl", b"\x80\x02cultralytics.nn.tasks\nDetectionModel\n.")


def write_classes(path):
    save_checkpoint(path, random_model(num_classes=3), "glimmernet", CLASSES[:3], (SIZE, SIZE))


@pytest.mark.parametrize(
    "name, make, extra, message",
    [
        ("missing.pt", None, [], "--qat-from {src}: no such file"),
        (
            "model.onnx",
            lambda p: p.write_bytes(b"\x08\x07onnx"),
            [],
            "--qat-from {src}: an ONNX model",
        ),
        ("yolov8n.pt", write_fake_yolo, [], "--qat-from {src}: an ultralytics (YOLO) checkpoint"),
        (
            "weights.pt",
            lambda p: torch.save({"weights": torch.zeros(2)}, str(p)),
            [],
            "--qat-from {src}: not a checkpoint glimmer-train wrote",
        ),
        (
            "three.pt",
            write_classes,
            [],
            "--qat-from {src}: its classes ['Earthquake', 'Fire', 'Flood'] differ from the "
            "class folders of {train}",
        ),
        (None, None, ["--img-size", "96"], "--img-size 96 differs from --qat-from {src}'s 64"),
        (None, None, ["--resume"], "--resume cannot be combined with --qat-from"),
        (None, None, ["--weight-bits", "9"], "--weight-bits must be 2 to 8, got 9"),
    ],
)
def test_qat_from_errors_are_one_line_and_write_nothing(
    tmp_path, qat_inputs, name, make, extra, message
):
    data, source = qat_inputs
    src = source if name is None else tmp_path / name
    if make is not None:
        make(src)
    run_dir = tmp_path / "run"
    rc, _, err = train([data, "--out", run_dir, "--qat-from", src, "--workers", 0, *extra])
    assert rc == 1
    line = error_line(err)
    assert line.startswith(
        "glimmer-train: error: " + message.format(src=src, train=data / "Train")
    ), line
    assert not run_dir.exists()


@pytest.mark.slow
def test_qat_run_writes_checkpoints_the_int8_export_reads(tmp_path, qat_inputs):
    data, source = qat_inputs
    run_dir = tmp_path / "run"
    rc, out, err = train(
        [
            data,
            "--out",
            run_dir,
            "--qat-from",
            source,
            "--epochs",
            2,
            "--workers",
            0,
            "--batch-size",
            16,
        ]
    )
    assert rc == 0, err
    assert "QAT from" in out and "test under fake INT8" in out
    best, last = load_checkpoint(run_dir / "best.pt"), load_checkpoint(run_dir / "last.pt")
    assert (
        best.arch == "glimmernet"
        and best.input_size == (SIZE, SIZE)
        and best.class_names == list(CLASSES)
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert best.qat["epochs"] == metrics["best"]["epoch"] and last.qat["epochs"] == 2
    assert (
        best.qat["images"] == 32
        and best.qat["weight_bits"] == 8
        and best.qat["calibration"] == "max"
    )
    assert set(best.qat["activation_amax"]) == set(quantized_inputs(best.model))
    assert metrics["qat"]["weight_bits"] == 8 and "f1_weighted" in metrics["qat"]["val_ptq"]
    assert metrics["test"] is not None and "test" in best.provenance["metrics"]

    exported = load_source(run_dir / "best.pt")
    assert exported.qat == best.qat
    fp32 = export_onnx(deploy_form(exported.model, "aligned", (SIZE, SIZE)), images(1, 0))
    amax = qat_activation_amax(fp32, exported.qat)
    assert set(amax) == {t.activation for t in quant_targets(fp32)}

    rc, _, err = train([data, "--out", run_dir, "--resume", "--workers", 0])
    assert rc == 1 and "is from a --qat-from run, which cannot be resumed" in error_line(err)
