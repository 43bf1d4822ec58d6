"""Batch-norm folding finds Conv -> BatchNorm pairs in any model's traced graph and keeps its function."""
import torch
from torch import nn

import nncompress as nc


class Block(nn.Module):
    """torchvision style: modules are attributes, the wiring is in forward."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False)
        self.shared = nn.Conv2d(8, 8, 1)
        self.bn_shared = nn.BatchNorm2d(8)
        self.tap, self.bn_tap = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.seq = nn.Sequential(nn.Conv1d(8, 4, 3), nn.BatchNorm1d(4), nn.ReLU())
        self.head, self.bn_head = nn.Linear(16, 5), nn.BatchNorm1d(5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = self.bn_shared(self.shared(self.shared(x)))  # a conv called twice: its weights serve two sites
        t = self.tap(x)
        x = self.bn_tap(t) + t  # the conv output is read twice: folding would change the second read
        x = self.seq(x.mean(-1))  # (N, 8, H) -> Conv1d -> BatchNorm1d
        return self.bn_head(self.head(x.flatten(1)))


def randomized_statistics(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.normal_()
                    m.bias.normal_()
    return model.eval()


def test_folds_attribute_style_pairs_and_leaves_unsafe_ones():
    model = randomized_statistics(Block())
    x = torch.randn(4, 3, 6, 6)
    before = model(x)
    assert sorted(nc.fold_batchnorm_(model)) == ["conv1", "conv2", "seq.0"]
    assert isinstance(model.bn1, nn.Identity) and isinstance(model.seq[1], nn.Identity)
    assert isinstance(model.bn_shared, nn.BatchNorm2d) and isinstance(model.bn_tap, nn.BatchNorm2d)
    assert isinstance(model.bn_head, nn.BatchNorm1d)  # Linear + BatchNorm1d is not folded (see fold.py)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.body(x)
        return self.body(-x)


def test_untraceable_models_fall_back_to_sequential_neighbours():
    model = randomized_statistics(Untraceable())
    x = torch.randn(2, 1, 5, 5)
    before = model(x)
    assert nc.fold_batchnorm_(model) == ["body.0"]
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


def test_folding_twice_is_a_no_op():
    model = randomized_statistics(Block())
    nc.fold_batchnorm_(model)
    assert nc.fold_batchnorm_(model) == []
