"""Non-trivial weights for export tests: BN statistics and GRN parameters that are not
identities."""

import torch
from torch import nn


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and GRN parameters, so folding and GRN are really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            if hasattr(m, "gamma") and hasattr(m, "beta"):
                m.gamma.copy_(0.3 * torch.randn(m.gamma.shape, generator=gen))
                m.beta.copy_(0.1 * torch.randn(m.beta.shape, generator=gen))
    return module.eval()
