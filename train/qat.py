"""Quantisation-aware training (QAT): fine-tune a trained GlimmerNet / TakuNet under the INT8
arithmetic that ``glimmer-export --int8`` writes, so the Q/DQ model loses less than post-training
quantisation.

What training simulates is exactly what the exported Q/DQ ONNX computes
(:mod:`glimmer.calibration.qdq`):

- every BatchNorm folded into the conv in front of it, and the BN itself set to an exact identity,
  frozen and kept in eval mode: the export quantises the folded weight, and batch statistics would
  change that weight from step to step;
- per-tensor symmetric int8 (``amax / 127``) on the input of every conv and linear the deploy form
  turns into a quantised Conv / Gemm. A GDBlock's whole input shares one range: the export cuts its
  channels into streams differently per dilation mode, and one scale makes every mode compute the
  same;
- per-output-channel symmetric weights, ``max|w_c| / qmax(weight_bits)``, from the current weights
  at every step; biases float.

torch's fake-quantise ops pass gradients straight through and round half to even, like
QuantizeLinear. Activation ranges are calibrated once (max |x| over training images with
deployment's preprocessing, on the folded float model) and then kept fixed, NVIDIA
pytorch-quantization's QAT recipe: with a small learning rate the weights move little, and fixed
scales keep every epoch's model exportable with the ranges stored beside it.

The network stays a plain GlimmerNet: :class:`QATModel` wraps it (forward pre-hooks for activations,
``torch.func.functional_call`` for weights), so state_dict keys never change and ``best.pt`` loads
and exports like any checkpoint, with one extra ``qat`` entry (``models.checkpoint.QAT_KEYS``).
"""

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Tuple, Union

import numpy as np
import torch
from torch import nn

from glimmer.calibration.qdq import activation_scale, qmax
from glimmer.export.rewrites.fold_bn import bn_scale_shift
from glimmer.models.checkpoint import Checkpoint, load_checkpoint
from glimmer.models.glimmernet import GDBlock, GlimmerNet, Refiner
from glimmer.models.layers import GroupedDilatedConv2d
from glimmer.runtime.core.errors import GlimmerError

from . import outputs
from .augment import classifier_meta
from .data import AiderDataset, Split, progress
from .trainer import (
    BEST,
    LAST,
    RECIPE,
    RunSettings,
    Trainer,
    build_optimizer,
    build_scheduler,
    seed_everything,
)

CALIBRATION = "max"


# ---- folding -------------------------------------------------------------------------------------


def conv_bn_pairs(model: GlimmerNet) -> List[Tuple[List[nn.Conv2d], nn.BatchNorm2d]]:
    """Every BatchNorm with the conv(s) in front of it (a GDBlock's BN follows all its group
    convs)."""
    pairs: List[Tuple[List[nn.Conv2d], nn.BatchNorm2d]] = []
    for module in model.modules():
        if isinstance(module, GDBlock):
            pairs.append((list(module.conv.convs), module.bn))
        elif isinstance(module, Refiner):
            pairs.append(([module.conv], module.bn))
        elif (
            isinstance(module, nn.Sequential)
            and len(module) > 1
            and isinstance(module[0], nn.Conv2d)
            and isinstance(module[1], nn.BatchNorm2d)
        ):
            pairs.append(([module[0]], module[1]))
    found = {id(bn) for _, bn in pairs}
    if any(isinstance(m, nn.BatchNorm2d) and id(m) not in found for m in model.modules()):
        raise ValueError("a BatchNorm without a conv in front of it cannot be folded")
    return pairs


@torch.no_grad()
def fold_batchnorms(model: GlimmerNet) -> GlimmerNet:
    """Fold every BN into its conv(s), in place (export/rewrites/fold_bn.py's maths, in float64),
    and make the BN an exact identity (weight 1, bias 0, mean 0, var 1 - eps), frozen. Returns
    ``model``."""
    model.eval()
    for convs, bn in conv_bn_pairs(model):
        scale, shift = bn_scale_shift(bn)
        start = 0
        for conv in convs:
            if conv.bias is None:
                raise ValueError("folding needs convs with a bias (GlimmerNet's all have one)")
            stop = start + conv.out_channels
            s, t = scale[start:stop], shift[start:stop]
            conv.weight.copy_(conv.weight.double() * s.reshape(-1, 1, 1, 1))
            conv.bias.copy_(conv.bias.double() * s + t)
            start = stop
        bn.weight.fill_(1.0)
        bn.bias.zero_()
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)
    return model


# ---- fake quantisation ---------------------------------------------------------------------------


def quantized_inputs(model: GlimmerNet) -> List[str]:
    """Modules whose input the export quantises, in data order: each conv and linear, except that
    a GDBlock's grouped dilated conv counts once (its group convs share the block input's range)."""
    grouped = [name for name, m in model.named_modules() if isinstance(m, GroupedDilatedConv2d)]
    names = []
    for name, module in model.named_modules():
        inside = any(name.startswith(g + ".") for g in grouped)
        if isinstance(module, GroupedDilatedConv2d) or (
            isinstance(module, (nn.Conv2d, nn.Linear)) and not inside
        ):
            names.append(name)
    return names


def fake_quantize_weight(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-output-channel symmetric fake quantisation, as ``qdq.weight_scales`` (a zero
    channel: 1)."""
    top = qmax(bits)
    amax = weight.detach().abs().flatten(1).amax(dim=1)
    scale = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -top, top)


def _input_quantizer(amax: float) -> Callable:
    scale = activation_scale(amax)

    def hook(_module: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        return (torch.fake_quantize_per_tensor_affine(args[0], scale, 0, -128, 127), *args[1:])

    return hook


class QATModel(nn.Module):
    """``model`` (a GlimmerNet, held as ``.model`` and left a plain GlimmerNet) under fake INT8.

    Args:
        activation_amax: fixed input range of every module of :func:`quantized_inputs`.
        weight_bits: width of the weight grid (8; fewer for experiments, as ``insert_qdq``).

    ``train()`` keeps the (folded, identity) BatchNorms in eval mode. Call :meth:`remove` to take
    the activation hooks off ``model`` again.
    """

    def __init__(
        self, model: GlimmerNet, activation_amax: Mapping[str, float], weight_bits: int = 8
    ) -> None:
        super().__init__()
        qmax(weight_bits)  # validates the width
        self.model = model
        self.weight_bits = int(weight_bits)
        names = quantized_inputs(model)
        missing = [n for n in names if n not in activation_amax]
        if missing:
            raise ValueError(f"no activation range for module {missing[0]!r}")
        self.activation_amax = {n: float(activation_amax[n]) for n in names}
        modules = dict(model.named_modules())
        self._hooks = [
            modules[n].register_forward_pre_hook(_input_quantizer(a))
            for n, a in self.activation_amax.items()
        ]
        self._weights = [
            f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
        ]

    def train(self, mode: bool = True) -> "QATModel":
        super().train(mode)
        for m in self.model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.model.named_parameters())
        weights = {n: fake_quantize_weight(params[n], self.weight_bits) for n in self._weights}
        return torch.func.functional_call(self.model, weights, (x,))

    def remove(self) -> GlimmerNet:
        """Take the hooks off and hand back the plain model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return self.model


@torch.no_grad()
def calibrate_amax(
    model: GlimmerNet, batches: Iterable[torch.Tensor], device: Union[str, torch.device] = "cpu"
) -> Tuple[Dict[str, float], int]:
    """(max |x| at the input of each of :func:`quantized_inputs`, images seen), float model, eval
    mode."""
    amax = {n: 0.0 for n in quantized_inputs(model)}
    modules = dict(model.named_modules())

    def watch(name: str) -> Callable:
        def hook(_module: nn.Module, args: Tuple[Any, ...]) -> None:
            amax[name] = max(amax[name], float(args[0].detach().abs().max()))

        return hook

    hooks = [modules[n].register_forward_pre_hook(watch(n)) for n in amax]
    images = 0
    try:
        model.eval()
        for batch in batches:
            model(batch.to(device))
            images += int(batch.shape[0])
    finally:
        for h in hooks:
            h.remove()
    if not images:
        raise GlimmerError("QAT calibration saw no images")
    return amax, images


def qat_entry(model: QATModel, images: int, epochs: int) -> Dict[str, Any]:
    """The checkpoint's ``qat`` entry (``models.checkpoint.QAT_KEYS``)."""
    return {
        "activation_amax": dict(model.activation_amax),
        "weight_bits": model.weight_bits,
        "calibration": CALIBRATION,
        "images": int(images),
        "epochs": int(epochs),
    }


# ---- the fine-tuning run -------------------------------------------------------------------------


@dataclass
class QATSettings(RunSettings):
    """A QAT run: the recipe's optimizer at a tenth of its learning rate, a few epochs."""

    epochs: int = 10
    lr: float = RunSettings.lr / 10
    weight_bits: int = 8
    calib_images: int = 512
    source: str = ""


def calibration_split(train: Split, count: int, seed: int) -> Split:
    """A seeded sample of ``count`` training images (all of them when there are fewer)."""
    if len(train) <= count:
        return train
    pick = sorted(
        np.random.default_rng(seed).choice(len(train), size=count, replace=False).tolist()
    )
    return Split(
        "Calibration", [train.paths[i] for i in pick], [train.labels[i] for i in pick], train.source
    )


class QATTrainer(Trainer):
    """Calibrate, then fine-tune ``source`` under fake quantisation; best Val weighted F1 (under
    fake quantisation, the PTQ starting point included as epoch 0) is kept in ``best.pt``."""

    def __init__(
        self,
        data_dir: Path,
        run_dir: Path,
        settings: QATSettings,
        source: Checkpoint,
        workers: int = 4,
        device: str = "auto",
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(data_dir, run_dir, settings, workers=workers, device=device, log=log)
        self.source = source
        self.summary: Dict[str, Any] = {}

    def _check_classes(self, data: AiderDataset) -> None:
        if list(data.class_names) != list(self.source.class_names):
            raise GlimmerError(
                f"{data.root}: class folders {data.class_names} differ from the classes "
                f"{self.source.class_names} of --qat-from {self.source.path}"
            )

    def run(self) -> Dict[str, Any]:
        """Calibrate, fine-tune, select, test; returns the metrics document (also metrics.json)."""
        s: QATSettings = self.settings  # type: ignore[assignment]
        data = self._load_data()
        self._check_classes(data)
        names = data.class_names
        meta = classifier_meta(names, s.img_size, s.arch)
        seed_everything(s.seed)
        model = fold_batchnorms(copy.deepcopy(self.source.model)).to(self.device)
        calib = self._loader(
            calibration_split(data.train, s.calib_images, s.seed), meta, train=False
        )
        amax, images = calibrate_amax(
            model, (x for x, _ in progress(calib, "calibrating")), self.device
        )
        del calib
        val_loader = self._loader(data.val, meta, train=False)
        _, fp = self._evaluate(model, val_loader, names, "val float")
        qmodel = QATModel(model, amax, s.weight_bits)
        ptq_loss, ptq = self._evaluate(qmodel, val_loader, names, "val ptq")
        self.summary = {
            "weight_bits": s.weight_bits,
            "calibration": CALIBRATION,
            "images": images,
            "source": s.source,
            "val_float": {"f1_weighted": fp["f1_weighted"], "accuracy": fp["accuracy"]},
            "val_ptq": {"f1_weighted": ptq["f1_weighted"], "accuracy": ptq["accuracy"]},
        }
        self.log(
            f"QAT from {s.source}: calibrated {len(amax)} input ranges on {images} "
            "training images; "
            f"val weighted F1 float {fp['f1_weighted']:.4f}, PTQ ({s.weight_bits}-bit weights) "
            f"{ptq['f1_weighted']:.4f}"
        )
        settings = dict(
            asdict(s),
            workers=self.workers,
            device=str(self.device),
            recipe=RECIPE,
            resumed_at_epochs=[],
        )
        provenance = {
            "dataset": str(data.root.resolve()),
            "trainer": "glimmer-train --qat-from",
            "settings": {k: v for k, v in settings.items() if k != "recipe"},
            "recipe": RECIPE,
            "qat_from": {"path": s.source, "sha256": self.source.sha256},
        }

        document = self._document(settings, data, qat=self.summary)

        def save(name: str, epoch: int, metrics: Dict[str, Any]) -> None:
            self._save(
                name,
                model,
                names,
                dict(provenance, epoch=epoch, metrics=metrics),
                qat=qat_entry(qmodel, images, epoch),
            )

        self.best = {
            "epoch": 0,
            "val_f1_weighted": ptq["f1_weighted"],
            "val_loss": ptq_loss,
            "val_accuracy": ptq["accuracy"],
        }
        save(BEST, 0, {"val": self.best})
        optimizer = build_optimizer(model, s.lr)
        scheduler = build_scheduler(optimizer)
        train_loader = self._loader(data.train, meta, train=True)
        for epoch in range(1, s.epochs + 1):
            row, val, improved = self._epoch(
                qmodel, (train_loader, val_loader), optimizer, scheduler, epoch, names, "QAT epoch"
            )
            if improved:
                save(BEST, epoch, {"val": self.best})
            save(LAST, epoch, {"val": row})
            self._after_epoch(document, "QAT epoch", row, val, improved)
        qmodel.remove()
        del train_loader, val_loader
        return self._finish(data, meta, document, self._test_qat)

    def _test_qat(self, data: AiderDataset, meta) -> Dict[str, Any]:
        """best.pt on Test under fake quantisation; the result also goes into its provenance."""
        names = data.class_names
        best = load_checkpoint(self.run_dir / BEST)
        assert best.qat is not None
        qmodel = QATModel(
            best.model.to(self.device), best.qat["activation_amax"], best.qat["weight_bits"]
        )
        loader = self._loader(data.test, meta, train=False)
        _, rep = self._evaluate(qmodel, loader, names, "test")
        del loader
        result = outputs.summarize_test(rep, data.test.source)
        result["epoch"] = best.provenance.get("epoch")
        provenance = dict(best.provenance)
        provenance["metrics"] = dict(
            provenance.get("metrics", {}),
            test={"f1_weighted": result["f1_weighted"], "accuracy": result["accuracy"]},
        )
        self._save(
            BEST, qmodel.remove().cpu(), names, provenance, preprocess=best.preprocess, qat=best.qat
        )
        outputs.plot_confusion(
            self.run_dir / outputs.CONFUSION_PNG,
            result["confusion_matrix"],
            names,
            title=f"test confusion matrix, fake INT8 (epoch {result['epoch']}, "
            f"weighted F1 {result['f1_weighted']:.3f})",
        )
        self.log(
            f"test under fake INT8 (best epoch {result['epoch']}): weighted F1 "
            f"{result['f1_weighted']:.4f}  accuracy {result['accuracy']:.4f}"
        )
        return result


__all__ = [
    "QATModel",
    "QATSettings",
    "QATTrainer",
    "calibrate_amax",
    "calibration_split",
    "conv_bn_pairs",
    "fake_quantize_weight",
    "fold_batchnorms",
    "qat_entry",
    "quantized_inputs",
]
