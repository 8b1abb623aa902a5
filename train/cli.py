"""glimmer-train: train GlimmerNet / TakuNet on an AIDERv2-layout folder with the paper's recipe.

    glimmer-train DATA_DIR --out RUN_DIR [--epochs 300] [--img-size 224] [--batch-size 64]
                  [--seed 22] [--resume] [--arch glimmernet|takunet] [--workers N] [--lr 1e-3]
    glimmer-train DATA_DIR --out RUN_DIR --qat-from best.pt [--epochs 10] [--lr 1e-4]

Writes RUN_DIR/best.pt (best weighted F1 on Val), last.pt (with the state --resume needs),
metrics.json, curves.png and confusion_matrix.png. A finished run is never overwritten.
``--qat-from`` fine-tunes a trained checkpoint under simulated INT8 (quantisation-aware training,
``glimmer.train.qat``); its best.pt carries the ranges ``glimmer-export --int8`` then uses.

Several GPUs (or CPU processes): ``torchrun --nproc_per_node N -m glimmer.train.cli DATA_DIR ...``
(``glimmer.train.distributed``); ``--batch-size`` stays the global batch, split evenly.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError

from .trainer import BEST, LAST, RunSettings

if TYPE_CHECKING:
    from glimmer.models.checkpoint import Checkpoint

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# Options that define a run: a resumed run keeps last.pt's values and refuses different ones.
RUN_OPTIONS = ("arch", "img_size", "batch_size", "seed", "lr", "val_fraction")


def build_parser() -> argparse.ArgumentParser:
    d = RunSettings()
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="glimmer-train",
        description=__doc__.strip().splitlines()[0],
        epilog="Writes RUN_DIR/best.pt, last.pt, metrics.json, curves.png, confusion_matrix.png.",
    )
    parser.add_argument(
        "data_dir",
        metavar="DATA_DIR",
        help="dataset folder: Train/, Val/, Test/ with one folder per class",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="RUN_DIR",
        help="run folder for checkpoints, metrics and plots",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help=f"total epochs (default {d.epochs}; with --resume, raise it to train on)",
    )
    parser.add_argument(
        "--img-size",
        type=int,
        default=None,
        metavar="PX",
        help=f"square input size (default {d.img_size})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help=f"images per step (default {d.batch_size}, the paper's); under torchrun the global "
        "batch, split evenly over the processes",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help=f"seed of weights, shuffling and augmentation (default {d.seed})",
    )
    parser.add_argument(
        "--arch",
        choices=("glimmernet", "takunet"),
        default=None,
        help=f"network (default {d.arch})",
    )
    parser.add_argument(
        "--lr", type=float, default=None, help=f"RMSprop learning rate (default {d.lr:g})"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help=f"share of Train held out when there is no Val/ (default {d.val_fraction:g})",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt"
    )
    parser.add_argument(
        "--qat-from",
        default=None,
        metavar="CKPT",
        help="quantisation-aware training: fine-tune this trained GlimmerNet/TakuNet "
        "checkpoint under simulated INT8 (architecture, input size and classes "
        "come from it; default 10 epochs at lr 1e-4)",
    )
    parser.add_argument("--weight-bits", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--calib-images", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"DataLoader worker processes (default min(4, CPUs) = {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if present), cpu, cuda, cuda:N (default auto); under torchrun auto, "
        "cuda (process N takes cuda:LOCAL_RANK) or cpu",
    )
    add_verbose_flag(parser)
    return parser


def _check_values(args: argparse.Namespace) -> None:
    checks = (
        ("--epochs", args.epochs, 1),
        ("--img-size", args.img_size, 16),
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
        ("--calib-images", args.calib_images, 1),
    )
    for flag, value, low in checks:
        if value is not None and value < low:
            raise GlimmerError(f"{flag} must be at least {low}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise GlimmerError(f"--lr must be positive, got {args.lr}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        raise GlimmerError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if not 2 <= args.weight_bits <= 8:
        raise GlimmerError(f"--weight-bits must be 2 to 8, got {args.weight_bits}")
    if args.weight_bits != 8 and args.qat_from is None:
        raise GlimmerError("--weight-bits is only used with --qat-from")


def _check_out(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise GlimmerError(f"--out {run_dir}: exists and is not a folder")
    for name in (BEST, LAST):
        if (run_dir / name).exists():
            raise GlimmerError(
                f"--out {run_dir} already holds a training run ({name}); use --resume to "
                "continue it, or another --out for a new run"
            )


def _fresh_settings(args: argparse.Namespace, run_dir: Path) -> RunSettings:
    _check_out(run_dir)
    given = {k: getattr(args, k) for k in RUN_OPTIONS + ("epochs",) if getattr(args, k) is not None}
    return RunSettings(**given)


def _resume_settings(args: argparse.Namespace, run_dir: Path) -> Dict[str, Any]:
    """last.pt's model, train state and settings; --epochs may grow, the rest must match."""
    from glimmer.models.checkpoint import load_checkpoint

    last = run_dir / LAST
    if not last.is_file():
        raise GlimmerError(
            f"--resume: {last} not found (nothing to resume; start a run without --resume)"
        )
    ck = load_checkpoint(last)
    if ck.qat is not None:
        raise GlimmerError(
            f"--resume: {last} is from a --qat-from run, which cannot be resumed; "
            "start it again with a new --out"
        )
    state = ck.raw.get("train_state")
    if not isinstance(state, dict) or "settings" not in state:
        raise GlimmerError(
            f"{last}: no training state to resume from (not a glimmer-train last.pt)"
        )
    saved = dict(state["settings"])
    for key in RUN_OPTIONS:
        value = getattr(args, key)
        if value is not None and value != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise GlimmerError(
                f"{flag} {value} differs from the run's {saved[key]} in {last}; a resumed run "
                "keeps its settings (start a new --out to change them)"
            )
    if args.epochs is not None:
        saved["epochs"] = args.epochs
    done = int(state["epoch"])
    if done >= saved["epochs"]:
        raise GlimmerError(
            f"{last}: already trained {done} of {saved['epochs']} epochs; pass a larger --epochs "
            "to train on"
        )
    return {
        "settings": RunSettings(**saved),
        "model": ck.model,
        "train_state": state,
        "class_names": ck.class_names,
    }


def _qat_source(path: Path) -> "Checkpoint":
    """The --qat-from checkpoint: ours or a reference .ckpt, loaded; anything else one clear
    line."""
    from glimmer.models.checkpoint import load_checkpoint, sniff_kind

    if not path.is_file():
        raise GlimmerError(f"--qat-from {path}: no such file")
    kind = sniff_kind(path)
    if kind not in ("glimmer", "reference"):
        what = {"ultralytics": "an ultralytics (YOLO) checkpoint"}.get(
            kind,
            "an ONNX model"
            if path.suffix.lower() == ".onnx"
            else "not a checkpoint glimmer-train wrote",
        )
        raise GlimmerError(
            f"--qat-from {path}: {what}; QAT starts from a trained GlimmerNet/TakuNet "
            "checkpoint (glimmer-train's best.pt or a reference .ckpt)"
        )
    try:
        return load_checkpoint(path)
    except GlimmerError as exc:
        raise GlimmerError(f"--qat-from: {exc}") from None


def _qat_settings(args: argparse.Namespace, data_dir: Path, run_dir: Path):
    """(QATSettings, source checkpoint), every flag checked before anything is written."""
    from .data import find_split
    from .qat import QATSettings

    if args.resume:
        raise GlimmerError(
            "--resume cannot be combined with --qat-from (a QAT run is short: start it "
            "again with a new --out)"
        )
    _check_out(run_dir)
    path = Path(args.qat_from)
    ck = _qat_source(path)
    size = ck.input_size[0]
    if ck.input_size[0] != ck.input_size[1]:
        raise GlimmerError(f"--qat-from {path}: input size {list(ck.input_size)} is not square")
    for flag, given, own in (("--arch", args.arch, ck.arch), ("--img-size", args.img_size, size)):
        if given is not None and given != own:
            raise GlimmerError(
                f"{flag} {given} differs from --qat-from {path}'s {own}; QAT keeps the "
                "checkpoint's architecture and input size"
            )
    train_dir = find_split(data_dir, "train")
    if train_dir is not None:
        from glimmer.runtime.core.images import class_folders

        found = class_folders(train_dir)
        if found != list(ck.class_names):
            raise GlimmerError(
                f"--qat-from {path}: its classes {list(ck.class_names)} differ from the "
                f"class folders of {train_dir} {found}"
            )
    given = {
        k: getattr(args, k)
        for k in ("batch_size", "seed", "lr", "val_fraction", "epochs")
        if getattr(args, k) is not None
    }
    settings = QATSettings(
        arch=ck.arch,
        img_size=size,
        weight_bits=args.weight_bits,
        calib_images=args.calib_images,
        source=str(path),
        **given,
    )
    return settings, ck


def _report(metrics: Dict[str, Any], run_dir: Path) -> None:
    best = metrics["best"]
    print(
        f"best epoch {best['epoch']}: val weighted F1 {best['val_f1_weighted']:.4f} "
        f"-> {run_dir / BEST}"
    )
    print(
        f"metrics: {run_dir / 'metrics.json'}  plots: {run_dir / 'curves.png'}"
        + (f", {run_dir / 'confusion_matrix.png'}" if metrics["test"] is not None else "")
    )


def _check_launch(args: argparse.Namespace, world_size: int) -> None:
    """What a torchrun launch cannot do: QAT, and a global batch that does not split evenly."""
    if world_size == 1:
        return
    if args.qat_from is not None:
        raise GlimmerError(
            f"--qat-from runs in one process, not under torchrun (WORLD_SIZE {world_size}): QAT is "
            "a short fine-tune whose activation ranges are calibrated once; start it without "
            "torchrun"
        )
    batch = args.batch_size if args.batch_size is not None else _saved_batch(args)
    if batch % world_size:
        raise GlimmerError(
            f"--batch-size {batch} (the global batch) does not split evenly over WORLD_SIZE "
            f"{world_size} processes; use a multiple of {world_size}"
        )


def _saved_batch(args: argparse.Namespace) -> int:
    """The batch size of the run being made or resumed when --batch-size is not given."""
    if args.resume:
        from glimmer.models.checkpoint import load_checkpoint

        last = Path(args.out) / LAST
        if last.is_file():
            state = load_checkpoint(last).raw.get("train_state") or {}
            saved = state.get("settings", {}).get("batch_size")
            if saved is not None:
                return int(saved)
    return RunSettings().batch_size


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_values(args)
    from .distributed import Group, launch_from_env, pick_device

    launch = launch_from_env()
    with Group(launch, pick_device(args.device, launch)) as group:
        # every rank checks; a mistake on any is the same one line on each, before anything is
        # written
        plan = group.agree(lambda: _plan(args, group.world_size))
        return _train(args, plan, group)


def _plan(args: argparse.Namespace, world_size: int) -> Dict[str, Any]:
    """Everything checked and read before training: the kind of run and its settings."""
    _check_launch(args, world_size)
    data_dir, run_dir = Path(args.data_dir), Path(args.out)
    if not data_dir.is_dir():
        raise GlimmerError(f"DATA_DIR {data_dir}: no such folder")
    if args.qat_from is not None:
        settings, source = _qat_settings(args, data_dir, run_dir)
        return {"qat": True, "settings": settings, "source": source}
    resume = _resume_settings(args, run_dir) if args.resume else None
    settings = resume["settings"] if resume else _fresh_settings(args, run_dir)
    return {"qat": False, "settings": settings, "resume": resume}


def _train(args: argparse.Namespace, plan: Dict[str, Any], group) -> int:
    data_dir, run_dir = Path(args.data_dir), Path(args.out)
    if plan["qat"]:
        settings, source = plan["settings"], plan["source"]
        settings, source = _qat_settings(args, data_dir, run_dir)
        from .qat import QATTrainer

        qat = QATTrainer(
            data_dir,
            run_dir,
            settings,
            source,
            workers=args.workers,
            device=str(group.device),
            log=lambda line: print(line, flush=True),
        )
        _report(qat.run(), run_dir)
        return 0

    from .trainer import Trainer

    trainer = Trainer(
        data_dir,
        run_dir,
        plan["settings"],
        workers=args.workers,
        resume=plan["resume"],
        log=lambda line: print(line, flush=True),
        group=group,
    )
    metrics = trainer.run()
    if group.main:
        _report(metrics, run_dir)
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-train", main))


if __name__ == "__main__":
    entry()
