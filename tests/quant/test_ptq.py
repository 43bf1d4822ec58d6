import copy

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.quant.activation import StaticQuantizer, input_quantizer
from nncompress.quant.fake import FakeQuant
from nncompress.train import TrainConfig, evaluate, fit
from nncompress.zoo import build_model


@pytest.fixture(scope="module")
def trained_lenet5(digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.in_shape, 10)
    fit(model, digits.train_loader(64), TrainConfig(epochs=4, lr=2e-3, optimizer="adam"), progress=False, log=lambda s: None)
    return model.eval()


def test_batchnorm_folding_keeps_outputs(digits):
    torch.manual_seed(0)
    model = build_model("resnet20", digits.in_shape, 10)
    fit(model, digits.train_loader(64), TrainConfig(epochs=1, lr=0.05), progress=False, log=lambda s: None)
    model.eval()
    x = digits.test_x[:16]
    before = model(x)
    folded = nc.fold_batchnorm_(model)
    assert len(folded) == 1 + 9 * 2 + 2 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


def test_w8a8_static_ptq_is_close_to_float(trained_lenet5, digits):
    float_acc = evaluate(trained_lenet5, digits.test_loader())["accuracy"]
    quant = quantize_copy(trained_lenet5, nc.LinearQuant(weight_bits=8, act_bits=8), calibration_batches(digits))
    assert isinstance(input_quantizer(quant.conv1), StaticQuantizer) and quant.conv1.input_quantizer.scale.numel() == 1
    assert abs(evaluate(quant, digits.test_loader())["accuracy"] - float_acc) <= 0.01
    x = digits.test_x[:64]
    assert torch.nn.functional.cosine_similarity(quant(x).flatten(), trained_lenet5(x).flatten(), dim=0) > 0.999


def test_w2_per_tensor_hurts_and_layer_bits_override(trained_lenet5, digits):
    calib = calibration_batches(digits)
    low = quantize_copy(trained_lenet5, nc.LinearQuant(weight_bits=2, act_bits=None, granularity="tensor"), calib)
    mixed = quantize_copy(trained_lenet5, nc.LinearQuant(weight_bits=2, act_bits=None, granularity="tensor",
                                                         layer_bits={"conv1": 8}), calib)
    assert mixed.conv1.parametrizations.weight[0].spec.bits == 8 and mixed.fc1.parametrizations.weight[0].spec.bits == 2
    assert len(torch.unique(low.fc1.weight)) <= 3
    assert evaluate(low, digits.test_loader())["accuracy"] < evaluate(trained_lenet5, digits.test_loader())["accuracy"]


def test_int32_bias_uses_weight_times_input_scale(trained_lenet5, digits):
    quant = quantize_copy(trained_lenet5, nc.LinearQuant(weight_bits=8, act_bits=8), calibration_batches(digits))
    layer, act = quant.fc1, quant.fc1.input_quantizer
    fq = layer.parametrizations.weight[0]
    bias_scale = fq.scale.flatten() * act.scale
    float_bias = layer.parametrizations.bias.original
    x = torch.randn(3, 200).clamp(min=0)
    x_q = (torch.clamp(torch.round(x / act.scale) + act.zero_point, 0, 255) - act.zero_point) * act.scale
    expected = x_q @ layer.weight.t() + torch.round(float_bias / bias_scale) * bias_scale
    torch.testing.assert_close(layer(x), expected)


def test_static_ptq_needs_data_and_weight_only_does_not():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="needs calibration data"):
        nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8))
    nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=None))
    assert isinstance(net[0].parametrizations.weight[0], FakeQuant)


def test_quantize_on_top_of_pruning_keeps_zeros_and_remove_restores(digits):
    torch.manual_seed(0)
    net = build_model("lenet300", digits.in_shape, 10).eval()
    reference = copy.deepcopy(net)
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.8))
    nc.quantize_(net, nc.DynamicQuant(weight_bits=4, per_token=True))
    assert (net.fc1.weight == 0).float().mean() >= 0.8
    nc.remove_quantization_(net)
    nc.prune_(reference, nc.MagnitudePrune(sparsity=0.8))
    x = digits.test_x[:8]
    assert torch.equal(net(x), reference(x))


@pytest.mark.parametrize("kwargs,match", [({"weight_bits": 1}, "weight_bits=1"), ({"act_bits": 17}, "act_bits=17"),
                                          ({"granularity": "row"}, "granularity='row'"),
                                          ({"observer": "max"}, "observer='max'")])
def test_bad_quant_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nc.LinearQuant(**kwargs)


def test_per_token_scales_never_vary_along_a_summed_dimension():
    """Per-token scales on a Conv used to vary over (C, H) — reduction dims no integer kernel can
    rescale after the int32 sum. Now: one per row for Linear, one per image for Conv."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 6))
    nc.quantize_(net, nc.DynamicQuant(per_token=True))
    conv_scale, _ = net[0].input_quantizer.qparams(torch.randn(5, 3, 6, 6))
    linear_scale, _ = net[2].input_quantizer.qparams(torch.randn(5, 7, 64))
    assert conv_scale.shape == (5, 1, 1, 1) and linear_scale.shape == (5, 7, 1)


def test_group_wise_weights_keep_a_float_bias():
    """The bias used to be rounded on the first group's scale times S_X, wrong for every other
    group. A group kernel adds the bias after rescaling each group's partial sum: it stays float."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 3))
    layer = net[0]
    bias = layer.bias.detach().clone() + 0.0123
    with torch.no_grad():
        layer.bias.copy_(bias)
    x = torch.randn(16, 8)
    nc.quantize_(net, nc.LinearQuant(weight_bits=4, act_bits=8, granularity="group", group_size=4), data=[x])
    act = layer.input_quantizer
    x_q = (torch.clamp(torch.round(x / act.scale) + act.zero_point, 0, 255) - act.zero_point) * act.scale
    assert torch.equal(layer.bias, bias)
    torch.testing.assert_close(layer(x), x_q @ layer.weight.t() + bias)
