"""ChannelPrune / NetworkSlimming `round_to`: every dependency group keeps a multiple of N channels (so
blocked CPU kernels waste no vector lanes on the shrunk model), and shrinking still equals masking."""
import json

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.metrics import total_macs
from nncompress.prune.shrink import shrink_, shrink_summary
from nncompress.prune.slimming import NetworkSlimming
from nncompress.prune.structured import ChannelPrune, round_keep, rounded_count
from nncompress.validate import UserError
from nncompress.zoo import build_model
from bn_stats import trained_like

SHAPE = (1, 16, 16)


@pytest.mark.parametrize("kept, total, n, expected", [
    (11, 16, 8, 8),     # 11 -> nearest multiple of 8 is 8
    (12, 16, 8, 16),    # a tie keeps more
    (22, 32, 8, 24),
    (45, 64, 16, 48),
    (11, 16, 16, 16),   # nothing below 16 is a multiple: the group stays whole
    (3, 16, 16, 16),
    (19, 32, 16, 16),
    (7, 10, 8, 8),      # a group that is no multiple itself: 8 or all 10
    (9, 10, 8, 10),
    (4, 6, 8, 6),       # smaller than N: left whole
    (5, 16, 1, 5),      # round_to 1: unchanged
])
def test_rounded_count(kept, total, n, expected):
    assert rounded_count(kept, total, n) == expected


def test_rounded_count_is_monotone_so_iterative_rounds_never_need_a_channel_back():
    for total in (10, 16, 45, 64):
        for n in (2, 8, 16):
            counts = [rounded_count(k, total, n) for k in range(1, total + 1)]
            assert counts == sorted(counts)


def test_round_keep_drops_the_weakest_and_restores_the_strongest():
    scores = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0, 2.0, 6.0, 0.1])
    keep = scores > 1.5  # 5 kept -> rounded to 4 (n=4): the weakest kept (2.0) goes
    assert round_keep(keep, scores, 4).tolist() == [True, False, True, False, True, False, True, False]
    keep = scores > 2.5  # 4 kept -> unchanged
    assert torch.equal(round_keep(keep, scores, 4), keep)
    keep = scores > 4.5  # 2 kept -> 4: the strongest removed ones (4.0, 3.0) come back
    assert round_keep(keep, scores, 4).tolist() == [True, False, True, False, True, False, True, False]


def conv_out_channels(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("arch, n", [("resnet20", 8), ("resnet20", 16), ("vgg_small", 16), ("mobilenetv2_small", 8)])
def test_channel_counts_are_multiples_and_shrink_equals_masked(arch, n):
    torch.manual_seed(0)
    model = trained_like(build_model(arch, SHAPE, 10))
    x = torch.randn(8, *SHAPE)
    report = []
    nc.prune_(model, ChannelPrune(sparsity=0.4, round_to=n), data=[x], report=report)
    kept = report[-1]["channels_kept"]
    assert kept and all(k % n == 0 for k in kept.values()), kept
    assert all(g["kept"] % n == 0 for g in shrink_summary(model, x))
    masked_out, macs = model(x), total_macs(model, SHAPE)
    shrink_(model, x)
    assert torch.allclose(model(x), masked_out, atol=1e-5, rtol=1e-4)
    assert total_macs(model, SHAPE) < macs
    classifier_in = [m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)][1:]
    assert all(c % n == 0 for c in conv_out_channels(model)[:-1] + classifier_in if c != 1)


def test_resnet20_at_round_to_16_halves_the_macs_in_blocks_of_16():
    """The setting of benchmarks/results/structured.md: sparsity 0.4 rounded to 16 channels keeps
    16 / 16 / 32 channels per stage and cuts the MACs about 1.9x (28x28 inputs)."""
    torch.manual_seed(0)
    dense = build_model("resnet20", (1, 28, 28), 10).eval()
    model = build_model("resnet20", (1, 28, 28), 10).eval()
    model.load_state_dict(dense.state_dict())
    x = torch.randn(2, 1, 28, 28)
    nc.prune_(model, ChannelPrune(sparsity=0.4, round_to=16), data=[x])
    shrink_(model, x)
    assert sorted(set(conv_out_channels(model))) == [16, 32]
    assert 1.8 < total_macs(dense, (1, 28, 28)) / total_macs(model, (1, 28, 28)) < 2.0


def test_round_to_under_the_global_scope_and_an_iterative_schedule():
    torch.manual_seed(0)
    model = trained_like(build_model("vgg_small", SHAPE, 10))
    x = torch.randn(4, *SHAPE)
    for s in (0.2, 0.35, 0.5):  # rising sparsity, as the iterative schedule re-applies the method
        report = []
        nc.prune_(model, ChannelPrune(sparsity=s, scope="global", round_to=8), data=[x], report=report)
        assert all(g["kept"] % 8 == 0 for g in shrink_summary(model, x)), s


def test_slimming_rounds_after_its_global_threshold():
    torch.manual_seed(0)
    model = trained_like(build_model("vgg_small", SHAPE, 10))
    x = torch.randn(4, *SHAPE)
    report = []
    nc.prune_(model, NetworkSlimming(sparsity=0.5, round_to=16), data=[x], report=report)
    assert all(k % 16 == 0 for k in report[-1]["channels_kept"].values())
    out = model(x)
    shrink_(model, x)
    assert torch.allclose(model(x), out, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "16"])
def test_bad_round_to_is_a_clear_error(bad):
    with pytest.raises(UserError, match="round_to"):
        ChannelPrune(sparsity=0.5, round_to=bad)
    with pytest.raises(UserError, match="round_to"):
        NetworkSlimming(sparsity=0.5, round_to=bad)


def test_round_to_survives_the_recipe_round_trip():
    from nncompress.methods import method_from_dict

    method = ChannelPrune(sparsity=0.4, round_to=16)
    assert method_from_dict(method.to_dict()) == method


@pytest.fixture
def saved_vgg(tmp_path, digits):
    torch.manual_seed(0)
    model = build_model("vgg_small", digits.in_shape, digits.num_classes)
    return str(nc.save_model(model, tmp_path / "vgg.safetensors", arch="vgg_small", in_shape=digits.in_shape,
                             num_classes=digits.num_classes))


@pytest.mark.slow
def test_prune_cli_round_to(main, saved_vgg, tmp_path):
    report = tmp_path / "r.json"
    code, stdout, stderr = main("prune", saved_vgg, "--structure", "channel", "--sparsity", "0.3", "--round-to", "16",
                                "--shrink", "--schedule", "oneshot", "--finetune-epochs", "0", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["method"]["round_to"] == 16 and r["shrunk"]
    assert [g["kept"] for g in r["groups"]] == [16, 16, 48, 48, 96, 96]
    assert r["mac_reduction"] > 1.5


def test_prune_cli_round_to_needs_a_channel_structure(main, saved_vgg):
    code, _, stderr = main("prune", saved_vgg, "--structure", "column", "--round-to", "8")
    assert code == 2 and "--round-to does not apply to --method column" in " ".join(stderr.split())
