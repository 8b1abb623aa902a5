"""Sparsity-aware training: an L1 penalty on every BatchNorm scale (network slimming).

Stage 1 of Sabaghian et al.'s YOLOv8 compression framework, after Liu et al. 2017: the subgradient
``lambda(e) * sign(gamma)`` is added to each BN gamma's gradient, with the paper's decaying schedule

    lambda(e) = sr * (1 - 0.9 * e / E)      (sr = 0.005, e = current epoch, E = total epochs)

ultralytics runs no callback between ``backward()`` and the optimizer step, so the term is added
in ``optimizer_step`` after ``GradScaler.unscale_`` (correct under AMP: the penalty is never scaled)
and before gradient clipping, as the penalty is part of the gradient being clipped.

Whether it worked is logged as it trains (``gammas.py``): the |gamma| of the starting model in
``gammas-before.npy`` and, each time ultralytics saves ``last.pt``, one ``gammas.csv`` row of the
saved (EMA) model's figures, so a resumed run keeps its earlier rows.
"""

from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from glimmer.runtime.core.files import atomic_path

from . import gammas
from .trainers import ModuleTrainer


def sparsity_lambda(sr: float, epoch: int, epochs: int) -> float:
    """The paper's schedule, decaying linearly to 10% of ``sr`` at the last epoch."""
    return sr * (1.0 - 0.9 * epoch / max(epochs, 1))


def add_l1_subgradient(model: nn.Module, lam: float) -> int:
    """Add ``lam * sign(gamma)`` to every BN weight gradient; returns how many BN layers got it."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.weight is not None and m.weight.grad is not None:
            m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=lam)
            n += 1
    return n


def gamma_l1(model: nn.Module) -> float:
    """Sum of |gamma| over every BatchNorm: what sparse training drives down."""
    return float(
        sum(
            m.weight.detach().float().abs().sum()
            for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)
        )
    )


class SparseTrainer(ModuleTrainer):
    """DetectionTrainer with the L1 term on BN gammas applied between backward and the step."""

    def __init__(
        self,
        overrides: Dict[str, Any],
        sr: float = 0.005,
        ratio: float = 0.5,
        _callbacks=None,
    ) -> None:
        super().__init__(overrides=overrides, _callbacks=_callbacks)
        if sr < 0:
            raise ValueError(f"sr must be >= 0, got {sr}")
        self.sr, self.ratio = sr, ratio
        self.gamma_rows: List[Dict[str, Any]] = []

    def before_clip(self) -> None:
        if self.sr:
            add_l1_subgradient(self.model, sparsity_lambda(self.sr, self.epoch, self.epochs))

    def _setup_train(self):
        super()._setup_train()  # a resumed run has its start epoch from here on
        before = self.save_dir / gammas.BEFORE_NAME
        if not self.resume or not before.is_file():
            with atomic_path(before) as tmp, open(tmp, "wb") as fh:
                np.save(fh, gammas.all_gammas(self.model))
        rows = gammas.read_epochs(self.save_dir / gammas.CSV_NAME) if self.resume else []
        self.gamma_rows = [r for r in rows if r["epoch"] <= self.start_epoch]

    def save_model(self):
        saved = super().save_model()
        model = self.ema.ema if self.ema else self.model
        stats = gammas.summarize(gammas.layer_gammas(model, self.ratio))
        lam = sparsity_lambda(self.sr, self.epoch, self.epochs)
        self.gamma_rows.append(dict(stats, epoch=self.epoch + 1, **{"lambda": lam}))
        gammas.write_epochs(self.save_dir / gammas.CSV_NAME, self.gamma_rows)
        return saved
