"""BatchNorm folded after QAT into LSQ's per-channel grids (quant/fold_trained.py)."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.quant.convert import convert_
from nncompress.quant.fold import batchnorm_pairs
from nncompress.quant.fold_trained import fold_trained_batchnorm_
from nncompress.quant.lsq import LSQ
from nncompress.validate import UserError


def _net_with_trained_bn(gamma_sign: float = 1.0) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    for bn in (net[1], net[4]):
        bn.weight.data = gamma_sign * (0.5 + torch.rand(bn.num_features))
        bn.bias.data = torch.randn(bn.num_features) * 0.1
        bn.running_mean = torch.randn(bn.num_features) * 0.2
        bn.running_var = 0.5 + torch.rand(bn.num_features)
    return net.eval()


def _quantized(net: nn.Module, bits: int = 2, granularity: str = "channel") -> nn.Module:
    calib = [torch.randn(16, 3, 10, 10)]
    return nc.apply_(net, LSQ(weight_bits=bits, act_bits=bits, granularity=granularity), data=calib)


def test_fold_after_qat_keeps_the_grid_and_the_outputs():
    net = _net_with_trained_bn()
    pairs = batchnorm_pairs(net)
    assert pairs == [("0", "1"), ("3", "4")]
    _quantized(net)
    x = torch.randn(32, 3, 10, 10)
    before = net[1](net[0](x))
    hidden = net[2](before).detach()
    before_biased = net[4](net[3](hidden))  # layer 3 has a bias of its own, already on its int32 grid
    codes_before = net[0].parametrizations.weight[0].codes(net[0].parametrizations.weight.original)
    report = fold_trained_batchnorm_(net, pairs)
    assert report == {"layers": ["0", "3"], "clamped_codes": 0}
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.Identity)
    grid = net[0].parametrizations.weight[0]
    assert torch.equal(grid.codes(net[0].parametrizations.weight.original), codes_before)  # codes unchanged
    codes = torch.unique(net[0].weight.detach() / grid.scale)
    assert torch.allclose(codes, codes.round(), atol=1e-5) and codes.min() >= -2 and codes.max() <= 1
    # the layer now computes BN(conv(x)) but for its bias, rounded onto the int32 grid S_W S_X:
    # at most half a bias step per channel
    bias_step = net[0].parametrizations.bias[0].scale.view(1, -1, 1, 1)
    assert ((net[0](x) - before).abs() <= bias_step / 2 + 1e-5).all()
    bias_step = net[3].parametrizations.bias[0].scale.view(1, -1, 1, 1)
    assert ((net[3](hidden) - before_biased).abs() <= bias_step / 2 + 1e-5).all()
    probe = net(x)
    convert_(net)
    assert torch.equal(net(x), probe)


def test_negative_gamma_negates_codes_and_counts_the_clamped_ones():
    net = _net_with_trained_bn(gamma_sign=-1.0)
    pairs = batchnorm_pairs(net)
    _quantized(net)
    net[0].parametrizations.weight[0].step.data *= 0.3  # a finer grid: some codes at -Q_N = -2
    codes_before = net[0].parametrizations.weight[0].codes(net[0].parametrizations.weight.original)
    report = fold_trained_batchnorm_(net, pairs)
    codes_after = net[0].parametrizations.weight[0].codes(net[0].parametrizations.weight.original)
    assert report["clamped_codes"] >= int((codes_before == -2).sum()) > 0
    assert torch.equal(codes_after, torch.clamp(-codes_before, -2, 1))


def test_per_tensor_grid_is_refused_with_the_layer_named():
    net = _net_with_trained_bn()
    pairs = batchnorm_pairs(net)
    _quantized(net, granularity="tensor")
    with pytest.raises(UserError, match="layer '0'.*one step per output channel"):
        fold_trained_batchnorm_(net, pairs)


def test_a_layer_without_a_learned_grid_is_refused_by_name():
    net = _net_with_trained_bn()
    pairs = batchnorm_pairs(net)
    with pytest.raises(UserError, match="layer '0'.*no transform"):
        fold_trained_batchnorm_(net, pairs)
