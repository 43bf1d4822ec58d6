"""Structured masks: whole filters / input channels / im2col columns, residual groups, group lasso,
compact encoding, save / load."""
import json
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.parametrize import decode, encode_chain
from nncompress.prune.dependency import channel_groups
from nncompress.prune.group_lasso import GroupLassoPrune, group_lasso_penalty
from nncompress.prune.mask import keep_mask_of
from nncompress.prune.structured import ChannelPrune, ColumnPrune, InputChannelPrune
from nncompress.prune.structures import StructuredMask
from nncompress.validate import UserError
from nncompress.zoo import build_model


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3))


X = torch.randn(4, 1, 6, 6)


def test_channel_prune_zeroes_whole_filters_and_the_batchnorm_channel():
    net = convnet()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(0.5, 1.5)
    norms = net[0].weight.detach().flatten(1).norm(dim=1)
    nc.prune_(net, ChannelPrune(sparsity=0.5), data=[X])
    w = net[0].weight.detach().flatten(1)
    pruned = (w == 0).all(1)
    assert int(pruned.sum()) == 4 and ((w != 0).all(1) | pruned).all()  # filters are all-zero or untouched
    assert set(torch.argsort(norms)[:4].tolist()) == set(torch.nonzero(pruned).flatten().tolist())
    assert (net[1].weight.detach()[pruned] == 0).all() and (net[1].bias.detach()[pruned] == 0).all()
    assert (net[1].weight.detach()[~pruned] != 0).all()
    kept3 = (net[3].weight.detach().flatten(1) != 0).all(1)
    assert int(kept3.sum()) == 3 and (net[3].bias.detach()[~kept3] == 0).all()
    assert not hasattr(net[7], "parametrizations")  # the model output is never pruned


def test_channel_prune_gradients_are_zero_on_pruned_filters():
    net = nc.prune_(convnet(), ChannelPrune(sparsity=0.5), data=[X])
    net(X).square().sum().backward()
    original = net[0].parametrizations.weight.original
    assert (original.grad[~keep_mask_of(net[0])] == 0).all()


def test_residual_channels_are_pruned_together_in_resnet20():
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 12, 12), 10)
    x = torch.randn(2, 1, 12, 12)
    groups = channel_groups(model, (x,))
    stage1 = next(g for g in groups if "0.0" in g.producers)
    assert stage1.producers == ["0.0", "1.conv2.0", "2.conv2.0", "3.conv2.0"]
    assert len(groups) == 3 + 9  # three residual stages + the first conv of each of the 9 blocks
    nc.prune_(model, ChannelPrune(sparsity=0.25), data=[x])
    modules = dict(model.named_modules())
    keeps = [keep_mask_of(modules[p]).flatten(1).all(1) for p in stage1.producers]
    assert all(torch.equal(k, keeps[0]) for k in keeps) and int((~keeps[0]).sum()) == 4


def test_channel_prune_global_scope_and_layer_override():
    net = convnet()
    report = []
    nc.prune_(net, ChannelPrune(sparsity=0.5, layer_sparsity={"0": 0.25}, scope="layer"), data=[X], report=report)
    assert report[0]["channels_kept"] == {"0": 6, "3": 3}
    net = convnet()
    with torch.no_grad():
        net[0].weight.mul_(100)  # global: the big layer keeps its filters, the small one loses them
    report = []
    nc.prune_(net, ChannelPrune(sparsity=0.4, scope="global"), data=[X], report=report)
    assert report[0]["channels_kept"] == {"0": 8, "3": 1}  # 5 of 14 removed; at least one survives


def test_channel_prune_needs_an_example_batch():
    with pytest.raises(UserError, match="needs calibration data"):
        nc.prune_(convnet(), ChannelPrune(sparsity=0.5))


def test_column_prune_by_threshold_on_the_lecture_example():
    # the lecture's zero-skipping example: the 3rd column of the 4x4 weight matrix is the one pruned
    layer = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 0.1, -1.0], [0.5, -1.0, -0.1, 2.0],
                                         [-1.0, 1.0, 0.05, 1.0], [2.0, 0.5, 0.1, -0.5]]))
    net = nn.Sequential(layer)
    nc.prune_(net, ColumnPrune(threshold=1.0))  # column sums |w|: 4.5, 4.5, 0.35, 4.5
    assert torch.equal((net[0].weight == 0).all(0), torch.tensor([False, False, True, False]))
    encoded = encode_chain(net[0])[0]
    assert encoded.kind == "structured_mask" and encoded.tensors["keep"].tolist() == [True, True, False, True]


def test_column_prune_fraction_on_a_conv_zeroes_im2col_columns():
    torch.manual_seed(1)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3))
    sums = conv[0].weight.detach().abs().sum(0).flatten()
    nc.prune_(conv, ColumnPrune(sparsity=0.5))
    lowered = conv[0].weight.detach().reshape(5, -1)  # out x (in * kh * kw)
    zero_columns = (lowered == 0).all(0)
    assert int(zero_columns.sum()) == round(0.5 * 27)
    assert set(torch.nonzero(zero_columns).flatten().tolist()) == set(torch.argsort(sums)[:14].tolist())
    assert ((lowered != 0).all(0) | zero_columns).all()


def test_input_channel_prune_zeroes_input_slices():
    net = convnet()
    nc.prune_(net, InputChannelPrune(sparsity=0.5, targets=nc.Select(include=("3",))), data=[X])
    zero = (net[3].weight.detach() == 0).transpose(0, 1).flatten(1).all(1)
    assert int(zero.sum()) == 4
    assert encode_chain(net[3])[0].tensors["keep"].shape == (8,)


def test_structured_encoding_is_one_bit_per_unit_and_decodes_exactly():
    net = nc.prune_(convnet(), ChannelPrune(sparsity=0.5), data=[X])
    encoded = encode_chain(net[0])[0]
    assert encoded.kind == "structured_mask" and encoded.tensors["keep"].shape == (8,)
    assert encoded.meta["int_ranges"] == {"keep": [0, 1]}
    assert torch.equal(decode(encoded), net[0].weight.detach())
    # a finer mask written over the structured one falls back to the per-weight encoding
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.8, targets=nc.Select(include=("0",))))
    fallback = encode_chain(net[0])[0]
    assert fallback.kind == "mask" and torch.equal(decode(fallback), net[0].weight.detach())


def test_group_lasso_penalty_on_a_hand_example():
    # two Linear columns (groups): ||(3, 4)|| = 5 and ||(0, 1)|| = 1; theta = 2 truncates the first
    w = torch.tensor([[3.0, 0.0], [4.0, 1.0]], requires_grad=True)
    penalty = group_lasso_penalty([w], "column", lam=0.1, theta=2.0)
    assert math.isclose(float(penalty.detach()), 0.1 * (2.0 + 1.0), rel_tol=1e-6)
    penalty.backward()  # the truncated group gets no gradient; the other d||g||/dg = g / ||g||
    assert torch.allclose(w.grad, torch.tensor([[0.0, 0.0], [0.0, 0.1]]))
    assert math.isclose(float(group_lasso_penalty([w.detach()], "column", lam=0.1)), 0.6, rel_tol=1e-6)


def test_group_lasso_regularizer_and_pruning_of_conv_columns():
    net = convnet()
    method = GroupLassoPrune(sparsity=0.5, lam=0.01, theta=10.0, targets=nc.Select(include=("3",)))
    (regularizer,) = method.regularizers(net)
    groups = net[3].weight.detach().square().sum(0).sqrt()  # ||Gamma_ijs|| over the 6 filters
    assert math.isclose(float(regularizer(net).detach()), 0.01 * float(groups.clamp(max=10.0).sum()), rel_tol=1e-5)
    nc.prune_(net, method)
    zero = (net[3].weight.detach() == 0).all(0)
    assert int(zero.sum()) == round(0.5 * 72)
    assert set(torch.nonzero(zero.flatten()).flatten().tolist()) == set(torch.argsort(groups.flatten())[:36].tolist())


def test_structured_masks_survive_save_and_load(tmp_path):
    method = ChannelPrune(sparsity=0.5)
    net = nc.prune_(convnet(), method, data=[X]).eval()
    column = ColumnPrune(sparsity=0.3, targets=nc.Select(include=("3",)))
    nc.prune_(net, column)
    path = nc.save_model(net, tmp_path / "s.safetensors", recipe=[method, column], example=X[:2])
    loaded, _ = nc.load_model(path, convnet)
    loaded.eval()
    assert torch.equal(loaded(X), net(X))
    assert isinstance(loaded[0].parametrizations.weight[0], StructuredMask)
    nc.convert_(net)
    path = nc.save_model(net, tmp_path / "c.safetensors", recipe=[method, column], example=X[:2])
    converted, _ = nc.load_model(path, convnet)
    assert torch.equal(converted.eval()(X), net(X))


def test_bad_values_are_clear_errors():
    with pytest.raises(UserError, match="sparsity"):
        ChannelPrune(sparsity=1.5)
    with pytest.raises(UserError, match="norm"):
        ChannelPrune(sparsity=0.5, norm="l3")
    with pytest.raises(UserError, match="either threshold or sparsity"):
        ColumnPrune(sparsity=0.5, threshold=1.0)
    with pytest.raises(UserError, match="group"):
        GroupLassoPrune(sparsity=0.5, group="row")


@pytest.fixture
def saved_lenet5(tmp_path, digits):
    torch.manual_seed(0)
    model = build_model("lenet5", digits.in_shape, digits.num_classes)
    return str(nc.save_model(model, tmp_path / "lenet5.safetensors", arch="lenet5", in_shape=digits.in_shape,
                             num_classes=digits.num_classes))


@pytest.mark.slow
def test_prune_cli_channel_structure_shrinks(main, saved_lenet5, tmp_path):
    report = tmp_path / "r.json"
    code, stdout, stderr = main("prune", saved_lenet5, "--structure", "channel", "--sparsity", "0.5", "--shrink",
                                "--schedule", "oneshot", "--finetune-epochs", "1", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["method"]["method"] == "channel" and r["shrunk"]
    assert r["groups"] == [{"producers": ["conv1"], "channels": 20, "kept": 10},
                           {"producers": ["conv2"], "channels": 50, "kept": 25},
                           {"producers": ["fc1"], "channels": 500, "kept": 250}]
    assert r["after"]["params"] < 0.5 * r["before"]["params"] and r["mac_reduction"] > 2
    assert "MAC reduction" in stdout


def test_prune_cli_shrink_out_saves_the_shrunk_model(main, saved_lenet5, tmp_path, digits):
    out = tmp_path / "small.safetensors"
    code, _, stderr = main("prune", saved_lenet5, "--structure", "channel", "--sparsity", "0.5", "--shrink",
                           "--schedule", "oneshot", "--finetune-epochs", "0", "-o", str(out))
    assert code == 0, stderr
    assert "wrote the shrunk model" in " ".join(stderr.split())
    loaded, meta = nc.load_model(out)
    assert meta["shrunk"] is True and (loaded.conv1.out_channels, loaded.fc1.out_features) == (10, 250)
    code, stdout, stderr = main("evaluate", str(out), "-d", "digits")
    assert code == 0, stderr


def test_prune_cli_nm_permutes_by_default_and_prints_kept_magnitude(main, saved_lenet5, tmp_path):
    report = tmp_path / "r.json"
    code, stdout, stderr = main("prune", saved_lenet5, "--structure", "nm", "--exclude", "conv1",
                                "--finetune-epochs", "0", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["method"]["permute"] is True and r["densities"]["conv2"] == r["densities"]["fc2"] == 0.5
    permutations = r["steps"][0]["permutations"]
    assert all(p["permuted"] >= p["identity"] for p in permutations.values())
    assert "kept |w|, identity" in stdout and "producer conv1" in stdout
    assert r["after"]["nonzero_macs"] < r["after"]["macs"] == r["before"]["macs"]
    code, _, stderr = main("prune", saved_lenet5, "--structure", "nm", "--exclude", "conv1", "--set", "permute=false",
                           "--finetune-epochs", "0", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["method"]["permute"] is False and r["steps"][0]["permutations"] == {}


def test_prune_cli_column_structure_reports_densities_and_nonzero_macs(main, saved_lenet5, tmp_path):
    report = tmp_path / "r.json"
    code, stdout, stderr = main("prune", saved_lenet5, "--structure", "column", "--sparsity", "0.5", "--exclude",
                                "conv1", "--schedule", "oneshot", "--finetune-epochs", "0", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["densities"]["conv1"] == 1.0 and r["densities"]["fc2"] == 0.5
    assert r["after"]["nonzero_macs"] < r["before"]["nonzero_macs"] == r["before"]["macs"]
    assert "weight density" in stdout and "non-zero weight" in " ".join(stdout.split())


@pytest.mark.parametrize("args, message", [
    (("--structure", "rows"), "--structure 'rows' must be one of: channel, column, group, nm"),
    (("--structure", "channel", "--method", "threshold"), "--structure channel runs --method channel"),
    (("--structure", "nm", "--sparsity", "0.5"), "--sparsity does not apply to --method nm"),
])
def test_prune_cli_structure_errors(main, saved_lenet5, args, message):
    code, _, stderr = main("prune", saved_lenet5, *args)
    assert code == 2 and message in " ".join(stderr.split())


def test_structured_mask_writes_and_reads_the_nnc_container():
    from nncompress.encode.container import parse, serialize
    from nncompress.encode.model import decoded_state, encode_model

    net = nc.prune_(convnet(), ChannelPrune(sparsity=0.5), data=[X]).eval()
    state = decoded_state(parse(serialize(encode_model(net, {"arch": "custom"}))))
    assert torch.equal(state["0.weight"], net[0].weight.detach()) and torch.equal(state["1.bias"], net[1].bias.detach())
    bad = encode_chain(net[0])[0]
    bad.meta["dims"] = [1]  # a crafted file: the keep vector does not index these dims
    with pytest.raises(ValueError, match="does not index dims"):
        StructuredMask.decode(bad)
