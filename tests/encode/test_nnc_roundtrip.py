"""Every transform chain goes through the 3.0 container generically and decodes bit-exactly."""
import math
import struct
from collections import OrderedDict

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import OVERHEAD, NncFormatError, parse, serialize
from nncompress.encode.model import decode_model, decoded_state, encode_model
from nncompress.parametrize import TRANSFORM_KINDS, Encoded, WeightTransform, attach, transform_kind
from nncompress.quant.fake import BiasQuant
from nncompress.validate import UserError
from nncompress.zoo import build_model

DESC = {"name": "mlp"}


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(64, 48), relu=nn.ReLU(), fc2=nn.Linear(48, 10))).eval()


def pruned(sparsity: float = 0.8) -> nn.Module:
    model = mlp()
    nc.prune_(model, nc.MagnitudePrune(sparsity=sparsity, scope="layer"))
    return model


def weight_only(bits: int, granularity: str, **kw) -> nc.LinearQuant:
    return nc.LinearQuant(weight_bits=bits, act_bits=None, granularity=granularity, **kw)


def with_int32_biases() -> nn.Module:
    model = mlp()
    nc.quantize_(model, weight_only(8, "channel"))
    for layer in (model.fc1, model.fc2):
        attach(layer, BiasQuant(torch.rand(layer.out_features) * 1e-4 + 1e-5), "bias")
    return model


CASES = {
    "mask + kmeans (Deep Compression)": lambda: nc.quantize_(pruned(), nc.KMeansQuant(bits=4)),
    "mask + linear int4 per channel": lambda: nc.quantize_(pruned(), weight_only(4, "channel")),
    "linear int8 per tensor": lambda: nc.quantize_(mlp(), weight_only(8, "tensor")),
    "linear int4 per group": lambda: nc.quantize_(mlp(), weight_only(4, "group", group_size=16)),
    "kmeans without mask": lambda: nc.quantize_(mlp(), nc.KMeansQuant(bits=3)),
    "int32 biases": with_int32_biases,
    "mask only": pruned,
    "plain float": mlp,
}


@pytest.mark.parametrize("case", CASES)
def test_decoding_is_bit_exact_with_what_the_model_computes_with(case):
    model = CASES[case]()
    data = serialize(encode_model(model, DESC))
    nnc = parse(data)
    state = decoded_state(nnc)
    for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"):
        layer, tensor = name.split(".")
        assert torch.equal(state[name], getattr(getattr(model, layer), tensor)), name
    x = torch.randn(32, 64)
    assert torch.equal(decode_model(nnc, model=mlp())(x), model(x))
    header_len = struct.unpack_from("<I", data, 8)[0]
    payload = sum(e["bytes"] for stages in nnc.storage.values() for s in stages for e in s.values())
    assert len(data) >= 16 + header_len + payload
    assert sum(nnc.sizes.values()) == len(data) and nnc.sizes[OVERHEAD] > 16


def storage(model: nn.Module) -> dict:
    return parse(serialize(encode_model(model, DESC))).storage


def test_after_a_mask_only_kept_entries_are_stored_and_the_mask_values_are_dropped():
    model = nc.quantize_(pruned(0.9), nc.KMeansQuant(bits=4))
    fc1 = storage(model)["fc1.weight"]
    assert list(fc1[0]) == ["keep"] and fc1[0]["keep"]["codec"]["name"] == "relative"
    indices = fc1[1]["indices"]
    assert indices["sparse"] == {"mask": [0, "keep"], "fill": -1}
    kept = int(model.fc1.parametrizations.weight[0].mask.sum())
    assert indices["bytes"] <= math.ceil(kept * 4 / 8)  # 4-bit indices of the kept weights only


def test_int4_codes_after_a_mask_take_at_most_half_a_byte_per_kept_weight():
    model = nc.quantize_(pruned(0.5), weight_only(4, "channel"))
    codes = storage(model)["fc1.weight"][1]["codes"]
    kept = int(model.fc1.parametrizations.weight[0].mask.sum())
    assert codes["sparse"]["fill"] == 0 and codes["bytes"] <= math.ceil(kept / 2)
    dense = storage(nc.quantize_(mlp(), weight_only(4, "tensor")))["fc1.weight"][0]["codes"]
    assert dense["bytes"] <= 64 * 48 // 2 and "sparse" not in dense


def test_zoo_models_decode_without_a_module_other_models_need_one():
    model = nc.quantize_(pruned(), nc.KMeansQuant(bits=4))
    nnc = parse(serialize(encode_model(model, DESC)))
    with pytest.raises(UserError, match="pass the module to load into"):
        decode_model(nnc)
    with pytest.raises(UserError, match="do not fit the given Sequential"):
        decode_model(nnc, model=nn.Sequential(nn.Linear(64, 10)))
    torch.manual_seed(0)
    zoo = nc.quantize_(build_model("lenet300", (1, 8, 8), 10).eval(), nc.KMeansQuant(bits=2))
    decoded = decode_model(parse(serialize(encode_model(zoo, {"arch": "lenet300", "in_shape": [1, 8, 8],
                                                                "num_classes": 10}))))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(decoded(x), zoo(x))


@pytest.fixture
def ternary_kind():
    """A transform kind the container has never seen (like the ternary / fp8 kinds to come)."""
    @transform_kind("test_ternary")
    class Ternary(WeightTransform):
        def forward(self, w):
            return torch.sign(w) * (w.abs() > 0.05) * 0.1

        def encode(self, w):
            codes = (torch.sign(w) * (w.abs() > 0.05)).to(torch.int8)
            return Encoded(self.kind, {"codes": codes, "alpha": torch.tensor([0.1])}, {"shape": list(w.shape)})

        @classmethod
        def decode(cls, encoded):
            return encoded.tensors["codes"].float() * encoded.tensors["alpha"]

    yield Ternary
    del TRANSFORM_KINDS["test_ternary"]


def test_a_new_transform_kind_needs_no_format_change(ternary_kind):
    model = mlp()
    attach(model.fc1, ternary_kind())
    data = serialize(encode_model(model, DESC))
    nnc = parse(data)
    assert nnc.storage["fc1.weight"][0]["codes"]["codec"]["name"] in ("packed", "huffman")
    assert nnc.storage["fc1.weight"][0]["codes"]["bytes"] <= math.ceil(64 * 48 * 2 / 8)  # 2 bits or fewer
    x = torch.randn(4, 64)
    assert torch.equal(decode_model(nnc, model=mlp())(x), model(x))
    del TRANSFORM_KINDS["test_ternary"]
    with pytest.raises(NncFormatError, match="transform kind 'test_ternary' is unknown"):
        decode_model(parse(data), model=mlp())
    TRANSFORM_KINDS["test_ternary"] = ternary_kind
