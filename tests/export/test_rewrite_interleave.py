"""interleave: FeatureMapsRecomb + interleave (and the Aggregator around them) against the constant
Reshape/Transpose/Concat chain, in PyTorch and ONNX Runtime with a dynamic batch, parameterised over
channels, groups, recombination on/off and the spatial size."""

import numpy as np
import pytest
import torch
from random_weights import randomise
from rewrite_parity import onnx_outputs

from glimmer.export.onnx_export import CRUFT_OPS
from glimmer.export.rewrites.interleave import DeployAggregator, RecombInterleave
from glimmer.models.glimmernet import Aggregator, FeatureMapsRecomb, mixed_concat

CASES = [(8, 4, True), (8, 4, False), (12, 3, True), (6, 2, False), (6, 1, True)]
SPATIAL = [(5, 7), (1, 1)]


def reference(x, dense, groups, recombine):
    return mixed_concat(FeatureMapsRecomb(groups)(x) if recombine and groups > 1 else x, dense)


@pytest.mark.parametrize("channels,groups,recombine", CASES)
@pytest.mark.parametrize("spatial", SPATIAL)
def test_recomb_interleave_matches_recomb_then_mixed_concat(channels, groups, recombine, spatial):
    mix = RecombInterleave(channels, groups, recombine, spatial)
    x, dense = torch.randn(1, channels, *spatial), torch.randn(1, channels, *spatial)
    batch_x, batch_dense = torch.randn(3, channels, *spatial), torch.randn(3, channels, *spatial)
    want = reference(batch_x, batch_dense, groups, recombine)
    assert torch.equal(mix(batch_x, batch_dense), want)  # a permutation: bit-exact

    (out,), hist = onnx_outputs(mix, [x, dense], dynamic_batch=True, run_on=[batch_x, batch_dense])
    np.testing.assert_array_equal(out, want.numpy())
    assert not any(op in hist for op in CRUFT_OPS)
    assert set(hist) <= {"Reshape", "Transpose", "Concat"}
    assert hist.get("Transpose", 0) == (recombine and groups > 1)


@pytest.mark.parametrize("channels,groups,recombine", CASES)
@pytest.mark.parametrize("pw_group_inputs", [2, 4])
def test_deploy_aggregator_matches_aggregator(channels, groups, recombine, pw_group_inputs):
    agg = randomise(
        Aggregator(channels, 2 * channels, groups, recombine, pw_group_inputs), seed=channels
    )
    spatial = (6, 5)
    deployed = DeployAggregator(agg, spatial).eval()
    assert deployed.mix.recombine == (recombine and groups > 1)
    x, dense = 3 * torch.randn(1, channels, *spatial), 3 * torch.randn(1, channels, *spatial)
    batch_x, batch_dense = (
        3 * torch.randn(3, channels, *spatial),
        3 * torch.randn(3, channels, *spatial),
    )
    with torch.no_grad():
        want = agg(batch_x, batch_dense)
        torch.testing.assert_close(deployed(batch_x, batch_dense), want, atol=1e-5, rtol=1e-5)
    (out,), hist = onnx_outputs(
        deployed, [x, dense], dynamic_batch=True, run_on=[batch_x, batch_dense]
    )
    np.testing.assert_allclose(out, want.numpy(), atol=1e-5)
    assert hist["Conv"] == 1 and hist["Clip"] == 1 and "BatchNormalization" not in hist
    assert not any(op in hist for op in CRUFT_OPS)
