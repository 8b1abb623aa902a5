"""glimmer-compress: sparse training, layer-wise pruning and channel-wise distillation of YOLOv8.

    glimmer-compress sparse   --model yolov8m.yaml|PATH.pt --data DATA.yaml --epochs E --out DIR
    glimmer-compress prune    --model PATH.pt [--ratio 0.5] --out PATH.pt
    glimmer-compress finetune --model PRUNED.pt --data DATA.yaml --epochs E --out DIR
    glimmer-compress distill  --student PRUNED.pt --teacher PATH.pt --data DATA.yaml --epochs E
                              --out DIR
    glimmer-compress pipeline --model yolov8m.yaml|PATH.pt --data DATA.yaml --epochs E --out DIR
                              [--teacher PATH.pt] [--resume]
    glimmer-compress visdrone2yolo RAW_DIR OUT_DIR

The method of Sabaghian et al. (docs/yolo-compression.md) on ultralytics 8.4.190, offline.
"""

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import glimmer.models.yolo  # noqa: F401 - ultralytics' offline guard, set before anything imports it
from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError
from glimmer.train.compress.stages import (
    check_device,
    layers_arg,
    model_source,
    prepare,
    prune_file,
    train,
)


def _training_options(p: argparse.ArgumentParser, epochs_required: bool = True) -> None:
    p.add_argument(
        "--data", required=True, help="YOLO-format dataset yaml (path, train, val, names)"
    )
    p.add_argument("--epochs", type=int, required=epochs_required, help="training epochs")
    p.add_argument("--imgsz", type=int, default=1024, help="square training/val size (paper: 1024)")
    p.add_argument("--batch", type=int, default=8, help="batch size (paper: 8)")
    p.add_argument("--workers", type=int, default=4, help="dataloader workers (0 on CPU)")
    p.add_argument(
        "--device",
        default=None,
        help="'cpu', a CUDA index such as 0, or several (0,1: DDP, --batch split evenly; "
        "default: auto)",
    )
    p.add_argument("--out", required=True, help="output folder (weights/best.pt inside)")
    p.add_argument("--exist-ok", action="store_true", help="reuse a non-empty --out folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="glimmer-compress", description=__doc__.strip().splitlines()[0]
    )
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sparse", help="train with an L1 penalty on BN gammas")
    p.add_argument("--model", default="yolov8m.yaml", help="yolov8n|s|m|l|x.yaml or a YOLOv8 .pt")
    p.add_argument(
        "--sr", type=float, default=0.005, help="lambda0 of sr*(1-0.9*e/E) (paper: 0.005)"
    )
    p.add_argument(
        "--ratio", type=float, default=0.5, help="the later prune's ratio, for the |gamma| report"
    )
    _training_options(p)

    p = sub.add_parser("prune", help="layer-wise channel pruning by |gamma|")
    p.add_argument("--model", required=True, help="a YOLOv8 .pt (ideally sparse-trained)")
    p.add_argument("--ratio", type=float, default=0.5, help="share of channels removed per layer")
    p.add_argument("--out", required=True, help="pruned checkpoint (.pt)")
    p.add_argument("--imgsz", type=int, default=640, help="input size for the GFLOPs table")
    p.add_argument("--prune-stem", action="store_true", help="also prune the first conv")
    p.add_argument("--prune-box", action="store_true", help="also prune Detect's box-branch convs")

    p = sub.add_parser("finetune", help="retrain a pruned model, keeping its structure")
    p.add_argument("--model", required=True, help="pruned .pt")
    _training_options(p)

    p = sub.add_parser("distill", help="fine-tune with channel-wise distillation from a teacher")
    p.add_argument("--student", required=True, help="pruned .pt")
    p.add_argument("--teacher", required=True, help="unpruned .pt (frozen)")
    _distill_options(p)
    _training_options(p)

    p = sub.add_parser(
        "pipeline", help="sparse -> prune -> finetune and distill -> final.pt/.onnx, summary"
    )
    p.add_argument("--model", default="yolov8m.yaml", help="yolov8n|s|m|l|x.yaml or a YOLOv8 .pt")
    p.add_argument("--sr", type=float, default=0.005, help="sparsity lambda0")
    p.add_argument("--ratio", type=float, default=0.5, help="share of channels removed per layer")
    p.add_argument(
        "--teacher",
        default=None,
        help="distillation teacher .pt (same classes as --data; default: the sparse-trained model)",
    )
    _distill_options(p)
    p.add_argument(
        "--latency-runs",
        type=int,
        default=90,
        help="timed ONNX Runtime calls per stage, in interleaved rounds of 3",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the pipeline in --out: skip complete stages, resume an interrupted one",
    )
    _training_options(p)

    p = sub.add_parser("visdrone2yolo", help="VisDrone2019-DET annotations to YOLO labels")
    p.add_argument(
        "raw_dir", help="folder with VisDrone2019-DET-<split>/ or images/ + annotations/"
    )
    p.add_argument("out_dir", help="output dataset folder (images/, labels/, data.yaml)")
    return parser


def _distill_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layers", type=layers_arg, default=[12, 15, 18, 21], help="distilled layers (neck C2f)"
    )
    p.add_argument("--tau", type=float, default=6.0, help="CWD temperature (paper: 6)")
    p.add_argument("--alpha", type=float, default=0.5, help="CWD weight (paper: 0.5)")


def _check_numbers(args: argparse.Namespace) -> None:
    if getattr(args, "epochs", None) is not None and args.epochs < 1:
        raise GlimmerError(f"--epochs must be at least 1, got {args.epochs}")
    if hasattr(args, "imgsz") and (args.imgsz < 32 or args.imgsz % 32):
        raise GlimmerError(
            f"--imgsz must be a multiple of 32 (YOLOv8's largest stride), got {args.imgsz}"
        )
    if getattr(args, "batch", 2) < 2:
        raise GlimmerError(
            f"--batch must be at least 2 (BatchNorm needs two samples), got {args.batch}"
        )
    if getattr(args, "sr", 0) < 0:
        raise GlimmerError(f"--sr must be >= 0, got {args.sr}")
    if not 0 <= getattr(args, "ratio", 0) < 1:
        raise GlimmerError(f"--ratio must be in [0, 1), got {args.ratio}")
    if getattr(args, "tau", 1) <= 0:
        raise GlimmerError(f"--tau must be positive, got {args.tau}")
    if getattr(args, "alpha", 0) < 0:
        raise GlimmerError(f"--alpha must be >= 0, got {args.alpha}")
    if getattr(args, "latency_runs", 9) < 9:
        raise GlimmerError(
            f"--latency-runs must be at least 9 (3 interleaved rounds of 3 calls: the noise is "
            f"the spread between rounds), got {args.latency_runs}"
        )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
    if hasattr(args, "device"):
        args.device = check_device(args.device, args.batch)
    if args.command == "visdrone2yolo":
        from glimmer.train.compress.visdrone import visdrone_to_yolo

        for split, report in visdrone_to_yolo(Path(args.raw_dir), Path(args.out_dir)).items():
            print(f"[{split}]")
            print("\n".join(report.lines()))
        print(f"dataset: {Path(args.out_dir) / 'data.yaml'}")
        return 0
    if args.command == "prune":
        prune_file(
            Path(args.model),
            Path(args.out),
            args.ratio,
            args.imgsz,
            args.prune_stem,
            args.prune_box,
        )
        return 0
    if args.command == "pipeline":
        from glimmer.train.compress.pipeline import run_pipeline

        run_pipeline(args)
        return 0
    if args.command == "distill":
        student, teacher = (
            model_source(args.student, "--student"),
            model_source(args.teacher, "--teacher"),
        )
        if not student.endswith(".pt") or not teacher.endswith(".pt"):
            raise GlimmerError("--student and --teacher must be .pt checkpoints")
        out, data = prepare(args)
        train(
            "distill",
            args,
            out,
            data,
            student,
            teacher=teacher,
            layers=args.layers,
            tau=args.tau,
            alpha=args.alpha,
        )
        return 0
    model = model_source(args.model)
    if args.command == "finetune" and not model.endswith(".pt"):
        raise GlimmerError("finetune: --model must be a pruned .pt checkpoint")
    out, data = prepare(args)
    ratio = getattr(args, "ratio", 0.5)
    best = train(args.command, args, out, data, model, sr=getattr(args, "sr", 0.0), ratio=ratio)
    if args.command == "sparse":
        from glimmer.train.compress.gammas import write_report
        from glimmer.train.compress.yolo import load_detector

        stats, _ = write_report(out, load_detector(best)[0], ratio)
        print(
            f"gammas: {stats['near_zero']:.1%} of the prunable |gamma| < 0.01; largest pruned / "
            f"median kept |gamma|: median {stats['gap_median']:.2f}, far in "
            f"{stats['layers_far']} of {stats['layers']} layers ({stats['png']})"
        )
        if stats["warning"]:
            print(stats["warning"], file=sys.stderr)
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-compress", main))


if __name__ == "__main__":
    entry()
