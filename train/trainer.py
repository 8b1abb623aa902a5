"""The GlimmerNet paper's training loop: RMSprop, StepLR, cross-entropy, fp32, best Val weighted F1.

Recipe (docs/glimmernet.md, "Training recipe of the paper"): RMSprop(lr 1e-3, alpha 0.9, momentum
0.9, weight decay 1e-5, eps 1e-8); StepLR(step 2, gamma 0.975) stepped once per epoch; plain
cross-entropy; fp32; seed 22. The model with the best weighted F1 on Val is kept (``best.pt``) and
reported on Test; ``last.pt`` adds the optimizer, scheduler, epoch, best score, history and RNG
states, so ``--resume`` continues the run rather than restarting it.

Under torchrun (``distributed.py``) every process runs this loop on its share of each global batch;
rank 0 alone logs, draws progress bars and writes checkpoints, metrics and plots, and Val / Test
are predicted in shards and gathered, so every figure is over the whole split.
"""

import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from glimmer.models.checkpoint import load_checkpoint, save_checkpoint
from glimmer.models.glimmernet import GlimmerNet, build_model, count_params
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.tools.metrics import classification_report

from . import outputs
from .augment import ClassifierTransform, classifier_meta
from .data import AiderDataset, ImageDataset, load_aider, make_loader, progress
from .distributed import SINGLE, Group, pick_device, unwrap

RECIPE = {
    "optimizer": "RMSprop",
    "alpha": 0.9,
    "momentum": 0.9,
    "weight_decay": 1e-5,
    "eps": 1e-8,
    "scheduler": "StepLR",
    "step_size": 2,
    "gamma": 0.975,
    "loss": "cross_entropy",
    "precision": "fp32",
    "selection": "val f1_weighted",
}
BEST, LAST = "best.pt", "last.pt"


@dataclass
class RunSettings:
    """What defines a run; kept in last.pt so a resumed run trains the same way."""

    arch: str = "glimmernet"
    epochs: int = 300
    img_size: int = 224
    batch_size: int = 64
    seed: int = 22
    lr: float = 1e-3
    val_fraction: float = 0.1


def build_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(
        model.parameters(),
        lr=lr,
        alpha=RECIPE["alpha"],
        eps=RECIPE["eps"],
        weight_decay=RECIPE["weight_decay"],
        momentum=RECIPE["momentum"],
    )


def build_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.StepLR:
    return torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=RECIPE["step_size"], gamma=RECIPE["gamma"]
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Global RNG states as tensors and primitives (last.pt must load with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )


def train_one_epoch(
    model: torch.nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    desc: str,
    group: Optional[Group] = None,
) -> Tuple[float, float]:
    """One pass over Train; returns (mean loss, accuracy) over the samples seen (by every rank)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = progress(loader, desc, disable=group is not None and not group.main)
    for images, labels in bar:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        n = labels.numel()
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == labels).sum())
        seen += n
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}")
    bar.close()
    if group is not None:
        total_loss, correct, seen = group.sum(total_loss, correct, seen)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader, device: torch.device, desc: str, group: Optional[Group] = None
) -> Tuple[float, List[int], List[int]]:
    """(mean cross-entropy, true labels, predicted labels) in eval mode; with ``group``, of the
    whole split from every rank's shard (the plain module: DDP's forward is for training)."""
    model = unwrap(model)
    model.eval()
    total_loss, y_true, y_pred = 0.0, [], []
    for images, labels in progress(loader, desc, disable=group is not None and not group.main):
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        y_true += labels.tolist()
        y_pred += logits.argmax(1).tolist()
    if group is not None and group.enabled:
        (total_loss,) = group.sum(total_loss)
        pairs = group.gather_shards(list(zip(y_true, y_pred)))
        y_true, y_pred = [t for t, _ in pairs], [p for _, p in pairs]
    return total_loss / max(len(y_true), 1), y_true, y_pred


def check_input_size(model: GlimmerNet, img_size: int, arch: str) -> None:
    """Fail before training when the input does not survive the network's downsampling."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size))
    except RuntimeError as exc:
        raise GlimmerError(
            f"--img-size {img_size} is too small for {arch} (it needs at least 57): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    finally:
        model.train(was_training)


def resolve_device(name: str) -> torch.device:
    """``--device`` of a single-process run."""
    return pick_device(name, SINGLE)


class Trainer:
    """One run in ``run_dir``: fresh, or continued from last.pt (``resume`` from the CLI).

    Args:
        resume: ``{"model", "train_state", "class_names"}`` read from last.pt, or None.
        log: where progress lines go (one line per epoch); warnings go to stderr.
        group: the torchrun launch this process belongs to (its device replaces ``device``);
            None for a single process.
    """

    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        settings: RunSettings,
        workers: int = 4,
        device: str = "auto",
        resume: Optional[Dict[str, Any]] = None,
        log: Callable[[str], None] = print,
        group: Optional[Group] = None,
    ) -> None:
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.settings, self.workers = settings, int(workers)
        self.device = group.device if group is not None else resolve_device(device)
        self.group = group if group is not None else Group(SINGLE, self.device)
        self.log = log if self.group.main else _silent
        self.resume = resume
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None

    def _warn(self, text: str) -> None:
        if self.group.main:
            print(f"glimmer-train: warning: {text}", file=sys.stderr, flush=True)

    def _load_data(self) -> AiderDataset:
        s = self.settings
        data = load_aider(
            self.data_dir,
            s.val_fraction,
            s.seed,
            threads=max(1, self.workers),
            quiet=not self.group.main,
        )
        names = data.class_names
        if self.resume is not None and list(self.resume["class_names"]) != names:
            raise GlimmerError(
                f"{self.data_dir}: class folders {names} differ from the resumed "
                f"run's classes {list(self.resume['class_names'])}"
            )
        counts = ", ".join(f"{k} {v}" for k, v in data.train.per_class(names).items())
        tested = len(data.test) if data.test else "-"
        self.log(
            f"data: {data.root}  classes {len(names)}  train {len(data.train)} ({counts})  "
            f"val {len(data.val)}  test {tested}"
        )
        if data.holdout_fraction is not None:
            held = ", ".join(f"{k} {v}" for k, v in data.val.per_class(names).items())
            self.log(
                f"no Val/ folder: holding out a stratified {data.holdout_fraction:.0%} of "
                f"Train for validation ({len(data.val)} images: {held})"
            )
        if data.test is None:
            self.log("no Test/ folder: the test report will be skipped")
        if data.skipped:
            shown = ", ".join(d["path"] for d in data.skipped[:5])
            more = f" and {len(data.skipped) - 5} more" if len(data.skipped) > 5 else ""
            self._warn(
                f"skipped {len(data.skipped)} unreadable image(s): {shown}{more} "
                f"(all listed in {self.run_dir / 'metrics.json'})"
            )
        return data

    def _settings_block(self) -> Dict[str, Any]:
        block = dict(
            asdict(self.settings),
            workers=self.workers,
            device=str(self.device),
            recipe=RECIPE,
            resumed_at_epochs=[],
            world_size=self.group.world_size,
        )
        if self.resume is not None:
            state = self.resume["train_state"]
            block["resumed_at_epochs"] = [*state.get("resumed_at_epochs", []), int(state["epoch"])]
        return block

    def _loader(self, split, meta, train: bool):
        """Training: this process's share of each global batch; evaluation: its shard."""
        s, group = self.settings, self.group
        transform = ClassifierTransform(meta, train=train, seed=s.seed)
        sampler = group.sampler(len(split), s.seed, shuffle=train) if group.enabled else None
        return make_loader(
            ImageDataset(split.paths, split.labels, transform),
            s.batch_size // group.world_size,
            self.workers,
            s.seed,
            shuffle=train,
            pin_memory=self.device.type == "cuda",
            sampler=sampler,
        )

    def _save(
        self,
        name: str,
        model: GlimmerNet,
        names: List[str],
        provenance: Dict[str, Any],
        **kwargs: Any,
    ) -> None:
        """Rank 0 writes (the plain module: no DDP ``module.`` prefixes)."""
        if not self.group.main:
            return
        size = (self.settings.img_size, self.settings.img_size)
        save_checkpoint(
            self.run_dir / name,
            unwrap(model),
            self.settings.arch,
            names,
            size,
            provenance=provenance,
            **kwargs,
        )

    def run(self) -> Dict[str, Any]:
        """Train, select, test; returns the metrics document also written to metrics.json."""
        s = self.settings
        check_input_size(build_model(s.arch), s.img_size, s.arch)  # before the image scan
        data = self._load_data()
        names = data.class_names
        meta = classifier_meta(names, s.img_size, s.arch)
        seed_everything(s.seed)
        model = self.resume["model"] if self.resume else build_model(s.arch, num_classes=len(names))
        model.to(self.device)
        net = self.group.wrap(model)  # DDP under torchrun, with BatchNorm over the global batch
        optimizer = build_optimizer(model, s.lr)
        scheduler = build_scheduler(optimizer)
        start = 0
        if self.resume is not None:
            state = self.resume["train_state"]
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start, self.best = int(state["epoch"]), state.get("best")
            self.history = list(state.get("history", []))
            set_rng_state(state["rng"])
            self.log(f"resuming {self.run_dir / LAST} after epoch {start} of {s.epochs}")
        settings = self._settings_block()
        self.log(
            f"model: {s.arch}, {count_params(model):,} parameters, input {s.img_size}x"
            f"{s.img_size}, device {self.device}, {self.workers} loader workers"
            + (
                f" per process; {self.group.world_size} processes ({self.group.backend}), "
                f"{s.batch_size // self.group.world_size} images each per step of {s.batch_size}"
                if self.group.enabled
                else ""
            )
        )
        provenance = {
            "dataset": str(data.root.resolve()),
            "trainer": "glimmer-train",
            "settings": {k: v for k, v in settings.items() if k != "recipe"},
            "recipe": RECIPE,
        }

        document = self._document(settings, data)

        train_loader = self._loader(data.train, meta, train=True)
        val_loader = self._loader(data.val, meta, train=False)
        for epoch in range(start + 1, s.epochs + 1):
            row, val, improved = self._epoch(
                net, (train_loader, val_loader), optimizer, scheduler, epoch, names, "epoch"
            )
            if improved:
                self._save(
                    BEST, model, names, dict(provenance, epoch=epoch, metrics={"val": self.best})
                )
            train_state = {
                "epoch": epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best": self.best,
                "history": self.history,
                "rng": rng_state(),
                "settings": asdict(s),
                "resumed_at_epochs": settings["resumed_at_epochs"],
            }
            self._save(
                LAST,
                model,
                names,
                dict(provenance, epoch=epoch, metrics={"val": row}),
                train_state=train_state,
            )
            self._after_epoch(document, "epoch", row, val, improved)
        del train_loader, val_loader  # shuts the persistent workers down before the test pass
        return self._finish(data, meta, document, self._test)

    def _document(self, settings: Dict[str, Any], data: AiderDataset, **extra: Any):
        """``document(finished, test=None, test_skipped=None)``: the run's metrics.json contents
        now (history and best so far), with ``extra`` top-level entries."""

        def document(finished: bool, test=None, test_skipped=None) -> Dict[str, Any]:
            doc = outputs.build_metrics(
                settings,
                data.summary(),
                data.skipped,
                self.history,
                self.best,
                finished,
                test,
                test_skipped,
            )
            doc.update(extra)
            return doc

        return document

    def _evaluate(
        self, model: torch.nn.Module, loader, names: List[str], desc: str
    ) -> Tuple[float, Dict[str, Any]]:
        """(mean loss, classification report) of ``model`` on ``loader``."""
        loss, y_true, y_pred = predict(model, loader, self.device, desc, self.group)
        return loss, classification_report(y_true, y_pred, names)

    def _epoch(
        self, model, loaders, optimizer, scheduler, epoch: int, names: List[str], label: str
    ):
        """One epoch of training and validation: (history row, val report, improved on the best).

        Ties in F1 (common on small Val sets) go to the lower Val loss; an improvement becomes
        ``self.best`` (the caller saves best.pt).
        """
        train_loader, val_loader = loaders
        t0 = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(
            model,
            train_loader,
            optimizer,
            self.device,
            f"{label} {epoch}/{self.settings.epochs}",
            self.group,
        )
        val_loss, val = self._evaluate(model, val_loader, names, "val")
        scheduler.step()
        row = {
            "epoch": epoch,
            "lr": lr,
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "val_loss": val_loss,
            "val_accuracy": val["accuracy"],
            "val_f1_weighted": val["f1_weighted"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.history.append(row)
        best = self.best
        improved = best is None or (val["f1_weighted"], -val_loss) > (
            best["val_f1_weighted"],
            -best["val_loss"],
        )
        if improved:
            self.best = {
                "epoch": epoch,
                "val_f1_weighted": val["f1_weighted"],
                "val_loss": val_loss,
                "val_accuracy": val["accuracy"],
            }
        return row, val, improved

    def _after_epoch(self, document, label: str, row: Dict[str, Any], val, improved: bool) -> None:
        """metrics.json and curves.png rewritten (rank 0), and the epoch's line."""
        if self.group.main:
            outputs.write_metrics(self.run_dir, document(finished=False))
            outputs.plot_curves(self.run_dir / outputs.CURVES_PNG, self.history, self.best["epoch"])
        self.log(
            f"{label} {row['epoch']:>3}/{self.settings.epochs}  lr {row['lr']:.3g}  "
            f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}  "
            f"val loss {row['val_loss']:.4f} acc {val['accuracy']:.3f} "
            f"F1 {val['f1_weighted']:.4f}  {row['seconds']:.1f}s" + ("  * best" if improved else "")
        )

    def _finish(self, data: AiderDataset, meta, document, test_fn) -> Dict[str, Any]:
        """The Test pass (when there is a Test split) and the final metrics.json."""
        test, test_skipped = None, None
        if data.test is None:
            test_skipped = f"no Test/ folder in {data.root}"
        else:
            self.group.barrier()  # best.pt, written by rank 0, is read by every rank
            test = test_fn(data, meta)
        metrics = document(finished=True, test=test, test_skipped=test_skipped)
        if self.group.main:
            outputs.write_metrics(self.run_dir, metrics)
        return metrics

    def _test(self, data: AiderDataset, meta) -> Dict[str, Any]:
        """Best-on-Val weights on Test; the result also goes into best.pt's provenance."""
        names = data.class_names
        best = load_checkpoint(self.run_dir / BEST)
        model = best.model.to(self.device)
        loader = self._loader(data.test, meta, train=False)
        _, y_true, y_pred = predict(model, loader, self.device, "test", self.group)
        del loader
        result = outputs.summarize_test(
            classification_report(y_true, y_pred, names), data.test.source
        )
        result["epoch"] = best.provenance.get("epoch")
        provenance = dict(best.provenance)
        provenance["metrics"] = dict(
            provenance.get("metrics", {}),
            test={"f1_weighted": result["f1_weighted"], "accuracy": result["accuracy"]},
        )
        self._save(BEST, model.cpu(), names, provenance, preprocess=best.preprocess)
        title = (
            f"test confusion matrix (epoch {result['epoch']}, "
            f"weighted F1 {result['f1_weighted']:.3f})"
        )
        if self.group.main:
            outputs.plot_confusion(
                self.run_dir / outputs.CONFUSION_PNG, result["confusion_matrix"], names, title=title
            )
        per_class = "  ".join(f"{k} {v['f1']:.3f}" for k, v in result["per_class"].items())
        self.log(
            f"test (best epoch {result['epoch']}): weighted F1 {result['f1_weighted']:.4f}  "
            f"accuracy {result['accuracy']:.4f}  per-class F1: {per_class}"
        )
        return result


def _silent(line: str) -> None:
    """The log of ranks other than 0: one process speaks for the run."""
