"""grn: GRN against DeployGRN (``x * (gamma * N + 1) + beta`` through GlobalAveragePool, ``+ beta``
as unit 1x1 depthwise convs per stream), in PyTorch and ONNX Runtime, parameterised over the
streams, the spatial size and the input scale (eps only matters for small inputs)."""

import numpy as np
import pytest
import torch
from random_weights import randomise
from rewrite_parity import onnx_outputs

from glimmer.export.rewrites.grn import DeployGRN
from glimmer.models.layers import GRN

SIZES = [[8], [3, 5], [2, 4, 2]]
SPATIAL = [(7, 7), (4, 6), (1, 1)]


def grn_pair(sizes, spatial):
    grn = randomise(GRN(sum(sizes)), seed=len(sizes))
    return grn, DeployGRN(grn, spatial, sizes).eval()


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_deploy_grn_matches_grn(sizes, spatial, scale):
    grn, deployed = grn_pair(sizes, spatial)
    x = scale * torch.randn(2, sum(sizes), *spatial)
    with torch.no_grad():
        want = grn(x)
        y, streams = deployed(x)
    tol = {"atol": 1e-6 * scale, "rtol": 1e-5}
    torch.testing.assert_close(y, want, **tol)
    assert [s.shape[1] for s in streams] == sizes
    torch.testing.assert_close(torch.cat(streams, dim=1), want, **tol)

    (onnx_y, *onnx_streams), hist = onnx_outputs(deployed, [x])
    np.testing.assert_allclose(onnx_y, want.numpy(), atol=1e-6 * scale, rtol=1e-5)
    np.testing.assert_allclose(
        np.concatenate(onnx_streams, axis=1), want.numpy(), atol=1e-6 * scale, rtol=1e-5
    )
    # GlobalAveragePool, not ReduceL2; one unit conv per stream, one Split only with several streams
    assert "ReduceL2" not in hist and hist["GlobalAveragePool"] == 1 and hist["Sqrt"] == 1
    assert hist["Conv"] == len(sizes) and hist.get("Split", 0) == (len(sizes) > 1)


def test_shifts_are_unit_depthwise_convs_carrying_beta():
    grn, deployed = grn_pair([2, 4, 2], (5, 5))
    beta = grn.beta.detach().flatten()
    assert [s.in_channels for s in deployed.shifts] == [2, 4, 2]
    for shift, part in zip(deployed.shifts, torch.split(beta, [2, 4, 2])):
        assert shift.groups == shift.in_channels and shift.kernel_size == (1, 1)
        assert torch.equal(shift.weight, torch.ones_like(shift.weight)) and torch.equal(
            shift.bias, part
        )


def test_eps_is_scaled_for_the_spatial_size():
    grn, deployed = grn_pair([8], (4, 9))
    assert deployed.eps == pytest.approx(grn.eps / 6)


@pytest.mark.parametrize("sizes", [[4, 3], [8, 0], [9]])
def test_stream_sizes_must_partition_the_channels(sizes):
    with pytest.raises(ValueError, match="do not partition 8 channels"):
        DeployGRN(GRN(8), (4, 4), sizes)
