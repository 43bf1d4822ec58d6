"""Defect class 1 (issue 11): every declared size, shape, count and group size is checked before
anything is allocated or a model is built."""
import json
import tracemalloc

import pytest

import nncompress as nc
from nncompress.encode.container import NncFormatError, parse
from nncompress.encode.model import decode_model
from nncompress import fileio
from nncompress.validate import UserError
from reliability_util import assemble, nnc_bytes, save_recipe_model, split

DATA = nnc_bytes()


def record_builds(monkeypatch, target: str) -> list:
    """Replace `target` (a build_model) by a wrapper listing the builds on a real (not meta) device."""
    import torch
    from nncompress.zoo import build_model

    built = []

    def wrapper(*args):
        if torch.get_default_device().type != "meta":
            built.append(args)
        return build_model(*args)
    monkeypatch.setattr(target, wrapper)
    return built


def peak_bytes(fn) -> int:
    """Peak Python-traced allocation of fn() (numpy / Python objects; the tests also make sure
    no model was built)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("edit, field", [({"in_shape": [1, 1500, 1500]}, "in_shape"),
                                         ({"num_classes": 20_000_000}, "num_classes"),
                                         ({"in_shape": [1, -8, 8]}, "in_shape"),
                                         ({"in_shape": "1x8x8"}, "in_shape")])
def test_nnc_model_description_is_bounded_before_building(edit, field, monkeypatch):
    header, blobs = split(DATA)
    header["model"].update(edit)
    nnc = parse(assemble(header, blobs))
    built = record_builds(monkeypatch, "nncompress.encode.model.build_model")
    with pytest.raises(NncFormatError, match=field):
        decode_model(nnc)
    assert built == []  # refused before a model was built (shapes may be computed on the meta device)


def test_nnc_model_description_that_fits_the_bounds_but_not_the_tensors_builds_nothing(monkeypatch):
    header, blobs = split(DATA)
    header["model"]["in_shape"] = [1, 64, 64]  # within bounds: fc1 would be 4096 x 300
    nnc = parse(assemble(header, blobs))
    built = record_builds(monkeypatch, "nncompress.encode.model.build_model")
    with pytest.raises(NncFormatError, match="do not fit a lenet300.*nothing was built"):
        decode_model(nnc)
    assert built == []


def test_a_header_of_millions_of_empty_objects_is_refused_before_parsing():
    header, blobs = split(DATA)
    text = json.dumps(header)[:-1] + ', "junk": [' + "{}," * (fileio.MAX_JSON_ITEMS + 10) + "{}]}"
    data = assemble(text.encode(), blobs)
    assert len(data) < 200_000  # a small file ...
    with pytest.raises(NncFormatError, match="JSON values, more than the limit"):
        parse(data)
    assert peak_bytes(lambda: pytest.raises(NncFormatError, parse, data)) < 200 << 20  # 1.9 GB before the fix


def test_deeply_nested_header_json_is_a_format_error():
    header, blobs = split(DATA)
    header["meta"]["deep"] = json.loads("[" * 200 + "]" * 200)
    with pytest.raises(NncFormatError, match="nested deeper"):
        parse(assemble(header, blobs))


@pytest.mark.parametrize("edit, field", [({"in_shape": [1, 1500, 1500]}, "in_shape"),
                                         ({"num_classes": 20_000_000}, "num_classes"),
                                         ({"in_shape": [1, 2000, 1000]}, "nothing was built")])
def test_safetensors_zoo_description_is_bounded_before_building(tmp_path, monkeypatch, edit, field):
    path = save_recipe_model(tmp_path / "m.safetensors", **edit)
    built = record_builds(monkeypatch, "nncompress.api.build_model")
    built += record_builds(monkeypatch, "nncompress.encode.model.build_model")
    with pytest.raises(UserError, match=field):
        nc.load_model(path)
    assert built == []


def test_recipe_group_size_is_bounded(tmp_path):
    path = save_recipe_model(tmp_path / "m.safetensors", [{"method": "linear", "granularity": "group",
                                                           "group_size": 10**6, "act_bits": None}])
    with pytest.raises(UserError, match=r"group_size=1000000 must be an integer in \[1, 65536\]"):
        nc.load_model(path)


def test_recipe_length_is_bounded(tmp_path):
    path = save_recipe_model(tmp_path / "m.safetensors", [{"method": "magnitude", "sparsity": 0.1}] * 200)
    with pytest.raises(UserError, match="recipe.methods' must be a list of at most 64 methods"):
        nc.load_model(path)


def test_converted_file_with_an_edited_class_count_builds_nothing(tmp_path, monkeypatch):
    """A converted file packs its codes, so its tensor shapes differ from the float model's by design;
    still no packing stores fewer than one bit per weight. `num_classes` edited from 10 to 4,000 asks
    for a 100 x 4,000 last layer the 500 stored code bytes cannot hold: refused before any build (the
    fuzzer's one memory finding, 165 MiB for a 35 KB file, came from building and calibrating it)."""
    import torch
    from nncompress.quant.convert import convert_
    from nncompress.quant.ptq import LinearQuant
    from nncompress.zoo import build_model
    from reliability_util import rewrite_metadata
    from safetensors import safe_open

    path = tmp_path / "w4.safetensors"
    model = build_model("lenet300", (1, 8, 8), 10)
    method = LinearQuant(weight_bits=4, act_bits=8)
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    nc.apply_(model, method, data=[x])
    convert_(model)
    nc.save_model(model, path, recipe=[method], example=x, arch="lenet300", in_shape=(1, 8, 8), num_classes=10)
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["nncompress"])
        assert "fc3.bias" not in f.keys()  # the bias is int32 codes too: no float tensor names the class count
    assert torch.equal(nc.load_model(path)[0].eval()(x), model.eval()(x))
    rewrite_metadata(path, json.dumps({**meta, "num_classes": 4000}))
    built = record_builds(monkeypatch, "nncompress.api.build_model")
    with pytest.raises(UserError, match="num_classes|classes"):
        nc.load_model(path)
    assert built == []
