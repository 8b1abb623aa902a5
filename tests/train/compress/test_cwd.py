"""Channel-wise distillation loss (Shu et al. 2021): value, zero point, gradient flow."""

import math

import pytest
import torch
from torch import nn

from glimmer.train.compress.cwd import ChannelWiseDistiller, FeatureTap, cwd_loss


def test_cwd_matches_a_hand_computed_value():
    # channel 0: teacher softmax [1/4, 3/4] vs student [1/2, 1/2]; channel 1: identical maps
    teacher = torch.tensor([[[[0.0, math.log(3.0)]], [[1.0, 2.0]]]])
    student = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert cwd_loss(student, teacher, tau=1.0).item() == pytest.approx(kl / 2, rel=1e-6)
    # tau = 2 on doubled logits gives the same distributions, scaled by tau^2
    assert cwd_loss(2 * student, 2 * teacher, tau=2.0).item() == pytest.approx(4 * kl / 2, rel=1e-6)


def test_cwd_averages_over_batch_and_channels():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 5, 6, generator=g), torch.randn(3, 4, 5, 6, generator=g)
    per_map = [
        cwd_loss(s[i : i + 1, c : c + 1], t[i : i + 1, c : c + 1], 6.0)
        for i in range(3)
        for c in range(4)
    ]
    assert cwd_loss(s, t, 6.0).item() == pytest.approx(torch.stack(per_map).mean().item(), rel=1e-5)


def test_cwd_is_zero_for_identical_features():
    x = torch.randn(2, 8, 7, 7)
    assert cwd_loss(x, x.clone(), tau=6.0).item() == pytest.approx(0.0, abs=1e-7)
    assert cwd_loss(torch.randn(2, 8, 7, 7), x, tau=6.0).item() > 0


def test_cwd_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="equal shapes"):
        cwd_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))


def test_gradient_reaches_alignment_convs_and_student_but_not_teacher():
    torch.manual_seed(0)
    student = nn.Conv2d(3, 4, 3, padding=1)
    teacher = nn.Conv2d(3, 8, 3, padding=1)
    distiller = ChannelWiseDistiller([4], [8], tau=6.0)
    x = torch.randn(2, 3, 6, 6)
    loss = distiller([student(x)], [teacher(x)])
    loss.backward()
    assert loss.item() > 0
    assert distiller.align[0].weight.grad.abs().sum() > 0
    assert distiller.align[0].bias.grad is not None
    assert student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None  # the teacher side is detached


def test_distiller_sums_levels():
    torch.manual_seed(0)
    d = ChannelWiseDistiller([2, 3], [4, 5], tau=2.0)
    s = [torch.randn(1, 2, 4, 4), torch.randn(1, 3, 2, 2)]
    t = [torch.randn(1, 4, 4, 4), torch.randn(1, 5, 2, 2)]
    want = sum(cwd_loss(conv(a), b, 2.0) for conv, a, b in zip(d.align, s, t))
    assert d(s, t).item() == pytest.approx(want.item(), rel=1e-6)


def test_feature_tap_captures_named_layers_once():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            return self.model(x)

    net = Net()
    tap = FeatureTap(net, [0, 2])
    net(torch.randn(1, 3, 5, 5))
    feats = tap.take()
    assert [f.shape[1] for f in feats] == [4, 2]
    with pytest.raises(RuntimeError, match="no features captured"):
        tap.take()
    tap.remove()
    net(torch.randn(1, 3, 5, 5))
    assert tap.feats == {}
