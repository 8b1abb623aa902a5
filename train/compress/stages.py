"""The compression stages as the command line runs them, alone or in the pipeline: checking the
inputs (model, teacher, dataset, output folder) before anything is written, training a stage (or
continuing it with ultralytics' own resume), pruning a checkpoint with the |gamma| warning first."""

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from glimmer.runtime.core.errors import GlimmerError

YAML_NAME = re.compile(r"^yolov8[nsmlx]\.yaml$")


def model_source(spec: str, flag: str = "--model") -> str:
    """A packaged yaml name, or a .pt that is checked to be a YOLOv8 detector (errors name
    ``flag``)."""
    if YAML_NAME.match(spec):
        return spec
    if not spec.endswith(".pt"):
        raise GlimmerError(f"{flag} {spec}: expected yolov8n|s|m|l|x.yaml or a .pt checkpoint")
    from .yolo import load_detector

    try:
        load_detector(Path(spec))
    except GlimmerError as exc:
        raise GlimmerError(f"{flag} {exc}") from None
    return str(Path(spec).resolve())


def check_teacher(spec: str, names: Sequence[str], layers: Sequence[int]) -> str:
    """``--teacher``: a YOLOv8 detector .pt with the dataset's class list and the distilled layers;
    checked before any training, so a bad teacher never costs the earlier stages."""
    if not spec.endswith(".pt"):
        raise GlimmerError(f"--teacher {spec}: expected a YOLOv8 detector checkpoint (.pt)")
    from .trainers import neck_channels
    from .yolo import load_detector

    try:
        model, _ = load_detector(Path(spec))
    except GlimmerError as exc:
        raise GlimmerError(f"--teacher {exc}") from None
    theirs = [str(model.names[i]) for i in sorted(model.names)]
    if theirs != list(names):
        raise GlimmerError(
            f"--teacher {spec}: its classes {theirs} are not the dataset's {list(names)} "
            "(distillation needs the same class list)"
        )
    try:
        neck_channels(model, layers)
    except GlimmerError as exc:
        raise GlimmerError(f"--teacher {spec}: {exc}") from None
    return str(Path(spec).resolve())


def check_device(spec: Optional[str], batch: int) -> Optional[str]:
    """``--device``: None (ultralytics picks), ``cpu``, or CUDA indices (``0``, ``0,1``; ``cuda:``
    allowed), canonical as ultralytics takes them. Several indices train in ultralytics' DDP, one
    process per GPU, each with an equal share of ``--batch``."""
    if spec is None:
        return None
    text = spec.strip().lower().replace(" ", "")
    if text == "cpu":
        return text
    if text.startswith("cuda:"):
        text = text[len("cuda:") :]
    parts = text.split(",")
    if not text or not all(p.isdigit() for p in parts):
        raise GlimmerError(f"--device {spec}: expected cpu or CUDA device indices such as 0 or 0,1")
    indices = [int(p) for p in parts]
    if len(set(indices)) != len(indices):
        raise GlimmerError(f"--device {spec}: a GPU is listed twice")
    import torch

    if not torch.cuda.is_available():
        raise GlimmerError(
            f"--device {spec}: CUDA is not available to this torch build or machine "
            "(use --device cpu)"
        )
    count = torch.cuda.device_count()
    if max(indices) >= count:
        raise GlimmerError(
            f"--device {spec}: only {count} CUDA device(s) visible (indices 0 to {count - 1})"
        )
    n = len(indices)
    if n > 1 and (batch % n or batch // n < 2):
        raise GlimmerError(
            f"--batch {batch} does not split over the {n} GPUs of --device {spec} into equal "
            f"shares of at least 2 images (BatchNorm needs two); use a multiple of {n}, at "
            f"least {2 * n}"
        )
    return ",".join(str(i) for i in indices)


def check_out(out: Path, exist_ok: bool) -> None:
    if out.exists() and not out.is_dir():
        raise GlimmerError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not exist_ok:
        raise GlimmerError(f"--out {out}: folder is not empty; choose another or pass --exist-ok")


def prepare(args: argparse.Namespace) -> Tuple[Path, Path]:
    """Check --out, then the dataset; only then create --out (an error leaves nothing behind)."""
    from .yolo_data import check_dataset, write_resolved

    out = Path(args.out)
    check_out(out, args.exist_ok)
    ds = check_dataset(Path(args.data))
    out.mkdir(parents=True, exist_ok=True)
    return out, write_resolved(ds, out / "data.yaml")


def train(
    kind: str,
    args: argparse.Namespace,
    out: Path,
    data: Path,
    model: str,
    resume_from: Optional[Path] = None,
    **kwargs: Any,
) -> Path:
    """Train one stage into ``out`` (an ultralytics run folder); with ``resume_from`` (its
    ``last.pt``) continue that run with ultralytics' own resume instead."""
    from .trainers import (
        DistillTrainer,
        ModuleTrainer,
        resume_args,
        run_training,
        train_args,
    )

    extra: Dict[str, Any] = {"workers": args.workers}
    if args.device is not None:
        extra["device"] = args.device
    if resume_from is not None:
        overrides = resume_args(resume_from, data, out, **extra)
    else:
        overrides = train_args(data, out, args.epochs, args.imgsz, args.batch, model, **extra)
    if kind == "sparse":
        from .sparse import SparseTrainer

        best = run_training(
            SparseTrainer, overrides, sr=kwargs["sr"], ratio=kwargs.get("ratio", 0.5)
        )
    elif kind == "distill":
        from .yolo import load_detector

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


def gamma_check(model: Any, ratio: float, keep_stem: bool, keep_box: bool) -> Dict[str, Any]:
    """The |gamma| figures of what the prune would remove; the one warning line goes to stderr."""
    from .gammas import layer_gammas, prune_warning, summarize

    stats = summarize(layer_gammas(model, ratio, keep_stem, keep_box))
    stats["warning"] = prune_warning(stats)
    if stats["warning"]:
        print(stats["warning"], file=sys.stderr, flush=True)
    return stats


def prune_file(
    src: Path,
    dst: Path,
    ratio: float,
    imgsz: int,
    prune_stem: bool = False,
    prune_box: bool = False,
    table: bool = True,
) -> Dict[str, Any]:
    """Prune ``src`` into ``dst``: params and GFLOPs before and after, and the |gamma| figures
    (``gammas``) with their warning, printed before pruning."""
    from .prune import per_layer_table, prune_yolov8
    from .yolo import load_detector, save_detector

    if dst.suffix != ".pt":
        raise GlimmerError(f"--out {dst}: must end in .pt")
    if dst.resolve() == src.resolve():
        raise GlimmerError(f"--out {dst}: would overwrite the unpruned --model")
    model, ckpt = load_detector(src)
    stats = gamma_check(model, ratio, not prune_stem, not prune_box)
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
    return dict(totals, gammas=stats)


def layers_arg(text: str) -> List[int]:
    """``--layers 12,15,18,21``."""
    try:
        layers = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices, got {text!r}"
        ) from None
    if not layers:
        raise argparse.ArgumentTypeError("no layers given")
    return layers
