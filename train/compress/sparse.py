"""Sparsity-aware training: an L1 penalty on every BatchNorm scale (network slimming).

Stage 1 of Sabaghian et al.'s YOLOv8 compression framework, after Liu et al. 2017: the subgradient
``lambda(e) * sign(gamma)`` is added to each BN gamma's gradient, with the paper's decaying schedule

    lambda(e) = sr * (1 - 0.9 * e / E)      (sr = 0.005, e = current epoch, E = total epochs)

ultralytics runs no callback between ``backward()`` and the optimizer step, so the term is added
in ``optimizer_step`` after ``GradScaler.unscale_`` (correct under AMP: the penalty is never scaled)
and before gradient clipping, as the penalty is part of the gradient being clipped.
"""

from typing import Any, Dict

import torch
from torch import nn

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

    def __init__(self, overrides: Dict[str, Any], sr: float = 0.005, _callbacks=None) -> None:
        super().__init__(overrides=overrides, _callbacks=_callbacks)
        if sr < 0:
            raise ValueError(f"sr must be >= 0, got {sr}")
        self.sr = sr

    def before_clip(self) -> None:
        if self.sr:
            add_l1_subgradient(self.model, sparsity_lambda(self.sr, self.epoch, self.epochs))
