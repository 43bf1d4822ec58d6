"""Model zoo. Every factory takes `in_shape` (C, H, W) and `num_classes`, so one name fits every dataset.

- `lenet300`: the 784-300-100-10 MLP of LeCun et al. 1998, as pruned in Han et al. 2015, with
  dropout (0.1 on the input, 0.2 on the hidden layers; no parameters, same MACs): on the 8,000-image
  mnist-10k split it lifts the dense baseline and lets pruning retrain with Han's sqrt-rescaled
  dropout (benchmarks/results/pruning.md).
- `lenet5`: Caffe's LeNet-5 (conv 20 5x5, pool, conv 50 5x5, pool, fc 500, fc 10), with a ReLU after
  each pool as well (Caffe has one only after fc 500; MACs are the same). Inputs under 28 px get
  padding 2 so the 8x8 digits still fit. `dropout` (default 0) sits before each fully connected layer.
- `resnet20`: He et al. 2016's CIFAR ResNet (3 stages x 3 basic blocks, 16/32/64 channels),
  1x1-conv projection shortcuts, global average pooling: any input size.
- `vgg_small`: a VGG-style stack (conv-BN-ReLU x2, pool) x3 with 32/64/128 channels.
- `mobilenetv2_small`: MobileNetV2 inverted residual blocks (Sandler et al. 2018), width for small images.
- `tiny_vit`: a 2-block Vision Transformer encoder over 16 patches, every projection an nn.Linear.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from ..validate import unknown_name_error
from .transformer import tiny_vit


def lenet300(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, dropout: float = 0.2,
             input_dropout: float = 0.1) -> nn.Module:
    in_features = int(torch.Size(in_shape).numel())
    return nn.Sequential(OrderedDict(
        flatten=nn.Flatten(), drop0=nn.Dropout(input_dropout), fc1=nn.Linear(in_features, 300), relu1=nn.ReLU(),
        drop1=nn.Dropout(dropout), fc2=nn.Linear(300, 100), relu2=nn.ReLU(), drop2=nn.Dropout(dropout),
        fc3=nn.Linear(100, num_classes)))


def lenet5(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    pad = 0 if min(in_shape[1:]) >= 28 else 2
    features = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(in_shape[0], 20, 5, padding=pad), pool1=nn.MaxPool2d(2), relu1=nn.ReLU(),
        conv2=nn.Conv2d(20, 50, 5, padding=pad), pool2=nn.MaxPool2d(2), relu2=nn.ReLU(), flatten=nn.Flatten()))
    flat = features(torch.zeros(1, *in_shape)).shape[1]
    return nn.Sequential(OrderedDict(
        **dict(features.named_children()), drop1=nn.Dropout(dropout), fc1=nn.Linear(flat, 500), relu3=nn.ReLU(),
        drop2=nn.Dropout(dropout), fc2=nn.Linear(500, num_classes)))


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> optional ReLU: the unit that BN folding and slimming act on."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1, relu=False)
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out
                         else conv_bn(c_in, c_out, 1, stride, relu=False))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet20(in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    blocks: list[nn.Module] = [conv_bn(in_shape[0], 16)]
    c_in = 16
    for stage, width in enumerate((16, 32, 64)):
        for i in range(3):
            blocks.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1))
            c_in = width
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


def vgg_small(in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    c_in = in_shape[0]
    for width in (32, 64, 128):
        layers += [conv_bn(c_in, width), conv_bn(width, width), nn.MaxPool2d(2, ceil_mode=True)]
        c_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6):
        super().__init__()
        hidden = c_in * expand
        self.use_residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(conv_bn(c_in, hidden, 1), conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                   conv_bn(hidden, c_out, 1, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


def mobilenetv2_small(in_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> nn.Module:
    settings = ((16, 1, 1), (24, 2, 1), (24, 1, 1), (32, 2, 2), (32, 1, 1), (64, 2, 2), (64, 1, 1))
    layers: list[nn.Module] = [conv_bn(in_shape[0], 16)]
    c_in = 16
    for c_out, expand, stride in settings:
        layers.append(InvertedResidual(c_in, c_out, stride, expand))
        c_in = c_out
    layers += [conv_bn(c_in, 256, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, num_classes)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300, "lenet5": lenet5, "resnet20": resnet20,
    "vgg_small": vgg_small, "mobilenetv2_small": mobilenetv2_small, "tiny_vit": tiny_vit,
}


def build_model(name: str, in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a zoo model by name for inputs of shape `in_shape` and `num_classes` outputs."""
    if name not in MODELS:
        raise unknown_name_error("model", name, MODELS)
    return MODELS[name](tuple(in_shape), num_classes)
