"""The |gamma| statistics that say whether the layer-wise prune is safe, on models with known
gammas, and the warning that comes before pruning."""

import numpy as np
import pytest
import torch
from torch import nn

from glimmer.train.compress import gammas
from glimmer.train.compress.yolo import build_detector, save_detector


@pytest.fixture
def v8n():
    return build_detector("yolov8n.yaml", nc=2).eval()


def _set(model, fn):
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = fn(name, m.num_features).float()


def test_well_separated_gammas_are_cut_at_near_zero_and_pass(v8n):
    # every other channel at 0.001, the rest at 1: the prune removes exactly the near-zero half
    _set(v8n, lambda _, n: torch.tensor([1e-3 if i % 2 == 0 else 1.0 for i in range(n)]))
    layers = gammas.layer_gammas(v8n, 0.5)
    assert len(layers) > 40
    for la in layers:
        assert la.pruned == la.channels // 2, la
        assert la.near_zero == pytest.approx(0.5)
        assert la.pruned_max == pytest.approx(1e-3) and la.kept_median == pytest.approx(1.0)
        assert la.gap == pytest.approx(1e-3)
    stats = gammas.summarize(layers)
    assert stats["near_zero"] == pytest.approx(0.5) and stats["layers_far"] == 0
    assert gammas.prune_warning(stats) is None


def test_untrained_gammas_warn_and_say_what_to_change(v8n):
    stats = gammas.summarize(gammas.layer_gammas(v8n, 0.5))  # a fresh model: every gamma is 1
    assert stats["near_zero"] == 0.0 and stats["gap_median"] == pytest.approx(1.0)
    assert stats["layers_far"] == stats["layers"] > 40
    warning = gammas.prune_warning(stats)
    assert warning.startswith("warning: ") and "\n" not in warning
    assert f"in {stats['layers']} of {stats['layers']} layers" in warning
    assert "train the sparse stage longer (--epochs) or raise the penalty (--sr)" in warning


def test_per_layer_figures_are_exact(v8n):
    n = v8n.model[2].cv2.bn.num_features  # a C2f output: a group of its own
    v8n.model[2].cv2.bn.weight.data = torch.arange(1, n + 1, dtype=torch.float32) / n
    # the residual C2f's coupled group: cv1's second half and the bottleneck output, averaged
    c = v8n.model[2].c
    v8n.model[2].cv1.bn.weight.data[c:] = torch.linspace(0.0, 0.2, c)
    v8n.model[2].m[0].cv2.bn.weight.data = torch.linspace(0.0, 0.6, c)
    by_name = {la.name: la for la in gammas.layer_gammas(v8n, 0.5)}
    out = by_name["model.2.cv2"]
    assert (out.channels, out.pruned) == (n, n // 2)
    assert out.pruned_max == pytest.approx((n // 2) / n)
    assert out.kept_median == pytest.approx(np.median(np.arange(n // 2 + 1, n + 1) / n))
    assert out.near_zero == 0.0
    coupled = by_name["model.2.cv1 (+1)"]
    mean = (np.linspace(0.0, 0.2, c) + np.linspace(0.0, 0.6, c)) / 2
    assert coupled.pruned_max == pytest.approx(np.sort(mean)[c // 2 - 1], rel=1e-5)
    assert coupled.kept_median == pytest.approx(np.median(np.sort(mean)[c // 2 :]), rel=1e-5)
    assert coupled.near_zero == pytest.approx(np.mean(mean < gammas.NEAR_ZERO))
    # the stem and the box branch are kept whole by the prune: not counted
    assert not any(la.name.startswith(("model.0", "model.22.cv2")) for la in by_name.values())


def test_prune_cli_prints_the_warning_once_before_pruning(v8n, tmp_path, capsys):
    from glimmer.train import compress_cli

    src = save_detector(v8n, tmp_path / "fresh.pt", {})
    assert compress_cli.main(["prune", "--model", str(src), "--out", str(tmp_path / "p.pt")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(err) == 1 and "--sr" in err[0]


def test_report_writes_the_histogram_png(v8n, tmp_path):
    before = gammas.all_gammas(v8n)
    _set(v8n, lambda _, n: torch.linspace(0.0, 1.0, n))
    gammas.write_epochs(
        tmp_path / gammas.CSV_NAME,
        [dict(epoch=1, near_zero=0.1, gap_median=0.5, layers_far=3, layers=50, **{"lambda": 0.01})],
    )
    stats, (b, a) = gammas.write_report(tmp_path, v8n, 0.5, before=before)
    assert (tmp_path / gammas.PNG_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stats["epochs"] == 1 and b.size == a.size == before.size
    assert np.all(b == 1.0) and a.min() == 0.0
