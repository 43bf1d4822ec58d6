"""Physical shrinking: the shrunk model computes what the masked model computed, with fewer
parameters and MACs, across residual adds and depthwise convs."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.metrics import count_params, total_macs
from nncompress.prune.shrink import shrink_, shrink_summary
from nncompress.prune.structured import ChannelPrune, InputChannelPrune
from nncompress.validate import UserError
from nncompress.zoo import build_model
from bn_stats import trained_like

SHAPE = (1, 16, 16)


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2_small", "vgg_small"])
def test_shrunk_equals_masked_with_fewer_params_and_macs(arch):
    torch.manual_seed(0)
    model = trained_like(build_model(arch, SHAPE, 10))
    x = torch.randn(8, *SHAPE)
    nc.prune_(model, ChannelPrune(sparsity=0.3), data=[x])
    masked_out = model(x)
    macs, params = total_macs(model, SHAPE), count_params(model)
    shrink_(model, x)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # plain dense layers
    assert torch.allclose(model(x), masked_out, atol=1e-5, rtol=1e-4)
    assert total_macs(model, SHAPE) < 0.6 * macs and count_params(model) < 0.6 * params
    model.train()
    model(x).sum().backward()  # still an nn.Module that trains


def test_resnet20_residual_stage_loses_the_same_channels_everywhere():
    torch.manual_seed(0)
    model = trained_like(build_model("resnet20", SHAPE, 10))
    x = torch.randn(4, *SHAPE)
    nc.prune_(model, ChannelPrune(sparsity=0.25), data=[x])
    shrink_(model, x)
    stage1 = [model[0][0], model[1].conv2[0], model[2].conv2[0], model[3].conv2[0]]
    assert [c.out_channels for c in stage1] == [12] * 4
    assert model[1].conv1[0].in_channels == 12 and model[0][1].num_features == 12
    assert model[4].shortcut[0].in_channels == 12 and model[4].conv1[0].in_channels == 12
    assert model[-1].in_features == 48  # 64 - 16: the last stage feeds the classifier


def test_mobilenet_depthwise_convs_follow_their_expansion():
    torch.manual_seed(0)
    model = trained_like(build_model("mobilenetv2_small", SHAPE, 10))
    x = torch.randn(4, *SHAPE)
    nc.prune_(model, ChannelPrune(sparsity=0.5), data=[x])
    shrink_(model, x)
    block = model[2].block  # expand 16 -> 32 (x2), depthwise 32, project 32 -> 24; half of each kept
    assert (block[0][0].in_channels, block[0][0].out_channels) == (8, 16)
    dw = block[1][0]
    assert dw.in_channels == dw.out_channels == dw.groups == 16 and dw.weight.shape == (16, 1, 3, 3)
    assert (block[2][0].in_channels, block[2][0].out_channels) == (16, 12)


def test_shrink_counts_on_a_plain_convnet():
    torch.manual_seed(0)
    net = trained_like(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)))
    x = torch.randn(3, 1, 4, 4)
    nc.prune_(net, ChannelPrune(sparsity=0.5), data=[x])
    before = net(x)
    assert shrink_summary(net, x) == [{"producers": ["0"], "channels": 8, "kept": 4},
                                      {"producers": ["3"], "channels": 6, "kept": 3}]
    shrink_(net, x)
    assert torch.allclose(net(x), before, atol=1e-6)
    # conv 4*1*9 + BN 2*4 + conv 3*4*9 + 3 + Linear 3*(3*16) + 3
    assert count_params(net) == 36 + 8 + 108 + 3 + 144 + 3
    assert net[6].in_features == 48  # each removed channel took its block of 16 flattened features


def test_channels_no_consumer_reads_are_removed_too():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(5, 10)
    nc.prune_(net, InputChannelPrune(sparsity=0.5, targets=nc.Select(include=("2",))))
    before = net(x)
    shrink_(net, x)
    assert net[0].out_features == 4 and net[2].in_features == 4
    assert torch.allclose(net(x), before, atol=1e-6)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.gate = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            y = self.gate(y)
        return y


def test_an_untraceable_layer_is_named():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), Branchy())
    with pytest.raises(UserError, match=r"layer '1' \(Branchy\)"):
        shrink_(model, torch.randn(1, 1, 6, 6))


def test_concatenated_and_output_channels_are_never_removed():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1).mean((2, 3))

    model = Cat()
    x = torch.randn(2, 1, 3, 3)
    with pytest.warns(UserWarning, match="no prunable channel group"):
        nc.prune_(model, ChannelPrune(sparsity=0.5), data=[x])
    assert not hasattr(model.a, "parametrizations")


def test_quantized_models_are_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=None))
    with pytest.raises(UserError, match="layer '0' is quantized"):
        shrink_(net, torch.randn(2, 4))


def test_a_constant_shift_keeps_its_channels():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

        def forward(self, x):
            return self.b(self.a(x) + 1.0)  # a zeroed row of `a` still feeds 1.0 into `b`

    model = Shift()
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="no prunable channel group"):
        nc.prune_(model, ChannelPrune(sparsity=0.5), data=[x])
    scaled = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    nc.prune_(scaled, ChannelPrune(sparsity=0.5), data=[x])
    assert int((scaled[0].weight == 0).all(1).sum()) == 3


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv2_small"])
def test_a_saved_shrunk_model_loads_at_its_smaller_shapes(arch, tmp_path):
    torch.manual_seed(0)
    model = trained_like(build_model(arch, SHAPE, 10))
    x = torch.randn(4, *SHAPE)
    nc.prune_(model, ChannelPrune(sparsity=0.5), data=[x])
    shrink_(model, x)
    model.eval()
    path = nc.save_model(model, tmp_path / "s.safetensors", arch=arch, in_shape=SHAPE, num_classes=10,
                         example=x[:2], shrunk=True)
    loaded, meta = nc.load_model(path)
    assert meta["shrunk"] is True and count_params(loaded) == count_params(model)
    assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(UserError, match="does not fit"):  # without the flag the zoo shapes are expected
        nc.load_model(nc.save_model(model, tmp_path / "plain.safetensors", arch=arch, in_shape=SHAPE, num_classes=10))


def test_a_shrunk_file_may_only_lose_channels_and_must_fit_together(tmp_path):
    from nncompress.fileio import load_weights, save_weights

    torch.manual_seed(0)
    net = lambda: nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))  # noqa: E731
    model = trained_like(net())
    x = torch.randn(2, 1, 8, 8)
    nc.prune_(model, ChannelPrune(sparsity=0.5), data=[x])
    shrink_(model, x)
    path = nc.save_model(model, tmp_path / "s.safetensors", example=x, shrunk=True)
    loaded, _ = nc.load_model(path, net)
    assert loaded[0].out_channels == loaded[1].num_features == loaded[3].in_channels == 4
    state, meta = load_weights(path)
    grown = {**state, "0.weight": torch.zeros(9, 1, 3, 3)}
    save_weights(tmp_path / "grown.safetensors", grown, meta)
    with pytest.raises(UserError, match=r"layer '0' weight is stored as \[9, 1, 3, 3\]"):
        nc.load_model(tmp_path / "grown.safetensors", net)
    clash = {**state, "3.weight": torch.zeros(4, 3, 3, 3)}  # conv 3 reads 3 channels, BatchNorm gives 4
    save_weights(tmp_path / "clash.safetensors", clash, meta)
    with pytest.raises(UserError, match="channel counts do not fit together"):
        nc.load_model(tmp_path / "clash.safetensors", net)
    with pytest.raises(UserError, match="shrunk=1 must be True"):
        nc.save_model(model, tmp_path / "bad.safetensors", shrunk=1)
