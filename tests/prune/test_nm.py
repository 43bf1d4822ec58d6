"""N:M (2:4) sparsity: the pattern, its lowering for convs, the fixed-mask retraining recipe, the
2:4 compressed format (bytes and exact decode) and the errors."""
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.bitpack import pack_bits
from nncompress.parametrize import Encoded, find_transform
from nncompress.prune.nm import (NMMask, NMPrune, nm_keep_mask, nm_matrix, nm_slots, nm_storage_bytes,
                                 nm_unmatrix)
from nncompress.quant.convert import Stored, convert_


def groups_nonzero(weight, m=4):
    """Non-zeros of every group of m along the input dimension (lowered as NVIDIA's ASP)."""
    matrix = nm_matrix(weight.detach())
    return (matrix != 0).reshape(matrix.shape[0], -1, m).sum(-1)


def test_keep_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -0.9, 0.5, 0.3, 4.0, 3.0, -2.0, 1.0]])
    keep = nm_keep_mask(w.abs(), 2, 4)
    assert keep.tolist() == [[False, True, True, False, True, True, False, False]]
    # ties: the lower index is pruned first (as prune.masks does)
    assert nm_keep_mask(torch.ones(1, 4), 2, 4).tolist() == [[False, False, True, True]]
    assert nm_keep_mask(torch.ones(1, 8), 1, 4).sum() == 2


def test_conv_groups_run_along_input_channels_at_each_kernel_position():
    w = torch.randn(3, 8, 2, 2)
    matrix = nm_matrix(w)
    assert matrix.shape == (2 * 2 * 3, 8)
    assert torch.equal(matrix[0], w[0, :, 0, 0]) and torch.equal(matrix[3], w[0, :, 0, 1])
    assert torch.equal(nm_unmatrix(matrix, w.shape), w)
    keep = nm_keep_mask(w.abs(), 2, 4)
    assert (keep[:, :4].sum(1) == 2).all() and (keep[:, 4:].sum(1) == 2).all()


def test_pattern_holds_exactly_after_training_steps():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.ReLU(),
                        nn.Linear(16, 3))
    nc.apply_(net, NMPrune(n=2, m=4))
    masks = {i: net[i].parametrizations.weight[0].mask.clone() for i in (0, 3, 5)}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(torch.randn(8, 4, 6, 6)), torch.randint(0, 3, (8,)))
        loss.backward()
        opt.step()
    for i, mask in masks.items():
        assert (groups_nonzero(net[i].weight) <= 2).all()
        assert (groups_nonzero(net[i].weight) == 2).sum() > 0.9 * groups_nonzero(net[i].weight).numel()
        assert torch.equal(net[i].parametrizations.weight[0].mask, mask)  # the fixed mask of the recipe
        assert (net[i].parametrizations.weight.original[~mask] == 0).all()


def test_error_names_the_layer_when_the_input_dimension_is_not_a_multiple_of_m():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with pytest.raises(nc.UserError, match=r"layer '0' has in_channels / groups=1, .* multiple of m=4"):
        nc.apply_(net, NMPrune())
    assert not any(hasattr(m, "parametrizations") for m in net)  # refused before changing anything
    with pytest.raises(nc.UserError, match=r"layer '0' has in_features=6"):
        nc.apply_(nn.Sequential(nn.Linear(6, 4)), NMPrune())
    nc.apply_(net, NMPrune(targets=nc.Select(exclude=("0",))))
    assert (groups_nonzero(net[2].weight) == 2).all()
    with pytest.raises(nc.UserError, match=r"n=4 must be an integer in \[1, 3\]"):
        NMPrune(n=4, m=4)


def test_magnitude_then_nm_keeps_the_intersection():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 8))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.7))
    pruned = net[0].weight == 0
    nc.apply_(net, NMPrune())
    assert isinstance(find_transform(net[0], NMMask), NMMask) and len(net[0].parametrizations.weight) == 1
    assert (net[0].weight[pruned] == 0).all() and (groups_nonzero(net[0].weight) <= 2).all()


@pytest.mark.parametrize("dtype, value_bits, overhead", [(torch.float16, 16, 0.125), (torch.int8, 8, 0.25)])
def test_compressed_format_bytes_match_the_formula(dtype, value_bits, overhead):
    rows, cols = 16, 64
    w = torch.randn(rows, cols)
    mask = NMMask(nm_keep_mask(w.abs(), 2, 4))
    enc = mask.encode(w)
    values = (enc.tensors["values"] * 10).to(dtype)  # the same format with 16- or 8-bit values
    stored = Stored(Encoded("nm", {"values": values, "indices": enc.tensors["indices"]}, enc.meta))
    value_bytes = stored.values.numel() * stored.values.element_size()
    index_bytes = stored.payload_value.numel() * stored.payload_value.element_size()
    formula = nm_storage_bytes(rows * cols, 2, 4, value_bits)
    assert value_bytes == formula["values"] == rows * cols // 2 * value_bits // 8  # half the dense values
    assert index_bytes == formula["indices"] == rows * cols // 2 * 2 // 8  # 2 bits per kept value
    assert index_bytes / value_bytes == overhead == formula["overhead"]
    assert torch.equal(stored.payload_value, pack_bits(enc.tensors["indices"], 0, 2))


def test_encode_decode_is_exact_for_linear_and_conv_and_convert_packs_indices():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 4))
    nc.apply_(net, NMPrune())
    x = torch.randn(3, 8, 6, 6)
    before = net(x)
    for i in (0, 3):
        t = net[i].parametrizations.weight[0]
        original = net[i].parametrizations.weight.original
        enc = t.encode(original)
        assert enc.tensors["values"].numel() == original.numel() // 2
        assert torch.equal(NMMask.decode(enc), t(original))
    convert_(net)
    assert torch.equal(net(x), before)
    state = net.state_dict()
    assert state["3.parametrizations.weight.original"].dtype == torch.uint8
    assert state["3.parametrizations.weight.original"].numel() == math.ceil(4 * 64 / 2 * 2 / 8)
    assert state["3.parametrizations.weight.0.values"].numel() == 4 * 64 // 2


def test_a_mask_that_is_no_longer_n_m_is_stored_as_a_bitmap():
    net = nn.Sequential(nn.Linear(8, 4))
    nc.apply_(net, NMPrune())
    nc.prune_(net, nc.RandomPrune(sparsity=0.3))  # replaces the mask (attach_mask reuses it)
    t = net[0].parametrizations.weight[0]
    assert not t.is_nm()
    enc = t.encode(net[0].parametrizations.weight.original)
    assert enc.kind == "mask" and torch.equal(NMMask.decode(enc), net[0].weight)
    with pytest.raises(nc.UserError, match="more than 2 of 4"):
        nm_slots(torch.ones(2, 8, dtype=torch.bool), 2, 4)


def test_nnc_container_stores_the_2_4_format_and_decodes_exactly():
    from nncompress.encode.container import parse, serialize
    from nncompress.encode.model import decode_model, encode_model

    def make():
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))

    torch.manual_seed(0)
    net = make()
    nc.apply_(net, NMPrune(permute=True))
    x = torch.randn(3, 64)
    blob = serialize(encode_model(net, {"custom": True}))
    assert len(blob) < 0.65 * (64 * 32 + 32 * 8) * 4  # half the values + 2-bit indices + fp32 biases + header
    assert torch.equal(decode_model(parse(blob), model=make())(x), net(x))


def test_a_half_precision_2_4_layer_costs_half_the_values_plus_12_5_percent_in_the_container():
    from nncompress.encode.container import parse, serialize
    from nncompress.encode.model import decode_model, encode_model

    def make():
        return nn.Sequential(nn.Linear(256, 128, bias=False)).half()

    torch.manual_seed(0)
    net = make()
    nc.apply_(net, NMPrune())
    plain = len(serialize(encode_model(make(), {"custom": True})))  # dense fp16: 65,536 B of values + header
    blob = serialize(encode_model(net, {"custom": True}))
    values, indices = 256 * 128 // 2 * 2, 256 * 128 // 2 * 2 // 8
    assert indices / values == 0.125
    header = plain - 256 * 128 * 2
    assert values + indices <= len(blob) <= values + indices + header + 512  # a little more header for the nm chain
    assert torch.equal(decode_model(parse(blob), model=make())[0].weight, net[0].weight)
