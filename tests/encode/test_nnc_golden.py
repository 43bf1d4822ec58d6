"""The .nnc 3.0 writer is byte-stable: a fixed tiny model encodes to exactly golden/tiny_v3.nnc.

Regenerate (only after an intended format or encoder change, and say so in the commit):

    .venv/bin/python tests/encode/test_nnc_golden.py
"""
from collections import OrderedDict
from pathlib import Path
import json
import struct
import zlib

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import parse, serialize
from nncompress.encode.model import decode_model, encode_model
from nncompress.parametrize import attach
from nncompress.quant.fake import BiasQuant

GOLDEN = Path(__file__).parent / "golden" / "tiny_v3.nnc"
GOLDEN_ZLIB = "1.2.13"  # the zlib that compressed the golden header (other builds may pick other bytes)
DESC = {"name": "tiny-mlp", "in_features": 16}


def tiny_model() -> nn.Module:
    """fc1: mask + k-means (3 bits); fc2: mask + int4 per channel; fc3: int8 per tensor with an
    int32 bias; fc1 / fc2 biases plain (fc1's float16-exact)."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 32), relu1=nn.ReLU(), fc2=nn.Linear(32, 24), relu2=nn.ReLU(),
                                      fc3=nn.Linear(24, 10))).eval()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.75, scope="layer", targets=nc.Select(include=("fc1", "fc2"))))
    nc.quantize_(model, nc.KMeansQuant(bits=3, targets=nc.Select(include=("fc1",))))
    nc.quantize_(model, nc.LinearQuant(weight_bits=4, act_bits=None, granularity="channel",
                                       targets=nc.Select(include=("fc2",))))
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=None, granularity="tensor",
                                       targets=nc.Select(include=("fc3",))))
    attach(model.fc3, BiasQuant(torch.full((10,), 2.0**-12)), "bias")
    with torch.no_grad():
        model.fc1.bias.copy_(model.fc1.bias.half().float())
    return model


def tiny_bytes() -> bytes:
    return serialize(encode_model(tiny_model(), DESC, {"golden": "tiny_v3"}))


def split(data: bytes) -> tuple[dict, bytes]:
    header_len = struct.unpack_from("<I", data, 8)[0]
    return json.loads(zlib.decompress(data[16 : 16 + header_len])), data[16 + header_len :]


def test_tiny_model_encodes_to_the_golden_bytes():
    golden, data = GOLDEN.read_bytes(), tiny_bytes()
    assert data[:8] == golden[:8] == b"NNC\x01\x03\x00\x00\x00"  # magic, version 3.0
    assert split(data) == split(golden)  # same header JSON, same sections
    if zlib.ZLIB_RUNTIME_VERSION != GOLDEN_ZLIB:
        pytest.skip(f"zlib {zlib.ZLIB_RUNTIME_VERSION} may compress the header differently from {GOLDEN_ZLIB}")
    assert data == golden
    assert len(golden) == 1653


def test_golden_file_decodes_to_what_the_model_computes_with():
    model, nnc = tiny_model(), parse(GOLDEN.read_bytes())
    header, _ = split(GOLDEN.read_bytes())
    assert [e["name"] for e in header["tensors"]] == ["fc1.weight", "fc2.weight", "fc3.weight", "fc3.bias",
                                                       "fc1.bias", "fc2.bias"]
    fresh = nn.Sequential(OrderedDict(fc1=nn.Linear(16, 32), relu1=nn.ReLU(), fc2=nn.Linear(32, 24),
                                      relu2=nn.ReLU(), fc3=nn.Linear(24, 10)))
    decoded = decode_model(nnc, model=fresh)
    for name in ("fc1", "fc2", "fc3"):
        assert torch.equal(getattr(decoded, name).weight, getattr(model, name).weight)
        assert torch.equal(getattr(decoded, name).bias, getattr(model, name).bias)
    x = torch.randn(8, 16)
    assert torch.equal(decoded(x), model(x))


if __name__ == "__main__":
    GOLDEN.write_bytes(tiny_bytes())
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")
