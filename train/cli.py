"""glimmer-train: train GlimmerNet / TakuNet on an AIDERv2-layout folder with the paper's recipe.

    glimmer-train DATA_DIR --out RUN_DIR [--epochs 300] [--img-size 224] [--batch-size 64]
                  [--seed 22] [--resume] [--arch glimmernet|takunet] [--workers N] [--lr 1e-3]

Writes RUN_DIR/best.pt (best weighted F1 on Val), last.pt (with the state --resume needs),
metrics.json, curves.png and confusion_matrix.png. A finished run is never overwritten.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from glimmer.runtime.console import add_verbose_flag, run_cli
from glimmer.runtime.errors import GlimmerError

from .trainer import BEST, LAST, RunSettings

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
# Options that define a run: a resumed run keeps last.pt's values and refuses different ones.
RUN_OPTIONS = ("arch", "img_size", "batch_size", "seed", "lr", "val_fraction")


def build_parser() -> argparse.ArgumentParser:
    d = RunSettings()
    parser = argparse.ArgumentParser(
        prog="glimmer-train", description=__doc__.strip().splitlines()[0],
        epilog="Writes RUN_DIR/best.pt, last.pt, metrics.json, curves.png, confusion_matrix.png.")
    parser.add_argument("data_dir", metavar="DATA_DIR",
                        help="dataset folder: Train/, Val/, Test/ with one folder per class")
    parser.add_argument("--out", required=True, metavar="RUN_DIR",
                        help="run folder for checkpoints, metrics and plots")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help=f"total epochs (default {d.epochs}; with --resume, raise it to train on)")
    parser.add_argument("--img-size", type=int, default=None, metavar="PX",
                        help=f"square input size (default {d.img_size})")
    parser.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help=f"images per step (default {d.batch_size}, the paper's)")
    parser.add_argument("--seed", type=int, default=None, metavar="N",
                        help=f"seed of weights, shuffling and augmentation (default {d.seed})")
    parser.add_argument("--arch", choices=("glimmernet", "takunet"), default=None,
                        help=f"network (default {d.arch})")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"RMSprop learning rate (default {d.lr:g})")
    parser.add_argument("--val-fraction", type=float, default=None, metavar="F",
                        help=f"share of Train held out when there is no Val/ (default {d.val_fraction:g})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, metavar="N",
                        help=f"DataLoader worker processes (default min(4, CPUs) = {DEFAULT_WORKERS})")
    parser.add_argument("--device", default="auto",
                        help="auto (CUDA if present), cpu, cuda, cuda:N (default auto)")
    add_verbose_flag(parser)
    return parser


def _check_values(args: argparse.Namespace) -> None:
    checks = (
        ("--epochs", args.epochs, 1),
        ("--img-size", args.img_size, 16),
        ("--batch-size", args.batch_size, 1),
        ("--workers", args.workers, 0),
    )
    for flag, value, low in checks:
        if value is not None and value < low:
            raise GlimmerError(f"{flag} must be at least {low}, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise GlimmerError(f"--lr must be positive, got {args.lr}")
    if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
        raise GlimmerError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")


def _fresh_settings(args: argparse.Namespace, run_dir: Path) -> RunSettings:
    if run_dir.exists() and not run_dir.is_dir():
        raise GlimmerError(f"--out {run_dir}: exists and is not a folder")
    for name in (BEST, LAST):
        if (run_dir / name).exists():
            raise GlimmerError(
                f"--out {run_dir} already holds a training run ({name}); use --resume to "
                "continue it, or another --out for a new run"
            )
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_values(args)
    data_dir, run_dir = Path(args.data_dir), Path(args.out)
    if not data_dir.is_dir():
        raise GlimmerError(f"DATA_DIR {data_dir}: no such folder")
    resume = _resume_settings(args, run_dir) if args.resume else None
    settings = resume["settings"] if resume else _fresh_settings(args, run_dir)

    from .trainer import Trainer

    trainer = Trainer(
        data_dir,
        run_dir,
        settings,
        workers=args.workers,
        device=args.device,
        resume=resume,
        log=lambda line: print(line, flush=True),
    )
    metrics = trainer.run()
    best = metrics["best"]
    print(
        f"best epoch {best['epoch']}: val weighted F1 {best['val_f1_weighted']:.4f} "
        f"-> {run_dir / BEST}"
    )
    print(
        f"metrics: {run_dir / 'metrics.json'}  plots: {run_dir / 'curves.png'}"
        + (f", {run_dir / 'confusion_matrix.png'}" if metrics["test"] is not None else "")
    )
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-train", main))


if __name__ == "__main__":
    entry()
