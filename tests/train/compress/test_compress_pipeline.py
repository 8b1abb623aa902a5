"""Every compression stage on CPU on a tiny generated detection set (YOLOv8n, 64 px, 2 epochs).

The pipeline runs once per session (conftest.py: interrupted during distillation, then resumed);
the tests read what it produced.
"""

import csv
import json

import onnx
import onnxruntime as ort
import pytest
import torch

from glimmer.train.compress.cwd import ChannelWiseDistiller
from glimmer.train.compress.sparse import SparseTrainer, gamma_l1, sparsity_lambda
from glimmer.train.compress.trainers import run_training, train_args
from glimmer.train.compress.yolo import load_detector

pytestmark = pytest.mark.slow
V8N_2CLS, V8N_2CLS_PRUNED = 3_011_238, 914_214


def test_pipeline_summary_has_every_stage(pipeline):
    rows = json.loads((pipeline / "summary.json").read_text())["stages"]
    assert [r["stage"] for r in rows] == ["sparse", "pruned", "finetune", "distill"]
    assert [r["params"] for r in rows] == [V8N_2CLS] + [V8N_2CLS_PRUNED] * 3
    assert rows[0]["gflops"] > 2.5 * rows[1]["gflops"]
    for r in rows:
        assert 0.0 <= r["map50_95"] <= r["map50"] <= 1.0
        assert r["ort_ms"] > 0 and r["ort_noise_ms"] >= 0
    assert (pipeline / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetune_trains_the_pruned_module_not_a_rebuild(pipeline):
    pruned, _ = load_detector(pipeline / "2-pruned.pt")
    tuned, _ = load_detector(pipeline / "3-finetune" / "weights" / "best.pt")
    a, b = pruned.state_dict(), tuned.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for k, v in a.items():
        if k.endswith("conv.weight") and v.numel() > 64:
            cos = torch.nn.functional.cosine_similarity(v.flatten(), b[k].float().flatten(), dim=0)
            assert cos > 0.9, k  # a rebuilt, re-initialised layer would be near 0
    # it did train (two epochs of warm-up lr move the BN shifts; conv weights may stay in fp16)
    assert any(not torch.equal(v, b[k].float()) for k, v in a.items() if k.endswith("bn.bias"))


def test_distilled_student_drops_the_alignment_convs_and_logs_cwd(pipeline):
    pruned, _ = load_detector(pipeline / "2-pruned.pt")
    student, ckpt = load_detector(pipeline / "4-distill" / "weights" / "best.pt")
    assert set(student.state_dict()) == set(pruned.state_dict())
    assert getattr(ckpt["ema"], "criterion", None) is None
    assert all(not m._forward_hooks for m in student.modules())
    with open(pipeline / "4-distill" / "results.csv") as fh:
        row = next(csv.DictReader(fh))
    assert float(row["train/cwd_loss"]) > 0
    assert "lr/pg3" in row  # the alignment convs' own optimizer group


def test_pruned_model_is_exported_by_glimmer_exports_path_and_runs(pipeline):
    from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta

    path = pipeline / "2-pruned.onnx"
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_props(props)
    assert METADATA_KEY in props and model.producer_name == "glimmer-export"
    assert (
        meta.task == "detect"
        and list(meta.class_names) == ["disc", "box"]
        and tuple(meta.input_size) == (64, 64)
    )
    assert meta.extra["exporter"] == "torch.onnx (TorchScript)"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: torch.zeros(1, 3, 64, 64).numpy()})
    assert out.shape == (1, 4 + 2, 64 // 8 * 64 // 8 + 64 // 16 * 64 // 16 + 64 // 32 * 64 // 32)


def test_sparse_training_lowers_gamma_l1(tmp_path, data):
    l1 = {}
    for sr in (0.0, 0.1):
        args = train_args(
            data,
            tmp_path / f"sr{sr}",
            epochs=1,
            imgsz=64,
            batch=4,
            model="yolov8n.yaml",
            workers=0,
            nbs=4,
            val=False,
        )
        model, _ = load_detector(run_training(SparseTrainer, args, sr=sr))
        l1[sr] = gamma_l1(model)
    # 4 steps at lr 0.01 move each of ~4,000 gammas by about lr*sr per step; far above run noise
    assert l1[0.1] < l1[0.0] - 5.0, l1
    assert sparsity_lambda(0.005, 0, 100) == pytest.approx(0.005)
    assert sparsity_lambda(0.005, 100, 100) == pytest.approx(0.0005)


def test_cwd_training_pulls_student_towards_teacher():
    torch.manual_seed(0)
    teacher, student = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(3, 4, 3, padding=1)
    distiller = ChannelWiseDistiller([4], [8], tau=2.0)
    opt = torch.optim.Adam(list(student.parameters()) + list(distiller.parameters()), lr=0.05)
    x = torch.randn(4, 3, 12, 12)
    with torch.no_grad():
        target = teacher(x)
    first = None
    for _ in range(60):
        loss = distiller([student(x)], [target])
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_compressed_model_goes_through_glimmer_export_and_glimmer_run(pipeline, data, tmp_path):
    export_cli = pytest.importorskip("glimmer.export.cli")
    from glimmer.runtime.core.metadata import METADATA_KEY, ModelMeta

    rc = export_cli.main(
        [
            str(pipeline / "4-distill" / "weights" / "best.pt"),
            "--out",
            str(tmp_path),
            "--img-size",
            "64",
            "--latency-runs",
            "1",
        ]
    )
    assert rc == 0
    (onnx_path,) = [p for p in tmp_path.glob("*.onnx") if ".int8" not in p.name]
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = ModelMeta.from_props(props)
    assert METADATA_KEY in props and meta.task == "detect"
    assert list(meta.class_names) == ["disc", "box"] and tuple(meta.input_size) == (64, 64)

    run_cli = pytest.importorskip("glimmer.runtime.tools.run")
    jsonl = tmp_path / "run.jsonl"
    images = data.parent / "images" / "val"
    rc = run_cli.main(
        [
            "--model",
            str(onnx_path),
            "--source",
            str(images),
            "--headless",
            "--backend",
            "onnxruntime",
            "--output",
            str(jsonl),
            "--max-frames",
            "3",
        ]
    )
    assert rc == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(lines) == 3 and all(r["predictions"]["task"] == "detect" for r in lines)


def test_the_best_compressed_model_ships_as_final_pt_and_onnx_that_glimmer_run_opens(
    pipeline, data
):
    import glimmer.runtime.api as api
    from glimmer.train.compress.selection import COMPRESSED

    summary = json.loads((pipeline / "summary.json").read_text())
    final = summary["final"]
    rows = {r["stage"]: r for r in summary["stages"]}
    assert final["stage"] in COMPRESSED and final["weights"] == "final.pt"
    best = max(round(rows[s]["map50_95"], 3) for s in COMPRESSED)
    assert round(rows[final["stage"]]["map50_95"], 3) == best
    # distillation against fine-tuning is always stated, then what ships
    assert final["reason"].startswith("distill mAP50-95 ")
    assert final["reason"].endswith(f": shipping {final['stage']}")
    text = (pipeline / "summary.md").read_text()
    assert f"why: {final['reason']}" in text and f"**{final['stage']}** (shipped)" in text

    shipped, ckpt = load_detector(pipeline / "final.pt")
    chosen, _ = load_detector(pipeline / rows[final["stage"]]["weights"])
    assert ckpt["glimmer"]["chosen"] == final["stage"]
    for k, v in chosen.state_dict().items():
        assert torch.equal(shipped.state_dict()[k].float(), v.float()), k
    image = next((data.parent / "images" / "val").iterdir())
    with api.load(pipeline / "final.onnx", backend="onnxruntime") as model:
        assert model.task == "detect" and model.class_names == ["disc", "box"]
        prediction = model(image)
    assert prediction["count"] == len(prediction["detections"])


def test_sparse_stage_shows_its_gammas_and_warns_before_pruning(pipeline):
    from glimmer.train.compress.gammas import read_epochs

    stage = pipeline / "1-sparse"
    epochs = read_epochs(stage / "gammas.csv")
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0.0 <= r["near_zero"] <= 1.0 and r["layers"] > 40 for r in epochs)
    assert (stage / "gammas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gammas = json.loads((pipeline / "summary.json").read_text())["gammas"]
    assert gammas["png"] == "1-sparse/gammas.png"
    # two epochs of sr=0.005 barely move a gamma from 1: the prune cuts channels as strong as kept
    assert gammas["gap_median"] > 0.9 and gammas["layers_far"] == gammas["layers"]
    warning = gammas["warning"]
    assert warning.startswith("warning: ") and "--epochs" in warning and "--sr" in warning
    assert warning in (pipeline / "summary.md").read_text().splitlines()


def test_stages_are_timed_interleaved_with_their_noise(pipeline):
    summary = json.loads((pipeline / "summary.json").read_text())
    latency = summary["latency"]
    assert latency["rounds"] == 30 and latency["calls_per_round"] == 3
    assert sorted(latency["round_orders"][0]) == ["distill", "finetune", "pruned", "sparse"]
    assert len({tuple(o) for o in latency["round_orders"]}) > 1  # the order changes
    for r in summary["stages"]:
        assert r["ort_ms"] == latency["timed_ms"][r["stage"]]
        assert r["ort_noise_ms"] == latency["noise_ms"][r["stage"]]
    same = [n for n in summary["notes"] if "(same architecture)" in n]
    assert len(same) == 1 and same[0].startswith("latency: pruned, finetune, distill")
