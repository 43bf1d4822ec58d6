"""Shared by the structured-pruning tests: models whose BatchNorms look trained."""
import torch
from torch import nn


def trained_like(model: nn.Module) -> nn.Module:
    """Random BatchNorm statistics and affine terms, so a pruned channel that were not masked in the
    BatchNorm would not be zero."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()
