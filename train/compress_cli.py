"""glimmer-compress: sparse training, layer-wise pruning and channel-wise distillation of YOLOv8.

    glimmer-compress sparse   --model yolov8m.yaml|PATH.pt --data DATA.yaml --epochs E --out DIR
    glimmer-compress prune    --model PATH.pt [--ratio 0.5] --out PATH.pt
    glimmer-compress finetune --model PRUNED.pt --data DATA.yaml --epochs E --out DIR
    glimmer-compress distill  --student PRUNED.pt --teacher PATH.pt --data DATA.yaml --epochs E
                              --out DIR
    glimmer-compress pipeline --model yolov8m.yaml|PATH.pt --data DATA.yaml --epochs E --out DIR
    glimmer-compress visdrone2yolo RAW_DIR OUT_DIR

The method of Sabaghian et al. (docs/yolo-compression.md) on ultralytics 8.4.190, offline.
"""

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import glimmer.models.yolo  # noqa: F401 - ultralytics' offline guard, set before anything imports it
from glimmer.runtime.core.console import add_verbose_flag, run_cli
from glimmer.runtime.core.errors import GlimmerError

YAML_NAME = re.compile(r"^yolov8[nsmlx]\.yaml$")


def _layers(text: str) -> List[int]:
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices, got {text!r}"
        ) from None
    if not layers:
        raise argparse.ArgumentTypeError("no layers given")
    return layers


def _training_options(p: argparse.ArgumentParser, epochs_required: bool = True) -> None:
    p.add_argument(
        "--data", required=True, help="YOLO-format dataset yaml (path, train, val, names)"
    )
    p.add_argument("--epochs", type=int, required=epochs_required, help="training epochs")
    p.add_argument("--imgsz", type=int, default=1024, help="square training/val size (paper: 1024)")
    p.add_argument("--batch", type=int, default=8, help="batch size (paper: 8)")
    p.add_argument("--workers", type=int, default=4, help="dataloader workers (0 on CPU)")
    p.add_argument("--device", default=None, help="'cpu' or a CUDA index such as 0 (default: auto)")
    p.add_argument("--out", required=True, help="output folder (weights/best.pt inside)")
    p.add_argument("--exist-ok", action="store_true", help="reuse a non-empty --out folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glimmer-compress", description=__doc__.strip().splitlines()[0]
    )
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sparse", help="train with an L1 penalty on BN gammas")
    p.add_argument("--model", default="yolov8m.yaml", help="yolov8n|s|m|l|x.yaml or a YOLOv8 .pt")
    p.add_argument(
        "--sr", type=float, default=0.005, help="lambda0 of sr*(1-0.9*e/E) (paper: 0.005)"
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

    p = sub.add_parser("pipeline", help="sparse -> prune -> finetune and distill, with a summary")
    p.add_argument("--model", default="yolov8m.yaml", help="yolov8n|s|m|l|x.yaml or a YOLOv8 .pt")
    p.add_argument("--sr", type=float, default=0.005, help="sparsity lambda0")
    p.add_argument("--ratio", type=float, default=0.5, help="share of channels removed per layer")
    _distill_options(p)
    p.add_argument(
        "--latency-runs", type=int, default=20, help="ONNX Runtime timing runs per stage"
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
        "--layers", type=_layers, default=[12, 15, 18, 21], help="distilled layers (neck C2f)"
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


def _model_source(spec: str, flag: str = "--model") -> str:
    """A packaged yaml name, or a .pt that is checked to be a YOLOv8 detector."""
    if YAML_NAME.match(spec):
        return spec
    if not spec.endswith(".pt"):
        raise GlimmerError(f"{flag} {spec}: expected yolov8n|s|m|l|x.yaml or a .pt checkpoint")
    from glimmer.train.compress.yolo import load_detector

    load_detector(Path(spec))
    return str(Path(spec).resolve())


def _prepare(args: argparse.Namespace) -> Tuple[Path, Path]:
    """Check --out, then the dataset; only then create --out (an error leaves nothing behind)."""
    from glimmer.train.compress.yolo_data import check_dataset, write_resolved

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GlimmerError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.exist_ok:
        raise GlimmerError(f"--out {out}: folder is not empty; choose another or pass --exist-ok")
    ds = check_dataset(Path(args.data))
    out.mkdir(parents=True, exist_ok=True)
    return out, write_resolved(ds, out / "data.yaml")


def _train(
    kind: str, args: argparse.Namespace, out: Path, data: Path, model: str, **kwargs: Any
) -> Path:
    from glimmer.train.compress.trainers import (
        DistillTrainer,
        ModuleTrainer,
        run_training,
        train_args,
    )

    extra: Dict[str, Any] = {"workers": args.workers}
    if args.device is not None:
        extra["device"] = args.device
    overrides = train_args(data, out, args.epochs, args.imgsz, args.batch, model, **extra)
    if kind == "sparse":
        from glimmer.train.compress.sparse import SparseTrainer

        best = run_training(SparseTrainer, overrides, sr=kwargs["sr"])
    elif kind == "distill":
        from glimmer.train.compress.yolo import load_detector

        teacher, _ = load_detector(Path(kwargs["teacher"]))
        best = run_training(
            DistillTrainer,
            overrides,
            teacher=teacher,
            layers=kwargs["layers"],
            tau=kwargs["tau"],
            alpha=kwargs["alpha"],
        )
    else:
        best = run_training(ModuleTrainer, overrides)
    print(f"{kind}: weights {best}")
    return best


def prune_file(
    src: Path,
    dst: Path,
    ratio: float,
    imgsz: int,
    prune_stem: bool = False,
    prune_box: bool = False,
    table: bool = True,
) -> Dict[str, float]:
    from glimmer.train.compress.prune import per_layer_table, prune_yolov8
    from glimmer.train.compress.yolo import load_detector, save_detector

    if dst.suffix != ".pt":
        raise GlimmerError(f"--out {dst}: must end in .pt")
    if dst.resolve() == src.resolve():
        raise GlimmerError(f"--out {dst}: would overwrite the unpruned --model")
    model, ckpt = load_detector(src)
    result = prune_yolov8(
        copy.deepcopy(model), ratio, keep_stem=not prune_stem, keep_box=not prune_box
    )
    text, totals = per_layer_table(model, result.model, imgsz)
    if table:
        print(text)
    print(
        f"params {totals['params_before']:,} -> {totals['params_after']:,} "
        f"({totals['params_after'] / totals['params_before']:.1%}); GFLOPs@{imgsz} "
        f"{totals['gflops_before']:.2f} -> {totals['gflops_after']:.2f} "
        f"({totals['gflops_before'] / max(totals['gflops_after'], 1e-9):.2f}x fewer)"
    )
    save_detector(
        result.model,
        dst,
        {
            "stage": "pruned",
            "ratio": ratio,
            "source": str(src),
            "keep_stem": not prune_stem,
            "keep_box": not prune_box,
            **totals,
        },
        train_args=ckpt.get("train_args"),
    )
    print(f"pruned: {dst}")
    return totals


def run_pipeline(args: argparse.Namespace) -> List[Dict[str, Any]]:
    from glimmer.train.compress.summary import markdown, measure, write_summary

    model = _model_source(args.model)
    out, data = _prepare(args)
    rows: List[Dict[str, Any]] = []

    def record(stage: str, weights: Path) -> None:
        print(f"== measuring {stage}")
        rows.append(measure(stage, weights, data, args.imgsz, args.batch, out, args.latency_runs))

    if model.endswith(".pt"):
        record("base", Path(model))
    print("== stage 1/4: sparse training")
    sparse = _train("sparse", args, out / "1-sparse", data, model, sr=args.sr)
    record("sparse", sparse)
    print("== stage 2/4: layer-wise pruning")
    pruned = out / "2-pruned.pt"
    prune_file(sparse, pruned, args.ratio, args.imgsz, table=False)
    record("pruned", pruned)
    print("== stage 3/4: fine-tuning")
    record("finetune", _train("finetune", args, out / "3-finetune", data, str(pruned.resolve())))
    print("== stage 4/4: channel-wise distillation")
    record(
        "distill",
        _train(
            "distill",
            args,
            out / "4-distill",
            data,
            str(pruned.resolve()),
            teacher=str(sparse),
            layers=args.layers,
            tau=args.tau,
            alpha=args.alpha,
        ),
    )
    paths = write_summary(rows, out)
    print(markdown(rows))
    print(f"summary: {paths['json']} {paths['png']}")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _check_numbers(args)
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
        run_pipeline(args)
        return 0
    if args.command == "distill":
        student, teacher = (
            _model_source(args.student, "--student"),
            _model_source(args.teacher, "--teacher"),
        )
        if not student.endswith(".pt") or not teacher.endswith(".pt"):
            raise GlimmerError("--student and --teacher must be .pt checkpoints")
        out, data = _prepare(args)
        _train(
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
    model = _model_source(args.model)
    if args.command == "finetune" and not model.endswith(".pt"):
        raise GlimmerError("finetune: --model must be a pruned .pt checkpoint")
    out, data = _prepare(args)
    _train(args.command, args, out, data, model, sr=getattr(args, "sr", 0.0))
    return 0


def entry() -> None:
    sys.exit(run_cli("glimmer-compress", main))


if __name__ == "__main__":
    entry()
