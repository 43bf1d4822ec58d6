"""Defect classes 3 and 4 (issue 11): crafted files with valid checksums raise only NncFormatError
naming what is wrong (never OverflowError / IndexError / RuntimeError / ...), decoded values are
checked for their domain (no negative relative distances, no NaN / Inf), and the CLI's `inspect`
and `decode` print one error line, never a traceback."""
import json
import struct
import sys

import numpy as np
import pytest

from nncompress.encode.container import NncFormatError, parse
from nncompress.encode.model import decode_model, decoded_state
from reliability_util import GOLDEN, assemble, nnc_bytes, split, tensor_entry

DATA = nnc_bytes()
LEGACY = (GOLDEN / "legacy_v2.nnc").read_bytes()


def crafted_v3(edit) -> bytes:
    header, blobs = split(DATA)
    edit(header, blobs)
    return assemble(header, blobs)


def crafted_legacy(edit) -> bytes:
    header, blobs = split(LEGACY)
    edit(header, blobs)
    return assemble(header, blobs, major=2)


def codebook_nan(header, blobs):
    section = tensor_entry(header, "fc1.weight")["chain"][1]["tensors"]["codebook"]["section"]
    blobs[section] = struct.pack("<f", float("nan")) + blobs[section][4:]


def bias_inf(header, blobs):
    entry = tensor_entry(header, "fc3.bias")["value"]
    entry["codec"] = {"name": "raw"}  # stored as float32 so the infinity is exact
    blobs[entry["section"]] = struct.pack("<10f", float("inf"), *[0.0] * 9)


def negative_shape(header, blobs):
    tensor_entry(header, "fc1.bias")["value"]["shape"] = [-300]


def empty_codebook(header, blobs):
    codebook = tensor_entry(header, "fc1.weight")["chain"][1]["tensors"]["codebook"]
    codebook["shape"], blobs[codebook["section"]] = [0], b""


def legacy_negative_distance(header, blobs):
    header["layers"][0]["index"]["symbols"][0] *= -1


def legacy_symbol_too_wide(header, blobs):
    header["layers"][0]["index"]["symbols"][0] = 1 << 40


def legacy_codebook_nan(header, blobs):
    blobs[2] = struct.pack("<e", float("nan")) + blobs[2][2:]


def infinity_offset(_header, _blobs):
    pass  # see test_an_infinite_offset_is_a_format_error


CASES = {
    "nan-codebook": (crafted_v3, codebook_nan, "NaN or infinite"),
    "inf-bias": (crafted_v3, bias_inf, "NaN or infinite"),
    "negative-shape": (crafted_v3, negative_shape, "shape|dimension"),
    "legacy-negative-distance": (crafted_legacy, legacy_negative_distance, "symbols|distances"),
    "legacy-wide-symbol": (crafted_legacy, legacy_symbol_too_wide, "distances|symbol"),
    "legacy-nan-codebook": (crafted_legacy, legacy_codebook_nan, "NaN or infinite"),
}


@pytest.mark.parametrize("case", CASES)
def test_crafted_files_are_format_errors_naming_the_problem(case):
    craft, edit, message = CASES[case]
    with pytest.raises(NncFormatError, match=message):
        decode_model(parse(craft(edit)))


def test_legacy_negative_distances_no_longer_wrap_around():
    """Before the fix the negative distance made numpy index from the end: a different model, no error."""
    with pytest.raises(NncFormatError, match="symbols = -2 is not an integer"):
        parse(crafted_legacy(lambda h, b: h["layers"][0]["index"]["symbols"].__setitem__(0, -2)))


def test_an_infinite_offset_is_a_format_error():
    header, blobs = split(DATA)
    text = json.dumps(header).replace('"offset": 0,', '"offset": Infinity,', 1)
    with pytest.raises(NncFormatError, match="not JSON.*Infinity"):
        parse(assemble(text.encode(), blobs))


def test_an_empty_codebook_is_a_format_error_when_decoding():
    with pytest.raises(NncFormatError, match="fc1.weight"):
        decoded_state(parse(crafted_v3(empty_codebook)))


def zero_size_layer() -> bytes:
    """A well-formed file whose only chain is a [mask, kmeans] of a 0 x 4 weight."""
    import torch
    from nncompress.encode.container import NncModel, serialize
    from nncompress.parametrize import Encoded

    keep, indices = torch.zeros(0, 4, dtype=torch.bool), torch.zeros(0, 4, dtype=torch.int64)
    chain = [Encoded("mask", {"keep": keep}, {"shape": [0, 4]}),
             Encoded("kmeans", {"codebook": torch.zeros(0), "indices": indices}, {"shape": [0, 4], "bits": 1})]
    return serialize(NncModel({"name": "empty"}, chains={"fc.weight": chain}))


@pytest.fixture
def main(monkeypatch, capsys):
    """Run `nncompress ARGS` in this process: a leaked exception escapes cli.main (and fails the
    test) instead of becoming "error: ..." and exit code 2."""
    from nncompress import cli

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["nncompress", *args])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        captured = capsys.readouterr()
        return exit_.value.code, captured.out + captured.err
    return run


BAD_FILES = {**{name: craft(edit) for name, (craft, edit, _) in CASES.items()},
             "empty-codebook": crafted_v3(empty_codebook),
             "truncated": DATA[:40] + b"\0" * 30,
             "zero-size-layer": zero_size_layer(),
             "deep-json": assemble(b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", []),
             "random-bytes": b"NNC\x01" + np.random.default_rng(0).bytes(300)}


def test_inspect_and_decode_never_print_a_traceback(tmp_path, main):
    for name, data in BAD_FILES.items():
        path = tmp_path / f"{name}.nnc"
        path.write_bytes(data)
        for command in ("inspect", "decode"):
            code, output = main(command, str(path))
            assert code == 2 and "error:" in output, (name, command, output[-2000:])
            assert "Traceback" not in output, (name, command)


def test_a_scale_that_overflows_the_decoded_weights_is_a_format_error():
    import nncompress as nc
    from nncompress.encode.container import serialize
    from nncompress.encode.model import encode_model
    from nncompress.zoo import build_model

    model = build_model("lenet300", (1, 4, 4), 10).eval()
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=None, granularity="tensor"))
    header, blobs = split(serialize(encode_model(model, {"arch": "lenet300", "in_shape": [1, 4, 4], "num_classes": 10})))
    scale = tensor_entry(header, "fc1.weight")["chain"][-1]["tensors"]["scale"]
    scale["codec"] = {"name": "raw"}
    blobs[scale["section"]] = struct.pack("<f", 3e38)  # finite, but codes x scale overflow float32
    with pytest.raises(NncFormatError, match="fc1.weight: its 'linear' stage decodes to NaN or infinite"):
        decode_model(parse(assemble(header, blobs)))


def test_nan_weights_in_a_safetensors_file_are_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    import nncompress as nc
    from nncompress.validate import UserError
    from reliability_util import save_recipe_model

    path = save_recipe_model(tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["fc2.bias"][3] = float("nan")
    with open(path, "rb") as f:
        meta_len = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(meta_len))["__metadata__"]
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(UserError, match="tensor 'fc2.bias' holds NaN or infinite values"):
        nc.load_model(path)


def linear_file() -> tuple[dict, list[bytes]]:
    import nncompress as nc
    from nncompress.encode.container import serialize
    from nncompress.encode.model import encode_model
    from nncompress.zoo import build_model

    model = build_model("lenet300", (1, 4, 4), 10).eval()
    nc.quantize_(model, nc.LinearQuant(weight_bits=4, act_bits=None, granularity="group", group_size=8))
    return split(serialize(encode_model(model, {"arch": "lenet300", "in_shape": [1, 4, 4], "num_classes": 10})))


def test_a_huge_group_size_in_a_stage_meta_is_refused_before_padding():
    """Found by benchmarks/fuzz.py: group size 2^30 made `decode` pad every row to 2^30 (GBs, 20 s)."""
    header, blobs = linear_file()
    tensor_entry(header, "fc2.weight")["chain"][-1]["meta"]["granularity"]["size"] = 1 << 30
    with pytest.raises(NncFormatError, match="fc2.weight: 'linear' stage granularity size=1073741824"):
        decoded_state(parse(assemble(header, blobs)))


def test_a_broadcasting_scale_is_refused_before_it_allocates():
    header, blobs = linear_file()
    stage = tensor_entry(header, "fc3.weight")["chain"][-1]
    stage["meta"]["granularity"] = {"kind": "tensor"}
    stage["tensors"]["codes"]["shape"] = [1, 1000]  # x scale [10, 2, 1] broadcasts
    with pytest.raises(NncFormatError, match="fc3.weight: decodes to shape"):
        decoded_state(parse(assemble(header, blobs)))
