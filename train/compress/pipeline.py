"""``glimmer-compress pipeline``: sparse -> prune -> finetune and distill -> the model to ship.

The folder it fills (``--out``)::

    settings.json        what the run is made from: dataset (class list, image counts, a fingerprint
                         of image paths, sizes and labels), model, teacher, the flags that shape it
    data.yaml            the checked dataset yaml, with absolute paths
    stages/<stage>.json  a stage's record, written atomically as its last step
    pipeline.log         one line per stage event: trained, resumed, skipped
    1-sparse/ 3-finetune/ 4-distill/   ultralytics run folders (weights/best.pt, last.pt, ...)
    1-sparse/gammas.csv, gammas.png    |gamma| per epoch, histogram before / after (gammas.py)
    2-pruned.pt          every stage's ONNX beside its weights (glimmer-export's path)
    summary.json / .md / .png          the table, the timing, the choice and why
    final.pt, final.onnx the best compressed model (selection.py), exported for glimmer-run

A stage is *complete* when its record exists and the weights and ONNX it names do: the record is
written after training, measuring and exporting, so anything short of that is not complete.
``--resume`` skips complete stages; an incomplete training stage whose ``last.pt`` is mid-run goes
on with ultralytics' own resume (its epoch, optimizer, EMA), one whose training had finished is only
measured, anything else restarts. The interleaved timing, the choice and the export of the final
model run every time, as they compare all stages. A folder made from another dataset, model,
teacher or training flag is refused, with one line, before anything is written.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_write_text, sha256_file

from .stages import check_out, check_teacher, model_source, prune_file, train

FORMAT = "glimmer-compress-pipeline"
SETTINGS_NAME, RECORDS, LOG_NAME = "settings.json", "stages", "pipeline.log"
#: flags that shape what the stages produce: a resumed run must keep them
RESULT_FLAGS = ("epochs", "imgsz", "batch", "sr", "ratio", "layers", "tau", "alpha")
FOLDERS = {"sparse": "1-sparse", "finetune": "3-finetune", "distill": "4-distill"}


def dataset_identity(ds: Any) -> Dict[str, Any]:
    """What makes a dataset this dataset, wherever it lies: class list, image counts, and a hash of
    every image's path (relative to the root) and size and every label file's content."""
    from .yolo_data import label_path

    h = hashlib.sha256()
    for split in sorted(ds.splits):
        for image in ds.splits[split]:
            try:
                rel = image.resolve().relative_to(ds.root).as_posix()
            except ValueError:
                rel = image.name
            h.update(f"{split}/{rel}:{image.stat().st_size}\n".encode())
            h.update(label_path(image).read_bytes())
    return {
        "yaml": str(ds.yaml_path.resolve()),
        "names": list(ds.names),
        "images": {k: len(v) for k, v in sorted(ds.splits.items())},
        "fingerprint": h.hexdigest()[:16],
    }


def model_identity(spec: Optional[str]) -> Optional[Dict[str, str]]:
    if spec is None:
        return None
    if spec.endswith(".pt"):
        return {"spec": spec, "sha256": sha256_file(spec)}
    return {"spec": spec}


def _same_source(a: Optional[Dict[str, str]], b: Optional[Dict[str, str]]) -> bool:
    """The same model: a .pt by content (it may have moved), a packaged yaml by name."""
    if a is None or b is None:
        return a is b
    if "sha256" in a or "sha256" in b:
        return a.get("sha256") == b.get("sha256")
    return a.get("spec") == b.get("spec")


def check_resumable(out: Path, old: Dict[str, Any], new: Dict[str, Any]) -> None:
    """One line when ``out`` was made from something else than this run would use."""
    tail = "; resume with the same settings or choose another --out"
    if old.get("format") != FORMAT:
        raise GlimmerError(f"--resume: {out / SETTINGS_NAME} is not a pipeline's settings file")
    a, b = old["dataset"], new["dataset"]
    if a["names"] != b["names"] or a["fingerprint"] != b["fingerprint"]:
        raise GlimmerError(
            f"--resume: {out} was made from another dataset ({a['yaml']}: classes {a['names']}, "
            f"images {a['images']}), not --data {b['yaml']} (classes {b['names']}, "
            f"images {b['images']}){tail}"
        )
    for key, flag in (("model", "--model"), ("teacher", "--teacher")):
        if not _same_source(old.get(key), new.get(key)):
            was = (old.get(key) or {}).get("spec", "the sparse-trained model")
            now = (new.get(key) or {}).get("spec", "the sparse-trained model")
            same = " (its content changed)" if was == now else ""
            raise GlimmerError(f"--resume: {out} was made from {flag} {was}, not {now}{same}{tail}")
    for flag in RESULT_FLAGS:
        if old["flags"].get(flag) != new["flags"].get(flag):
            raise GlimmerError(
                f"--resume: {out} was made with --{flag} {old['flags'].get(flag)}, "
                f"not {new['flags'].get(flag)}{tail}"
            )


class Run:
    """The pipeline's folder: records, the stage log, paths relative to it."""

    def __init__(self, out: Path, resume: bool) -> None:
        self.out, self.resume = out, resume

    def log(self, line: str) -> None:
        print(f"== {line}", flush=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        with open(self.out / LOG_NAME, "a") as fh:
            fh.write(f"{stamp} {line}\n")

    def rel(self, path: Path) -> str:
        return os.path.relpath(str(Path(path).resolve()), str(self.out.resolve()))

    def record(self, stage: str) -> Optional[Dict[str, Any]]:
        """The stage's record when the stage is complete (record and the files it names)."""
        path = self.out / RECORDS / f"{stage}.json"
        if not self.resume or not path.is_file():
            return None
        try:
            rec = json.loads(path.read_text())
        except ValueError:
            return None
        row = rec.get("row") or {}
        files = [row.get("weights"), row.get("onnx")]
        return rec if all(f and (self.out / f).is_file() for f in files) else None

    def write_record(self, stage: str, row: Dict[str, Any], **extra: Any) -> None:
        stamp = datetime.now(timezone.utc).isoformat()
        rec = dict(stage=stage, row=row, finished=stamp, **extra)
        atomic_write_text(self.out / RECORDS / f"{stage}.json", json.dumps(rec, indent=2))


def _trained(
    run: Run, args: argparse.Namespace, stage: str, fresh: Callable[[Optional[Path]], Path]
) -> Path:
    """A training stage's weights: continued from ``last.pt`` (ultralytics' resume), taken as they
    are when training had finished, or trained from the start; ``fresh(last_or_None)`` trains."""
    from .trainers import resume_state

    folder = run.out / FOLDERS[stage]
    last = folder / "weights" / "last.pt"
    state = resume_state(last, args.epochs) if run.resume else None
    if state:
        run.log(f"{stage}: resuming the interrupted training at epoch {state} ({run.rel(last)})")
        return fresh(last)
    if state == 0:
        best = folder / "weights" / "best.pt"
        run.log(f"{stage}: training had finished; measuring it")
        return best if best.is_file() else last
    if folder.exists():  # a stale or unusable run: its results.csv would be appended to
        shutil.rmtree(folder)
    run.log(f"{stage}: training {args.epochs} epochs")
    return fresh(None)


def run_pipeline(args: argparse.Namespace) -> Dict[str, Any]:
    """Every stage (skipping complete ones under ``--resume``), then the timing, the choice, the
    summary and the final model; returns the summary."""
    from .yolo_data import check_dataset, write_resolved

    out = Path(args.out)
    model = model_source(args.model)
    if not args.resume:
        check_out(out, args.exist_ok)
    ds = check_dataset(Path(args.data))
    teacher = check_teacher(args.teacher, ds.names, args.layers) if args.teacher else None
    settings = {
        "format": FORMAT,
        "dataset": dataset_identity(ds),
        "model": model_identity(model),
        "teacher": model_identity(teacher),
        "flags": {k: getattr(args, k) for k in RESULT_FLAGS},
    }
    if args.resume:
        path = out / SETTINGS_NAME
        if not path.is_file():
            raise GlimmerError(f"--resume: {path} not found: no pipeline to resume in --out {out}")
        check_resumable(out, json.loads(path.read_text()), settings)
    # every check passed: from here on the folder is written
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        shutil.rmtree(out / RECORDS, ignore_errors=True)  # an earlier run's records are not ours
        atomic_write_text(out / SETTINGS_NAME, json.dumps(settings, indent=2))
    data = write_resolved(ds, out / "data.yaml")
    run = Run(out, args.resume)
    try:
        rows = _stages(run, args, model, data, teacher)
    except KeyboardInterrupt:
        print(
            "glimmer-compress: the pipeline stopped; the same command with --resume continues it",
            file=sys.stderr,
        )
        raise
    from .final import finish

    return finish(run, args, rows, data)


def _stages(
    run: Run, args: argparse.Namespace, model: str, data: Path, teacher: Optional[str]
) -> List[Dict[str, Any]]:
    from .summary import measure

    rows: List[Dict[str, Any]] = []

    def stage(name: str, produce: Callable[[], Path], **extra: Any) -> Path:
        rec = run.record(name)
        if rec is not None:
            run.log(f"{name}: complete, skipped ({RECORDS}/{name}.json)")
            rows.append(rec["row"])
            return run.out / rec["row"]["weights"]
        weights = produce()
        run.log(f"{name}: measuring (val mAP, ONNX export)")
        row = measure(name, weights, data, args.imgsz, args.batch, run.out)
        row.update(weights=run.rel(weights), onnx=run.rel(Path(row["onnx"])))
        run.write_record(name, row, **extra)
        rows.append(row)
        return weights

    def trainer(name: str, model_path: str, **kw: Any) -> Callable[[], Path]:
        folder = run.out / FOLDERS[name]

        def fresh(last: Optional[Path]) -> Path:
            return train(name, args, folder, data, model_path, resume_from=last, **kw)

        return lambda: _trained(run, args, name, fresh)

    if model.endswith(".pt"):
        stage("base", lambda: Path(model))
    print("== stage 1/4: sparse training")
    sparse = stage("sparse", trainer("sparse", model, sr=args.sr, ratio=args.ratio))
    print("== stage 2/4: layer-wise pruning")
    pruned = run.out / "2-pruned.pt"

    def prune() -> Path:
        run.log("pruned: pruning the sparse model")
        prune_file(sparse, pruned, args.ratio, args.imgsz, table=False)
        return pruned

    stage("pruned", prune)
    print("== stage 3/4: fine-tuning")
    stage("finetune", trainer("finetune", str(pruned.resolve())))
    print("== stage 4/4: channel-wise distillation")
    stage(
        "distill",
        trainer(
            "distill",
            str(pruned.resolve()),
            teacher=teacher or str(sparse),
            layers=args.layers,
            tau=args.tau,
            alpha=args.alpha,
        ),
        teacher=teacher or run.rel(sparse),
    )
    return rows
