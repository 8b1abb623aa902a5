"""glimmer-train under torchrun: two real gloo processes on the CPU against one process.

Why the comparison can be tight: the ranks' k-th batches together are exactly the single process's
k-th batch (same seeded order, same per-sample augmentation keys), DDP averages the two halves'
gradients, and BatchNorm normalises over the global batch (``GlobalBatchNorm2d``). So the epoch's
mean train loss (4 steps; steps 2-4 run on weights the averaged gradient updated) agrees up to float
summation order: measured ~1e-7 relative; asserted 1e-5. Per-process BatchNorm instead moves it by
~6e-2 on this set (measured), as would a data split that differs or a summed gradient.
Eval-mode figures get a looser 2e-3: conv biases in front of BatchNorm have a true gradient of zero,
RMSprop scales their float-noise gradients to full +-lr*sqrt(10) steps, and only the running
statistics (eval mode) let that noise through (measured ~1e-5 on the Val loss).
"""

import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch
from cli_runs import train

from glimmer.models.checkpoint import load_checkpoint
from glimmer.runtime.core.errors import GlimmerError
from glimmer.train.cli import _check_launch
from glimmer.train.data import EpochSampler
from glimmer.train.distributed import GlobalBatchNorm2d, ShardSampler, launch_from_env
from glimmer.train.synthetic import make_scene_dataset

FLAGS = ["--img-size", "64", "--batch-size", "8", "--workers", "0", "--device", "cpu"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchrun(argv, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """glimmer-train in ``nproc`` gloo processes: the real launcher, its own free port."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(nproc), "-m", "glimmer.train.cli"]
    return subprocess.run(
        cmd + [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.parametrize("size", [32, 30])
def test_the_ranks_batches_together_are_the_single_process_batch(size):
    world, batch = 2, 8
    single = EpochSampler(size, seed=22, shuffle=True)
    ranks = [ShardSampler(size, 22, True, rank, world) for rank in range(world)]
    for s in [single, *ranks]:
        s.set_epoch(3)
    order, shards = list(single), [list(r) for r in ranks]
    per_rank = batch // world
    for step in range(-(-size // batch)):
        local = [shard[step * per_rank : (step + 1) * per_rank] for shard in shards]
        assert sorted(k for part in local for k in part) == sorted(
            order[step * batch : (step + 1) * batch]
        )
    # evaluation: unpadded shards, every index once
    evals = [list(ShardSampler(size, 22, False, r, world, pad=False)) for r in range(world)]
    assert sorted(i for e in evals for i, _ in e) == list(range(size))


def test_an_odd_split_is_padded_so_every_rank_takes_as_many_steps():
    shards = [list(ShardSampler(31, 22, True, r, 2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 16
    assert {i for shard in shards for i, _ in shard} == set(range(31))


def test_global_batchnorm_equals_batchnorm_in_one_process(tmp_path):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        plain = torch.nn.BatchNorm2d(6)
        torch.nn.init.uniform_(plain.weight)
        torch.nn.init.uniform_(plain.bias)
        ours = GlobalBatchNorm2d(6)
        ours.load_state_dict(plain.state_dict())
        for _ in range(3):
            x = torch.randn(5, 6, 4, 4) * 3 + 7  # a large mean: the variance must not cancel
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = plain(xa), ours(xb)
            (ya * torch.arange(6.0).view(1, 6, 1, 1)).sum().backward()
            (yb * torch.arange(6.0).view(1, 6, 1, 1)).sum().backward()
            torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours, name), getattr(plain, name))
        torch.testing.assert_close(ours.weight.grad, plain.weight.grad)
    finally:
        torch.distributed.destroy_process_group()


def test_the_torchrun_environment_is_read_and_checked():
    assert launch_from_env({}).world_size == 1
    launch = launch_from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (launch.world_size, launch.rank, launch.local_rank, launch.main) == (4, 3, 1, False)
    with pytest.raises(GlimmerError, match="RANK=4 LOCAL_RANK=0 is not a torchrun launch"):
        launch_from_env({"WORLD_SIZE": "4", "RANK": "4", "LOCAL_RANK": "0"})


def test_qat_is_refused_under_torchrun():
    args = Namespace(qat_from="best.pt", batch_size=8, resume=False, out="run")
    with pytest.raises(GlimmerError, match=r"^--qat-from runs in one process, not under torchrun"):
        _check_launch(args, 2)
    _check_launch(args, 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One epoch in 2 gloo processes and in one, same seed and global batch (4 steps of 8)."""
    root = tmp_path_factory.mktemp("ddp")
    data = make_scene_dataset(root / "data", {"Train": 8, "Val": 4, "Test": 4}, size=64, seed=4)
    proc = torchrun([data, "--out", root / "ddp", "--epochs", 1, *FLAGS])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rc, _, err = train([data, "--out", root / "one", "--epochs", 1, *FLAGS])
    assert rc == 0, err
    return data, root, proc


@pytest.mark.slow
def test_two_processes_train_like_one(runs):
    _, root, proc = runs
    ddp, one = (json.loads((root / n / "metrics.json").read_text()) for n in ("ddp", "one"))
    assert ddp["settings"]["world_size"] == 2 and one["settings"]["world_size"] == 1
    (a,), (b,) = ddp["epochs"], one["epochs"]
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert a["train_accuracy"] == b["train_accuracy"]
    assert a["val_loss"] == pytest.approx(b["val_loss"], abs=2e-3)
    assert abs(a["val_accuracy"] - b["val_accuracy"]) <= 1 / 16  # at most one of 16 Val images
    # Val and Test over the whole split, not rank 0's half
    assert ddp["test"]["num_samples"] == one["test"]["num_samples"] == 16
    assert sum(map(sum, ddp["test"]["confusion_matrix"])) == 16
    # rank 0 alone speaks: one epoch line, one summary
    assert proc.stdout.count("epoch   1/1") == 1 and proc.stdout.count("best epoch 1:") == 1
    assert "2 processes (gloo), 4 images each per step of 8" in proc.stdout


@pytest.mark.slow
def test_the_ddp_checkpoint_loads_and_resumes_in_one_process(runs):
    data, root, _ = runs
    for name in ("best.pt", "last.pt"):
        raw = torch.load(root / "ddp" / name, weights_only=True)
        assert not any(k.startswith("module.") for k in raw["state_dict"]), name
    ck = load_checkpoint(root / "ddp" / "best.pt")
    assert ck.arch == "glimmernet" and ck.input_size == (64, 64)
    with torch.no_grad():
        assert ck.model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    rc, out, err = train([data, "--out", root / "ddp", "--resume", "--epochs", 2, "--workers", 0])
    assert rc == 0, err
    assert "after epoch 1 of 2" in out
    resumed = json.loads((root / "ddp" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2]
    assert resumed["settings"]["resumed_at_epochs"] == [1]


@pytest.mark.slow
def test_a_batch_that_does_not_split_is_one_line_on_every_rank(tmp_path):
    data = make_scene_dataset(tmp_path / "data", {"Train": 2}, size=64)
    run_dir = tmp_path / "run"
    flags = ["--batch-size", "5", "--workers", "0", "--device", "cpu"]
    proc = torchrun([data, "--out", run_dir, *flags])
    assert proc.returncode != 0
    line = (
        "glimmer-train: error: --batch-size 5 (the global batch) does not split evenly over "
        "WORLD_SIZE 2 processes; use a multiple of 2"
    )
    # two processes share the pipe, so their lines may interleave: count them
    assert proc.stderr.count("glimmer-train: ") == proc.stderr.count(line) == 2, proc.stderr
    assert "raise GlimmerError" not in proc.stderr  # one line each, no traceback of ours
    assert not run_dir.exists()
    # the same flags in one process train (the check is the launch's, not the batch's)
    rc, _, err = train([data, "--out", tmp_path / "one", "--epochs", 1, "--img-size", 64, *flags])
    assert rc == 0, err
