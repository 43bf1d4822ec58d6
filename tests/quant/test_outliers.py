import copy

import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.metrics import sqnr_db
from nncompress.quant.outliers import channel_outlier_ratio, inject_outlier_channels_
from nncompress.zoo import build_model


def model_and_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4))
    x = torch.randn(256, 8, 32)
    return net, [(x[i : i + 64], None) for i in range(0, 256, 64)], x


def test_injection_preserves_the_function_and_creates_outliers():
    net, calib, x = model_and_data()
    before = net(x)
    inject_outlier_channels_(net[0], [net[1]], [2, 9], 30.0)
    torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-5)
    assert channel_outlier_ratio(net, ["1"], calib)["1"] > 20


def test_smoothquant_and_per_token_beat_per_tensor_on_outliers():
    net, calib, x = model_and_data()
    inject_outlier_channels_(net[0], [net[1]], [2, 9], 30.0)
    reference = net(x)
    errors = {}
    for name, method in [("tensor", nc.LinearQuant(weight_bits=8, act_bits=6, targets=nc.Select(types=("Linear",)))),
                         ("token", nc.DynamicQuant(weight_bits=8, act_bits=6, per_token=True)),
                         ("smooth", nc.SmoothQuant(alpha=0.5, act_bits=6))]:
        q = nc.quantize_(copy.deepcopy(net), method, data=calib)
        errors[name] = sqnr_db(reference, q(x))
    assert errors["smooth"] > errors["tensor"] + 6, errors
    assert errors["token"] > errors["tensor"], errors


def test_smoothing_alone_is_exact_at_16_bits():
    net, calib, x = model_and_data()
    q = nc.quantize_(copy.deepcopy(net), nc.SmoothQuant(alpha=0.8, weight_bits=16, act_bits=16), data=calib)
    assert sqnr_db(net(x), q(x)) > 60


def test_tiny_vit_linears_are_all_selectable():
    net = build_model("tiny_vit", (1, 28, 28), 10)
    names = list(nc.Select(types=("Linear",)).layers(net))
    assert len(names) == 1 + 2 * 6 + 1 and "blocks.1.attn.q" in names
