"""Channel-wise knowledge distillation (CWD) for dense prediction (Shu et al., ICCV 2021).

Each channel's H*W activation map becomes a distribution over spatial positions,
``p_c = softmax(y_c / tau)``, and the student matches the teacher channel by channel:

    L_cwd = tau^2 / (N * C) * sum_{n, c} KL(p^T_{n,c} || p^S_{n,c})

(the paper's ``tau^2 / C * sum_c``, averaged over the batch). The compression paper distils the
unpruned YOLOv8 (teacher) into the pruned one (student) on the neck C2f outputs (layers 12, 15,
18, 21) with tau = 6 and alpha = 0.5. The pruned student is narrower, so a learnable 1x1 conv per
level maps student channels to teacher channels; it is trained with the student and discarded
afterwards (it lives here, never inside the student model).
"""

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def cwd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float = 6.0) -> torch.Tensor:
    """CWD between two (N, C, H, W) maps of equal shape; the teacher side carries no gradient."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"CWD needs equal shapes, got student {tuple(student.shape)} and "
            f"teacher {tuple(teacher.shape)}"
        )
    n, c, h, w = student.shape
    # float32: softmax over thousands of positions at tau=6 under fp16 autocast loses the tail
    s = student.float().reshape(n * c, h * w) / tau
    t = teacher.detach().float().reshape(n * c, h * w) / tau
    p_t = F.softmax(t, dim=1)
    kl = (p_t * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum(dim=1)
    return kl.sum() * (tau**2) / (n * c)


class ChannelWiseDistiller(nn.Module):
    """The alignment convs (student width -> teacher width) and the summed CWD over levels."""

    def __init__(
        self, student_channels: Sequence[int], teacher_channels: Sequence[int], tau: float = 6.0
    ) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError("one teacher level per student level")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.tau = float(tau)
        self.align = nn.ModuleList(
            nn.Conv2d(cs, ct, kernel_size=1) for cs, ct in zip(student_channels, teacher_channels)
        )

    def forward(
        self, student_feats: List[torch.Tensor], teacher_feats: List[torch.Tensor]
    ) -> torch.Tensor:
        total = student_feats[0].new_zeros((), dtype=torch.float32)
        for conv, s, t in zip(self.align, student_feats, teacher_feats):
            total = total + cwd_loss(conv(s.to(conv.weight.dtype)), t, self.tau)
        return total


class FeatureTap:
    """Forward hooks that keep the latest output of chosen top-level layers of a YOLO model."""

    def __init__(self, model: nn.Module, layers: Sequence[int]) -> None:
        self.layers = list(layers)
        self.feats: Dict[int, torch.Tensor] = {}
        self._handles = [model.model[i].register_forward_hook(self._hook(i)) for i in self.layers]

    def _hook(self, i: int):
        def hook(module, inputs, output):
            self.feats[i] = output

        return hook

    def take(self) -> List[torch.Tensor]:
        """The captured features in layer order; cleared so a stale map is never reused."""
        missing = [i for i in self.layers if i not in self.feats]
        if missing:
            raise RuntimeError(f"no features captured for layers {missing}")
        out = [self.feats[i] for i in self.layers]
        self.feats = {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
