"""LQ-Nets (quant/lqnet.py): levels v^T b, QEM recovering a known basis, per-channel weight bases,
calibrated activation bases refined after each step, K-bit storage."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.config import Context
from nncompress.parametrize import transforms
from nncompress.quant.lqnet import LQActivation, LQNet, bit_matrix, initial_basis, levels, qem_step


def test_levels_are_basis_dot_bits():
    basis = torch.tensor([0.5, 1.0])
    assert levels(basis, True).tolist() == [-1.5, -0.5, 0.5, 1.5]  # codes 0..3: b = (+-1, +-1)
    assert levels(basis, False).tolist() == [0.0, 0.5, 1.0, 1.5]
    assert bit_matrix(3, False).shape == (8, 3)


def test_qem_recovers_a_basis_from_its_own_levels():
    torch.manual_seed(0)
    true = torch.tensor([0.3, 1.1])
    x = levels(true, True)[torch.randint(0, 4, (1, 500))] + 0.01 * torch.randn(1, 500)
    fitted = initial_basis(x, 2, signed=True)
    assert sorted(fitted[0].abs().tolist()) == pytest.approx([0.3, 1.1], abs=0.01)


def test_qem_never_increases_the_quantization_error():
    torch.manual_seed(1)
    x = torch.randn(3, 2000)
    basis = initial_basis(x, 2, signed=True, rounds=0)
    errors = []
    for _ in range(6):
        table = levels(basis, True)
        q = table.gather(1, (x.unsqueeze(-1) - table.unsqueeze(1)).abs().argmin(-1))
        errors.append(float(((x - q) ** 2).sum()))
        basis = qem_step(x, basis, True)
    assert all(b <= a + 1e-4 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


def test_weights_use_one_basis_per_output_channel_and_store_k_bits():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 6))
    nc.apply_(net, LQNet(weight_bits=2))
    for row in net[0].weight:
        assert len(torch.unique(row)) <= 4
    x = torch.randn(2, 64)
    before = net(x)
    nc.convert_(net)
    assert torch.equal(net(x), before)
    assert net.state_dict()["0.parametrizations.weight.original"].numel() == 64 * 6 * 2 // 8


def test_activation_basis_is_calibrated_and_refined_after_backward():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [(torch.randn(32, 8), None)]
    nc.apply_(net, LQNet(weight_bits=2, act_bits=2), data=data)
    quantizer = net[2].input_quantizer
    assert isinstance(quantizer, LQActivation) and not bool(quantizer.signed)  # ReLU outputs: {0, 1} codes
    assert not hasattr(net[0], "input_quantizer")
    x = torch.relu(torch.randn(64, 16))
    assert len(torch.unique(quantizer(x))) <= 4
    before = quantizer.basis.clone()
    net(torch.randn(32, 8)).sum().backward()
    assert not torch.equal(quantizer.basis, before)
    weight_basis = transforms(net[0])[0].basis
    assert weight_basis.shape == (16, 2)


def test_activation_bits_need_data():
    with pytest.raises(nc.UserError, match="needs calibration data"):
        nc.apply_(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), LQNet(act_bits=2))
    with pytest.raises(nc.UserError, match="weight_bits=0 must be an integer in"):
        LQNet(weight_bits=0)
