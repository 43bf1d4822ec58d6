"""The shipped recipes, the CLI commands and the benchmark scripts run the same code: a recipe's
figures equal the flows' (the functions `nncompress prune` / `deep-compress` and the pre-recipe
benchmark scripts call) exactly, for the same settings and seed."""
import pytest

from nncompress.flows.deep_compression import DeepCompressionConfig, deep_compress
from nncompress.flows.prune import prune_model
from nncompress.methods import method_from_dict
from nncompress.recipes import recipe_from_text, run_recipe
from nncompress.train import TrainConfig

SHORT = {"lenet300": TrainConfig(epochs=2, lr=0.05, weight_decay=1e-3)}  # both sides train with this

PRUNE = """\
model: lenet300
dataset: digits
seed: 2
stages:
  - train: {}
  - prune: {method: magnitude, sparsity: 0.9, layer_sparsity: {fc3: 0.7}, schedule: agp, finetune_epochs: 2, lr_factor: 1.0}
  - evaluate
"""


@pytest.mark.slow
def test_pruning_recipe_equals_the_prune_flow(tmp_path, digits, monkeypatch):
    monkeypatch.setattr("nncompress.api.RECOMMENDED_TRAINING", SHORT)
    result = run_recipe(recipe_from_text(PRUNE), digits, tmp_path, log=lambda _m: None)["summary"]
    method = method_from_dict({"method": "magnitude", "sparsity": 0.9, "layer_sparsity": {"fc3": 0.7}})
    _, flow = prune_model("lenet300", digits, method, schedule="agp", rounds=1, finetune_epochs=2, lr_factor=1.0, seed=2)
    assert result["dense_accuracy"] == flow["dense_accuracy"]
    assert result["test_accuracy"] == flow["pruned_accuracy"]
    assert result["nonzero_weights"] == flow["nonzero_weights"] and result["densities"] == flow["densities"]


@pytest.mark.slow
def test_deep_compression_recipe_equals_the_deep_compress_flow(tmp_path, digits, monkeypatch):
    monkeypatch.setattr("nncompress.api.RECOMMENDED_TRAINING", SHORT)
    text = PRUNE.replace("  - evaluate\n", "  - quantize: {method: kmeans, layer_bits: {'type:Linear': 4}, finetune_epochs: 1, "
                                            "lr: 0.001}\n  - encode: {}\n  - evaluate\n")
    result = run_recipe(recipe_from_text(text), digits, tmp_path, log=lambda _m: None)
    config = DeepCompressionConfig(prune=method_from_dict({"method": "magnitude", "sparsity": 0.9, "layer_sparsity": {"fc3": 0.7}}),
                                   schedule="agp", rounds=1, finetune_epochs=2, lr_factor=1.0, bits={"fc": 4},
                                   codebook_epochs=1, codebook_lr=1e-3)
    _, flow = deep_compress("lenet300", digits, config, seed=2, out=tmp_path / "flow.nnc")
    encode = result["stages"][3]
    assert result["summary"]["dense_accuracy"] == flow["dense_accuracy"]
    assert result["stages"][1]["test_accuracy"] == flow["pruned_accuracy"]
    assert encode["simulated_accuracy"] == flow["simulated_accuracy"]
    assert encode["test_accuracy"] == flow["compressed_accuracy"] and encode["exact_roundtrip"] and flow["exact_roundtrip"]
    # the same tensors; the file headers differ only in their metadata ({"recipe": ...} vs {"bits": ...})
    stream = lambda rows: [{k: v for k, v in r.items() if k not in ("bytes", "rate_pqh")} for r in rows]  # noqa: E731
    assert stream(encode["layers"]) == stream(flow["layers"])  # kept, bits, entropies: all equal
    assert abs(encode["file_bytes"] - flow["file_bytes"]) < 64
