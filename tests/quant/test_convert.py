"""convert_: fake-quantized -> stored integer codes, bit-exact, and really smaller on disk."""
import copy

import pytest
import torch
from torch import nn
from safetensors.torch import load, save

import nncompress as nc
from nncompress.bitpack import pack_bits, unpack_bits
from nncompress.quant.convert import Stored, is_converted
from nncompress.zoo import build_model


def file_bytes(model):
    return len(save({k: v.contiguous() for k, v in model.state_dict().items()}))


def lenet300():
    torch.manual_seed(0)
    return build_model("lenet300", (1, 28, 28), 10).eval()


def test_pack_bits_layout_is_msb_first_and_round_trips():
    assert pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 0, 1).tolist() == [0b10110000, 0b10000000]
    assert pack_bits(torch.tensor([-7, 7, 0]), -7, 4).tolist() == [0x0E, 0x70]  # 0 | 14, then 7 | pad
    codes = torch.randint(-3, 4, (1001,))
    assert torch.equal(unpack_bits(pack_bits(codes, -3, 3), -3, 3, 1001), codes)
    with pytest.raises(ValueError, match="cannot be packed"):
        pack_bits(torch.tensor([9]), -7, 4)  # -7 + 15 = 8 is the largest


@pytest.mark.parametrize("bits, max_ratio", [(8, 0.26), (4, 0.135), (2, 0.075)])
def test_converted_weights_are_bit_exact_and_smaller(bits, max_ratio):
    model = lenet300()
    dense = file_bytes(model)
    x = torch.randn(8, 1, 28, 28)
    nc.quantize_(model, nc.LinearQuant(weight_bits=bits, act_bits=8), data=[x])
    simulated = model(x)
    nc.convert_(model)
    assert is_converted(model) and torch.equal(model(x), simulated)
    assert file_bytes(model) <= max_ratio * dense  # int8 ~4x, int4 ~8x, int2 ~16x (biases stay 32-bit)
    assert model.state_dict()["fc1.parametrizations.weight.original"].dtype == (torch.int8 if bits == 8 else torch.uint8)


def test_pruned_float_layers_store_a_bitmap_and_the_kept_values():
    model = lenet300()
    dense = file_bytes(model)
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9))
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    nc.convert_(model)
    assert torch.equal(model(x), before)
    assert file_bytes(model) <= 0.14 * dense  # 10% of the values + 1 bit per weight


def test_a_converted_file_loads_into_the_recipe_replayed_on_other_data():
    recipe = [nc.MagnitudePrune(sparsity=0.8), nc.KMeansQuant(bits=4)]
    model = lenet300()
    for method in recipe:
        nc.apply_(model, method)
    nc.convert_(model)
    blob = save({k: v.contiguous() for k, v in model.state_dict().items()})
    twin = build_model("lenet300", (1, 28, 28), 10).eval()  # other weights: other codebooks, same shapes
    for method in recipe:
        nc.apply_(twin, method)
    nc.convert_(twin)
    twin.load_state_dict(load(blob))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(twin(x), model(x)) and torch.equal(copy.deepcopy(model)(x), model(x))


def test_convert_is_idempotent_and_leaves_plain_layers_alone():
    model = lenet300()
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=None, targets=nc.Select(include=("fc1",))))
    nc.convert_(model)
    stored = model.fc1.parametrizations.weight[0]
    nc.convert_(model)
    assert model.fc1.parametrizations.weight[0] is stored and isinstance(stored, Stored)
    assert isinstance(model.fc2.weight, torch.nn.Parameter)


def test_squash_of_a_converted_deep_copy_leaves_the_original_working():
    """squash_ turns stored int codes back into float weights, and squashing a deep copy must not
    touch the original: torch's remove_parametrizations deletes the property from the module's
    class, which deep copies share (the original then had no `weight`)."""
    import copy

    import nncompress as nc
    from nncompress.parametrize import squash_

    net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    x = torch.randn(5, 8)
    nc.convert_(nc.quantize_(net, nc.LinearQuant(weight_bits=4, act_bits=None), data=[x]))
    before = net(x)
    plain = squash_(copy.deepcopy(net))
    assert type(plain[0]) is torch.nn.Linear and plain[0].weight.dtype == torch.float32
    assert torch.equal(plain(x), before) and torch.equal(net(x), before)


@pytest.mark.parametrize("method, bits", [(nc.KMeansQuant(bits=3), 3), (nc.LinearQuant(weight_bits=4, act_bits=None), 4)])
def test_a_converted_layer_reports_the_bits_its_encoding_stored(method, bits):
    """A codebook's index width is per instance (SharedWeights.storage_bits is a property): the converted
    layer reads it from the encoding, and the energy model of a converted model counts it."""
    from nncompress.hardware.energy import workloads_from_model
    from nncompress.parametrize import weight_bits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 8))
    nc.quantize_(net, method)
    nc.convert_(net)
    assert is_converted(net) and weight_bits(net[0]) == bits
    assert [w.weight_bits for w in workloads_from_model(net, (16,))] == [bits]
