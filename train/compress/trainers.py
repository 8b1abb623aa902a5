"""ultralytics DetectionTrainer subclasses for fine-tuning and distilling a pruned YOLOv8.

Trap (docs/yolo-compression.md, "ultralytics facts"): the stock ``get_model`` rebuilds a
``DetectionModel`` from the unpruned yaml and copies only the tensors whose shapes match, so a
pruned model silently loses its weights. :class:`ModuleTrainer.get_model` returns the loaded module
itself.

:class:`DistillTrainer` adds ``alpha * CWD`` (``cwd.py``) on the student's neck layers: forward
hooks capture the student's and the frozen eval-mode teacher's features, a criterion wrapper adds
the term to the detection loss, and the alignment convs join the optimizer as one more parameter
group. They are never part of the student, so the saved checkpoint holds the student alone.

Several GPUs (``--device 0,1``): ultralytics trains in DDP by writing a script that torchrun starts
once per GPU; each worker rebuilds the trainer as ``type(trainer)(cfg=..., overrides=...,
_callbacks=...)`` from a cloudpickle of the class (``ultralytics.utils.dist.generate_ddp_file``).
Constructor settings (``sr``, the teacher, ``tau`` ...) would be lost there, so :func:`bind` makes a
subclass that carries them (cloudpickle copies a class that is not importable by name, settings
included). :meth:`ModuleTrainer.train` launches the workers itself: ultralytics' own launch deletes
the run folder first (our ``--out`` holds ``data.yaml``), and a failed worker becomes one line. In
the workers the model is DDP-wrapped, so everything that reaches into it unwraps it first, and the
distillation's alignment convs (outside DDP) have their gradients averaged by hand.
"""

import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from glimmer.models.yolo import detection_trainer, offline, ultralytics_modules
from glimmer.runtime.core.errors import GlimmerError
from glimmer.runtime.core.files import atomic_path

from .cwd import ChannelWiseDistiller, FeatureTap
from .yolo import check_yolov8

DetectionTrainer = detection_trainer()  # version checked before subclassing its internals
ALIGN_NAME = "cwd-align.pt"


def is_pruned(model: nn.Module) -> bool:
    """True when any tensor differs in shape from the same yaml built fresh."""
    fresh = ultralytics_modules()["DetectionModel"](
        model.yaml, nc=model.model[-1].nc, verbose=False
    )
    ours = {k: v.shape for k, v in model.state_dict().items()}
    return any(ours.get(k) != v.shape for k, v in fresh.state_dict().items())


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (in a multi-GPU worker ``self.model`` is wrapped)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _world() -> int:
    """Processes in this DDP run (1 outside one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def bind(trainer_cls: type, **settings: Any) -> type:
    """``trainer_cls`` with ``settings`` as its constructor arguments, constructible the way
    ultralytics' DDP workers construct a trainer (``cfg=``, ``overrides=``, ``_callbacks=``).

    ``cfg`` is ultralytics' default config there (plus an empty ``save_dir``), which is what our
    trainers use anyway, so it is not passed on.
    """

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        trainer_cls.__init__(self, overrides=overrides, _callbacks=_callbacks, **settings)

    return type(trainer_cls.__name__, (trainer_cls,), {"__init__": __init__, "bound": settings})


class ModuleTrainer(DetectionTrainer):
    """A DetectionTrainer that trains the given checkpoint's module as it is (pruned or not)."""

    def __init__(self, cfg=None, overrides=None, _callbacks=None):
        with offline():  # also in a DDP worker, a fresh interpreter
            if cfg is None:
                super().__init__(overrides=overrides, _callbacks=_callbacks)
            else:
                super().__init__(cfg=cfg, overrides=overrides, _callbacks=_callbacks)

    def train(self):
        with offline():
            if not self.ddp:
                return super().train()
            return self._train_ddp()

    def ddp_command(self, script: str) -> list:
        """torchrun over ``script``, one process per GPU of ``--device``."""
        from ultralytics.utils.dist import find_free_network_port

        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(self.world_size),
            "--master_port",
            str(find_free_network_port()),
            script,
        ]

    def _train_ddp(self) -> None:
        """ultralytics' DDP launch, without deleting the run folder, a failure one line."""
        from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

        if self.args.rect:  # as ultralytics: rectangular batches do not shard
            self.args.rect = False
        script = generate_ddp_file(self)
        try:
            done = subprocess.run(self.ddp_command(script))
        finally:
            ddp_cleanup(self, script)
        if done.returncode:
            raise GlimmerError(
                f"--device {self.args.device}: DDP training on {self.world_size} GPUs failed "
                f"(exit code {done.returncode}); the workers' errors are above"
            )

    def get_model(self, cfg=None, weights: Optional[nn.Module] = None, verbose: bool = True):
        if weights is None:  # a yaml: build from scratch, the stock way
            return super().get_model(cfg=cfg, weights=None, verbose=verbose)
        check_yolov8(weights, str(self.args.model))
        if weights.model[-1].nc != self.data["nc"]:
            if is_pruned(weights):
                raise GlimmerError(
                    f"{self.args.model}: the pruned model has {weights.model[-1].nc} classes "
                    f"but the dataset has {self.data['nc']}; a pruned head cannot be rebuilt"
                )
            return super().get_model(
                cfg=cfg, weights=weights, verbose=verbose
            )  # new head, same body
        model = weights.float()
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def extra_parameters(self) -> list:
        """Trainable parameters outside the model (none here; the CWD alignment convs in
        distill)."""
        return []

    def before_clip(self) -> None:
        """Called with unscaled gradients, before clipping: where the L1 sparsity term goes."""

    def optimizer_step(self):
        """ultralytics' step (unscale -> clip -> step -> update -> zero_grad -> EMA) with a gradient
        hook."""
        self.scaler.unscale_(self.optimizer)
        self.before_clip()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        extra = self.extra_parameters()
        if extra:
            world = _world()
            if world > 1:  # outside DDP: average their gradients as DDP does the model's
                for p in extra:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(world)
            torch.nn.utils.clip_grad_norm_(extra, max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)


class _DistillCriterion:
    """Detection loss + alpha * CWD; called by ``DetectionModel.loss`` in place of
    v8DetectionLoss."""

    def __init__(
        self,
        base,
        distiller: ChannelWiseDistiller,
        teacher: nn.Module,
        student_tap: FeatureTap,
        teacher_tap: FeatureTap,
        alpha: float,
    ) -> None:
        self.base, self.distiller, self.teacher = base, distiller, teacher
        self.student_tap, self.teacher_tap, self.alpha = student_tap, teacher_tap, alpha

    def __call__(self, preds, batch):
        loss, items = self.base(preds, batch)
        with torch.no_grad():
            self.teacher(batch["img"])
        cwd = self.distiller(self.student_tap.take(), self.teacher_tap.take())
        n = batch["img"].shape[0]  # ultralytics' loss is summed over the batch: match its scale
        term = (self.alpha * cwd * n).to(loss.dtype).reshape(1)
        items = dict(items)
        items["cwd_loss"] = (self.alpha * cwd).detach()
        return torch.cat([loss, term]), items

    def update(self) -> None:  # the trainer calls criterion.update() once per epoch when present
        if hasattr(self.base, "update"):
            self.base.update()


def neck_channels(model: nn.Module, layers: Sequence[int]) -> list:
    """Output channels of the given top-level layers (C2f, Conv or SPPF)."""
    out = []
    for i in layers:
        if not 0 <= i < len(model.model) - 1:
            raise GlimmerError(
                f"--layers: {i} is not a layer of this model (0..{len(model.model) - 2})"
            )
        last = model.model[i]
        conv = getattr(last, "cv2", last)
        if not hasattr(conv, "conv"):
            raise GlimmerError(
                f"--layers: layer {i} ({type(last).__name__}) has no conv output to distil"
            )
        out.append(conv.conv.out_channels)
    return out


class DistillTrainer(ModuleTrainer):
    """Fine-tune the student with ``alpha * CWD`` from a frozen teacher on ``layers``."""

    def __init__(
        self,
        overrides: Dict[str, Any],
        teacher: nn.Module,
        layers: Sequence[int] = (12, 15, 18, 21),
        tau: float = 6.0,
        alpha: float = 0.5,
        _callbacks=None,
    ) -> None:
        super().__init__(overrides=overrides, _callbacks=_callbacks)
        self.teacher = teacher.float().eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.layers, self.tau, self.alpha = list(layers), tau, alpha
        self.distiller: Optional[ChannelWiseDistiller] = None

    def build_optimizer(
        self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5
    ):
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        self.distiller = ChannelWiseDistiller(
            neck_channels(_unwrap(model), self.layers),
            neck_channels(self.teacher, self.layers),
            self.tau,
        )
        self.distiller.to(next(model.parameters()).device)
        settings = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        settings.update(param_group="weight", weight_decay=decay)
        # before the LR scheduler exists, so it records this group's initial_lr like the others
        optimizer.add_param_group({"params": list(self.distiller.parameters()), **settings})
        return optimizer

    def _setup_train(self):
        super()._setup_train()  # the EMA copy is taken here, before any hook exists
        student = _unwrap(self.model)
        device = next(student.parameters()).device
        self.teacher.to(device)
        if self.teacher.model[-1].stride.tolist() != student.model[-1].stride.tolist():
            raise GlimmerError("--teacher and --student have different strides")
        if self.teacher.model[-1].nc != student.model[-1].nc:
            raise GlimmerError(
                f"--teacher has {self.teacher.model[-1].nc} classes, --student "
                f"{student.model[-1].nc}: distillation needs the same classes"
            )
        self.student_tap = FeatureTap(student, self.layers)
        self.teacher_tap = FeatureTap(self.teacher, self.layers)
        student.criterion = _DistillCriterion(
            student.init_criterion(),
            self.distiller,
            self.teacher,
            self.student_tap,
            self.teacher_tap,
            self.alpha,
        )

    def extra_parameters(self) -> list:
        return list(self.distiller.parameters()) if self.distiller is not None else []

    def save_model(self):
        """last.pt, and the alignment convs beside it: they are not part of the student, and a
        resumed run would otherwise restart them from random."""
        saved = super().save_model()
        if self.distiller is not None:
            with atomic_path(self.wdir / ALIGN_NAME) as tmp:
                torch.save(self.distiller.state_dict(), str(tmp))
        return saved

    def resume_training(self, ckpt):
        super().resume_training(ckpt)
        align = self.wdir / ALIGN_NAME
        if self.resume and self.distiller is not None and align.is_file():
            self.distiller.load_state_dict(torch.load(str(align), map_location="cpu"))

    def _do_train(self):
        try:
            super()._do_train()
        finally:
            for tap in (getattr(self, "student_tap", None), getattr(self, "teacher_tap", None)):
                if tap is not None:
                    tap.remove()
            student = _unwrap(self.model) if isinstance(self.model, nn.Module) else None
            if getattr(student, "criterion", None) is not None:
                student.criterion = None


def train_args(
    data: Path, out: Path, epochs: int, imgsz: int, batch: int, model: str, **extra: Any
) -> Dict[str, Any]:
    """ultralytics overrides shared by every stage: the paper's SGD settings, offline, no extras."""
    args = dict(
        model=model,
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        project=str(out.parent.resolve()),
        name=out.name,
        exist_ok=True,
        optimizer="SGD",
        lr0=0.01,
        momentum=0.937,
        weight_decay=5e-4,
        amp=torch.cuda.is_available(),
        plots=False,
        verbose=False,
        seed=0,
        deterministic=True,
    )
    args.update(extra)
    return args


def resume_args(last: Path, data: Path, out: Path, **extra: Any) -> Dict[str, Any]:
    """Overrides for ultralytics' own resume: everything else comes from ``last.pt``'s arguments;
    ``save_dir`` and ``data`` are given again so a moved folder still resumes in place."""
    return dict(resume=str(last), data=str(data), save_dir=str(out.resolve()), **extra)


def resume_state(last: Path, epochs: int) -> Optional[int]:
    """The epoch (1-based) an interrupted run would continue from, 0 when its ``last.pt`` is of a
    finished run (ultralytics strips the optimizer at the end), None when there is no usable one."""
    last = Path(last)
    if not last.is_file():
        return None
    try:
        ckpt = torch.load(str(last), map_location="cpu", weights_only=False)
    except Exception:  # a half-written file: ultralytics writes last.pt in place
        return None
    if not isinstance(ckpt, dict):
        return None
    epoch = ckpt.get("epoch", -1)
    if ckpt.get("optimizer") is None or epoch < 0 or epoch + 1 >= epochs:
        return 0
    return epoch + 2


def run_training(trainer_cls, overrides: Dict[str, Any], **kwargs: Any) -> Path:
    """Train offline and return the best checkpoint (ultralytics layout, ``weights/best.pt``)."""
    with offline():
        try:
            cls = bind(trainer_cls, **kwargs) if kwargs else trainer_cls
            trainer = cls(overrides=overrides)
            trainer.train()
        except GlimmerError:
            raise
        except RuntimeError as exc:
            if not str(exc).startswith("Dataset"):  # ultralytics' wrapper for dataset problems
                raise
            first = str(exc).strip().splitlines()[0]
            raise GlimmerError(f"--data: {first[:300]}") from exc
    best = trainer.best if trainer.best.exists() else trainer.last
    if not best.exists():
        raise GlimmerError(f"training wrote no checkpoint in {trainer.wdir}")
    return best
