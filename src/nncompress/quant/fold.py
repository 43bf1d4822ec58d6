"""Batch-norm folding before quantization ("Quantization post training" in "Quantizing neural networks",
Efficient Deep Learning session 2; Jacob et al., CVPR 2018, section 3.2).

A BatchNorm that normalises the output of a convolution becomes part of that layer:
    W' = W g / sqrt(v + eps)  (per output channel),   b' = (b - mu) g / sqrt(v + eps) + beta.
Pairs are found in the traced graph (torch.fx), so `self.conv1` / `self.bn1` attributes of any
model fold, not only neighbours inside an `nn.Sequential`: a BatchNorm folds when its only input is
a layer output that nothing else reads and neither module is called twice. Models fx cannot trace
fall back to adjacent pairs inside `nn.Sequential` containers.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize

#: BatchNorm type -> layer types it folds into. Linear + BatchNorm1d is left out on purpose: on a 3-D
#: input BatchNorm1d normalises dim 1, which is not the Linear's output dimension.
FOLDS_INTO = {nn.BatchNorm1d: (nn.Conv1d,), nn.BatchNorm2d: (nn.Conv2d,), nn.BatchNorm3d: (nn.Conv3d,)}


@torch.no_grad()
def fold_batchnorm_(model: nn.Module) -> list[str]:
    """Fold every foldable BatchNorm into the layer before it (eval-mode statistics); returns those layers."""
    modules = dict(model.named_modules())
    pairs = batchnorm_pairs(model)
    for layer_name, bn_name in pairs:
        _fold_pair(modules[layer_name], modules[bn_name])
        model.set_submodule(bn_name, nn.Identity())
    return [layer_name for layer_name, _ in pairs]


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, BatchNorm) names of every pair `fold_batchnorm_` would fold (fx graph, else Sequential)."""
    pairs = _traced_pairs(model, dict(model.named_modules()))
    return pairs if pairs is not None else _sequential_pairs(model)


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, beta) of an eval-mode BatchNorm y = (x - mu) f + beta: f = g / sqrt(v + eps)."""
    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    return factor, shift


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    kinds = next((v for k, v in FOLDS_INTO.items() if type(bn) is k), ())
    return (type(layer) in kinds and not parametrize.is_parametrized(layer) and bn.track_running_stats
            and bn.running_var is not None and layer.weight.shape[0] == bn.num_features)


def _traced_pairs(model: nn.Module, modules: dict[str, nn.Module]) -> list[tuple[str, str]] | None:
    """(layer, batchnorm) names from the fx graph, or None when the model cannot be traced."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - any tracing failure (data-dependent control flow, ...) means "fall back"
        return None
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs or not isinstance(node.args[0], torch.fx.Node):
            continue
        source = node.args[0]
        if (source.op == "call_module" and len(source.users) == 1 and calls[node.target] == calls[source.target] == 1
                and _foldable(modules[source.target], modules[node.target])):
            pairs.append((source.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.Sequential):
            children = list(parent.named_children())
            prefix = f"{parent_name}." if parent_name else ""
            pairs += [(prefix + a, prefix + b) for (a, layer), (b, bn) in zip(children, children[1:])
                      if _foldable(layer, bn)]
    return pairs


def _fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    factor, shift = batchnorm_affine(bn)
    layer.weight.mul_(factor.view(-1, *[1] * (layer.weight.dim() - 1)))
    bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    layer.bias = nn.Parameter(((bias - bn.running_mean) * factor + shift).detach().clone())
