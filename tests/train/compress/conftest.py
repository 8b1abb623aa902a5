"""One compression pipeline per session, shared by the tests that read what it produced.

YOLOv8n on the generated shapes set (64 px, 2 epochs per stage), run as a user whose run was
interrupted: stopped (Ctrl-C) right after the distillation's first epoch was saved, then the same
command again with ``--resume``. What the folder held between the two runs is kept for the resume
tests.
"""

from pathlib import Path

import pytest
from compress_runs import InterruptedRun, mtimes, pipeline_argv

from glimmer.train import compress_cli
from glimmer.train.compress.shapes import make_shapes_dataset


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes") / "ds", n_train=16, n_val=8, size=64
    )


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory, data) -> InterruptedRun:
    from glimmer.train.compress import trainers

    out = tmp_path_factory.mktemp("pipeline") / "run"
    argv = pipeline_argv(data, out)
    save_model = trainers.DistillTrainer.save_model

    def save_then_stop(self):
        saved = save_model(self)
        if saved:
            raise KeyboardInterrupt  # as Ctrl-C after the first epoch's checkpoint

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainers.DistillTrainer, "save_model", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            compress_cli.main(argv)
    between = mtimes(out)
    csv = (out / "4-distill" / "results.csv").read_text()
    assert compress_cli.main(argv + ["--resume"]) == 0
    return InterruptedRun(out, argv, between, csv)


@pytest.fixture(scope="session")
def pipeline(interrupted_run) -> Path:
    """The finished pipeline's --out folder."""
    return interrupted_run.out
