"""Defect classes 2 and 6 (issue 11): patterns read from files cannot stall loading (RE2, linear
time), and metadata / recipe fields of the wrong type are UserErrors naming the field."""
import time

import pytest
import torch

import nncompress as nc
from nncompress.config import Select, pattern_matches
from nncompress.methods import method_from_dict
from nncompress.validate import UserError
from reliability_util import rewrite_metadata, save_recipe_model

EVIL = "re:(.*)*(.*)*(.*)*(.*)*x"


def test_catastrophic_pattern_on_a_200_char_name_takes_milliseconds():
    start = time.perf_counter()
    assert not pattern_matches(EVIL, "a" * 200)
    assert time.perf_counter() - start < 0.5  # Python's re: minutes


def test_load_model_with_a_catastrophic_pattern_in_its_recipe_finishes(tmp_path):
    name = "a" * 200
    net = torch.nn.ModuleDict({name: torch.nn.Linear(4, 4)})
    method = nc.MagnitudePrune(sparsity=0.5, targets=Select(exclude=(EVIL,)))
    nc.prune_(net, method)
    path = nc.save_model(net, tmp_path / "m.safetensors", recipe=[method])
    start = time.perf_counter()
    loaded, _ = nc.load_model(path, lambda: torch.nn.ModuleDict({name: torch.nn.Linear(4, 4)}))
    assert time.perf_counter() - start < 5
    assert torch.equal(loaded[name].weight, net[name].weight)


@pytest.mark.parametrize("spec, field", [
    ({"method": "magnitude", "sparsity": "0.5"}, "field 'sparsity'=0.5 has the wrong type: expected float"),
    ({"method": "kmeans", "layer_bits": [5, 6]}, "field 'layer_bits'"),
    ({"method": "kmeans", "layer_bits": {"fc1": "5"}}, "field 'layer_bits'"),
    ({"method": "magnitude", "sparsity": 0.5, "targets": "fc1"}, "field 'targets'='fc1' must be an object"),
    ({"method": "magnitude", "sparsity": 0.5, "targets": {"include": "re:(("}}, r"'re:\(\(' is not a valid regular"),
    ({"method": "magnitude", "sparsity": 0.5, "targets": {"include": [["fc1"]]}}, "targets.include"),
    ({"method": "magnitude", "sparsity": 0.5, "layer_sparsity": {"re:((": 0.5}}, "not a valid regular expression"),
    ({"method": "linear", "act_bits": 8.5}, "field 'act_bits'"),
    ({"method": ["magnitude"]}, "unknown method"),
    ("magnitude", "must be an object"),
])
def test_recipe_fields_of_the_wrong_type_name_the_field(spec, field):
    with pytest.raises(UserError, match=field):
        method_from_dict(spec)


@pytest.mark.parametrize("text, field", [
    ("null", "is a NoneType, expected a JSON object"),
    ("[1, 2]", "is a list, expected a JSON object"),
    ('{"arch": "lenet300", "num_classes": 10}', "in_shape"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": "10"}', "num_classes"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "recipe": []}', "field 'recipe' must be an object"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "recipe": {"methods": {"a": 1}}}', "recipe.methods"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "recipe": {"methods": [5]}}', r"recipe.methods\[0\]"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "recipe": {"converted": "yes"}}', "recipe.converted"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "tied": ["a"]}', "field 'tied'"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "example": 3}', "field 'example'"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "example": {"tensor": "nope"}}', "field 'example'"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "deep": ' + "[" * 5000 + "]" * 5000 + "}",
     "not JSON|nested deeper"),
    ('{"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10, "x": NaN}', "not JSON"),
])
def test_metadata_of_the_wrong_type_is_a_user_error_naming_the_field(tmp_path, text, field):
    path = save_recipe_model(tmp_path / "m.safetensors")
    rewrite_metadata(path, text)
    with pytest.raises(UserError, match=field):
        nc.load_model(path)
