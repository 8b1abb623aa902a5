"""glimmer-compress --device: the validation, what reaches ultralytics, and its multi-GPU path.

No GPU here: ultralytics' DDP itself (NCCL, one worker per GPU) cannot run. What can: the one-line
errors for bad lists and for a GPU list without CUDA; the device list arriving in the trainer's
overrides for every stage; the DDP worker script ultralytics generates rebuilding OUR trainers with
their settings (run in a fresh interpreter); and our launcher running that script under torchrun
with one CPU process, training for real without deleting the run folder.
"""

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from glimmer.runtime.core.console import run_cli
from glimmer.train import compress_cli
from glimmer.train.compress import stages, trainers
from glimmer.train.compress.sparse import SparseTrainer
from glimmer.train.compress.stages import check_device
from glimmer.train.compress.trainers import DistillTrainer, bind, train_args
from glimmer.train.compress.yolo_data import check_dataset, write_resolved


@pytest.fixture
def two_gpus(monkeypatch):
    """torch reporting two CUDA devices (only the validation asks; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def cli_error(capsys, argv) -> str:
    assert run_cli("glimmer-compress", compress_cli.main, [str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "device, message",
    [
        ("gpu", "--device gpu: expected cpu or CUDA device indices such as 0 or 0,1"),
        ("0,,1", "--device 0,,1: expected cpu or CUDA device indices such as 0 or 0,1"),
        ("0,0", "--device 0,0: a GPU is listed twice"),
        (
            "0,1",
            "--device 0,1: CUDA is not available to this torch build or machine (use --device cpu)",
        ),
    ],
)
def test_a_bad_device_list_is_one_line_before_anything_is_written(
    tmp_path, capsys, device, message
):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    argv = ["finetune", "--model", "pruned.pt", "--data", "d.yaml", "--epochs", 1]
    line = cli_error(capsys, [*argv, "--out", out, "--device", device])
    assert line == "glimmer-compress: error: " + message
    assert not out.exists()


def test_device_lists_are_checked_against_the_gpus_present(two_gpus):
    assert check_device(None, 8) is None and check_device("CPU", 8) == "cpu"
    assert check_device("cuda:0, 1", 8) == "0,1"
    with pytest.raises(Exception, match=r"^--device 0,2: only 2 CUDA device\(s\) visible"):
        check_device("0,2", 8)
    with pytest.raises(Exception, match=r"^--batch 3 does not split over the 2 GPUs of --device"):
        check_device("0,1", 3)
    with pytest.raises(Exception, match=r"^--batch 2 does not split over the 2 GPUs"):
        check_device("0,1", 2)  # one image per GPU: BatchNorm cannot normalise it
    assert check_device("1", 3) == "1"  # one GPU: no split


@pytest.fixture
def recorded(monkeypatch):
    """What each stage hands ultralytics: (trainer class, overrides, trainer settings)."""
    calls = []

    def record(trainer_cls, overrides, **kwargs):
        calls.append((trainer_cls, overrides, kwargs))
        return Path(overrides.get("save_dir", "x")) / "weights" / "best.pt"

    monkeypatch.setattr(trainers, "run_training", record)
    return calls


def test_the_device_list_reaches_every_stages_trainer(tmp_path, recorded, two_gpus):
    args = Namespace(device=check_device("0,1", 8), workers=2, epochs=3, imgsz=64, batch=8)
    data, out = tmp_path / "data.yaml", tmp_path / "stage"
    stages.train("sparse", args, out, data, "yolov8n.yaml", sr=0.01, ratio=0.3)
    stages.train("finetune", args, out, data, "pruned.pt")
    last = out / "weights" / "last.pt"
    stages.train("finetune", args, out, data, "pruned.pt", resume_from=last)
    kinds = [c[0].__name__ for c in recorded]
    assert kinds == ["SparseTrainer", "ModuleTrainer", "ModuleTrainer"]
    for _, overrides, _ in recorded:
        assert overrides["device"] == "0,1" and overrides["workers"] == 2
    assert recorded[0][1]["batch"] == 8  # the global batch: ultralytics gives each GPU 8 // 2
    assert recorded[0][2] == {"sr": 0.01, "ratio": 0.3}
    assert recorded[2][1]["resume"] == str(last)


@pytest.fixture
def dataset(tmp_path, data):
    return write_resolved(check_dataset(Path(data)), tmp_path / "data.yaml")


def worker_view(trainer, probe: str) -> str:
    """Run ultralytics' generated DDP worker script in a fresh interpreter, with its final
    ``trainer.train()`` replaced by ``probe`` (printing what the rebuilt trainer holds)."""
    from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

    script = Path(generate_ddp_file(trainer))
    try:
        text = script.read_text()
        assert text.count("trainer.train()") == 1
        probe_file = script.with_name(script.stem + "_probe.py")
        probe_file.write_text(text.replace("trainer.train()", probe))
        try:
            proc = subprocess.run(
                [sys.executable, str(probe_file)], capture_output=True, text=True, timeout=300
            )
        finally:
            probe_file.unlink()
    finally:
        ddp_cleanup(trainer, str(script))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_ddp_worker_rebuilds_the_sparse_trainer_with_its_settings(tmp_path, dataset):
    out = tmp_path / "sparse"
    overrides = train_args(dataset, out, 1, 64, 4, "yolov8n.yaml", workers=0, device="cpu")
    trainer = bind(SparseTrainer, sr=0.0123, ratio=0.3)(overrides=overrides)
    seen = worker_view(
        trainer, "print(type(trainer).__mro__[1].__name__, trainer.sr, trainer.ratio)"
    )
    assert seen == "SparseTrainer 0.0123 0.3"


@pytest.mark.slow
def test_the_ddp_worker_rebuilds_the_distill_trainer_with_its_teacher(tmp_path, dataset):
    from glimmer.models.yolo import ultralytics_modules

    teacher = ultralytics_modules()["DetectionModel"]("yolov8n.yaml", nc=2, verbose=False)
    n = sum(p.numel() for p in teacher.parameters())
    out = tmp_path / "distill"
    overrides = train_args(dataset, out, 1, 64, 4, "yolov8n.yaml", workers=0, device="cpu")
    cls = bind(DistillTrainer, teacher=teacher, layers=[15, 18], tau=3.0, alpha=0.7)
    seen = worker_view(
        cls(overrides=overrides),
        "print(trainer.layers, trainer.tau, trainer.alpha, "
        "sum(p.numel() for p in trainer.teacher.parameters()))",
    )
    assert seen == f"[15, 18] 3.0 0.7 {n}"


@pytest.mark.slow
def test_our_ddp_launch_trains_through_the_worker_script_and_keeps_the_run_folder(
    tmp_path, dataset
):
    """One CPU process under torchrun: the launch path of --device 0,1 short of NCCL."""
    out = tmp_path / "sparse"
    out.mkdir()
    keep = out / "data.yaml"  # what glimmer-compress sparse --out puts there before training
    keep.write_text(Path(dataset).read_text())
    overrides = train_args(keep, out, 1, 64, 4, "yolov8n.yaml", workers=0, device="cpu")
    trainer = bind(SparseTrainer, sr=0.0123, ratio=0.3)(overrides=overrides)
    trainer.ddp, trainer.world_size = True, 1  # as --device 0 would set, on the CPU
    assert trainer.ddp_command("w.py")[1:5] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "1",
    ]
    trainer.train()
    assert keep.is_file()  # ultralytics' own launch would have deleted the run folder
    assert (out / "weights" / "last.pt").is_file()
    from glimmer.train.compress import gammas

    (row,) = gammas.read_epochs(out / gammas.CSV_NAME)
    assert row["lambda"] == pytest.approx(0.0123 * (1 - 0.9 * 0 / 1))  # the bound sr, used
