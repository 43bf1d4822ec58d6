"""Automatic per-layer allocation (flows/allocate.py, encode/cost.py): exact byte costs, an optimal
knapsack, and a written file within the budget that decodes to the evaluated model bit for bit."""
import itertools
import os

import pytest
import torch

from nncompress.encode.container import read_nnc
from nncompress.encode.cost import candidate, chain_bytes
from nncompress.encode.model import decode_model, encode_model
from nncompress.encode.container import serialize
from nncompress.flows.allocate import (AllocationConfig, Candidate, compress_to_budget, exact_plan_bytes, fixed_bytes,
                                       solve)
from nncompress.flows.prune import dense_model
from nncompress.train import evaluate
from nncompress.validate import UserError

TABLE = {
    "a": [Candidate(1.0, 8, 900, 0.0, 0.0), Candidate(0.5, 4, 300, 0.05, -0.01), Candidate(0.1, 2, 60, 0.9, -0.2)],
    "b": [Candidate(1.0, 8, 500, 0.0, 0.0), Candidate(0.3, 3, 120, 0.02, -0.002), Candidate(0.1, 1, 30, 0.4, -0.05)],
    "c": [Candidate(1.0, 8, 200, 0.0, 0.0), Candidate(0.5, 2, 40, 0.3, -0.03)],
}


def brute_force(budget):
    best = None
    for combo in itertools.product(*TABLE.values()):
        if 100 + sum(c.bytes for c in combo) <= budget:
            loss = sum(c.loss for c in combo)
            best = loss if best is None or loss < best else best
    return best


@pytest.mark.parametrize("budget", [330, 450, 520, 700, 1000, 1700])
def test_knapsack_is_optimal_and_within_budget(budget):
    choice = solve(TABLE, fixed=100, budget=budget)
    assert 100 + sum(c.bytes for c in choice.values()) <= budget
    assert sum(c.loss for c in choice.values()) == pytest.approx(brute_force(budget))


def test_accuracy_budget_gives_the_fewest_bytes():
    choice = solve(TABLE, fixed=0, max_accuracy_drop=0.04)
    fewest = min(sum(c.bytes for c in combo) for combo in itertools.product(*TABLE.values())
                 if -sum(c.accuracy for c in combo) <= 0.04)
    assert sum(c.bytes for c in choice.values()) == fewest == 300 + 120 + 200  # drops 0.01 + 0.002 + 0
    assert -sum(c.accuracy for c in choice.values()) <= 0.04


def test_impossible_budget_is_a_user_error():
    with pytest.raises(UserError, match="cannot be met"):
        solve(TABLE, fixed=100, budget=200)


def test_planned_bytes_are_the_written_file_bytes():
    """A plan's exact bytes equal the file that pruning + k-means to the same candidates writes;
    per-layer costs measured alone are an upper bound (each header entry compressed on its own)."""
    import nncompress as nc
    from nncompress.encode.deep_compression import round_biases_fp16_, round_codebooks_fp16_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))
    densities, bits = {"1": 0.2, "3": 0.6}, {"1": 3, "3": 5}
    choice = {n: Candidate(densities[n], bits[n], 0, 0.0, 0.0) for n in ("1", "3")}
    planned = exact_plan_bytes(model, choice, {"arch": "mlp"})
    alone = fixed_bytes(model, {"arch": "mlp"}) + sum(
        chain_bytes(f"{n}.weight", candidate(model[int(n)].weight, densities[n], bits[n])[1]) for n in ("1", "3"))
    nc.apply_(model, nc.MagnitudePrune(sparsity=0.5, layer_sparsity={k: 1 - d for k, d in densities.items()}))
    nc.apply_(model, nc.KMeansQuant(layer_bits=bits))
    round_biases_fp16_(model)
    round_codebooks_fp16_(model)
    written = len(serialize(encode_model(model, {"arch": "mlp"})))
    assert planned == written
    assert written <= alone <= written + 2 * 150


@pytest.mark.slow
def test_written_file_respects_the_budget_and_decodes_bit_for_bit(digits, tmp_path):
    model, arch, base = dense_model("lenet300", digits, seed=0)
    config = AllocationConfig(target_bytes=5_000, densities=(1.0, 0.3, 0.1, 0.05, 0.03), bits=(2, 3, 4, 5),
                              sensitivity_images=512, rounds=1, finetune_epochs=1, codebook_epochs=1)
    out = tmp_path / "a.nnc"
    decoded, result = compress_to_budget(model, arch, digits, base, config, seed=0, out=out)
    assert os.path.getsize(out) == result["file_bytes"] <= 5_000
    assert result["planned_bytes"] <= 5_000
    assert result["exact_roundtrip"]
    again = decode_model(read_nnc(out))
    x = digits.test_x
    with torch.no_grad():
        assert torch.equal(again(x), decoded(x))
    assert evaluate(again, digits.test_loader())["accuracy"] == result["compressed_accuracy"] > 0.85
    assert set(result["densities"]) == {"fc1", "fc2", "fc3"}


@pytest.mark.slow
def test_cli_deep_compress_with_a_target_size(main, tmp_path):
    out, report = tmp_path / "t.nnc", tmp_path / "t.json"
    code, stdout, stderr = main("deep-compress", "lenet300", "--dataset", "digits", "--target-bytes", "6000",
                                "--rounds", "1", "--finetune-epochs", "1", "--codebook-epochs", "1",
                                "-o", str(out), "--json", str(report))
    assert code == 0, stderr
    import json
    result = json.loads(report.read_text())
    assert os.path.getsize(out) == result["file_bytes"] <= 6000 == result["budget_bytes"]
    assert "allocation for a budget of 6,000 B" in stdout and result["exact_roundtrip"]


def test_cli_rejects_two_budgets(main):
    code, _, stderr = main("deep-compress", "lenet300", "--target-bytes", "6000", "--target-ratio", "30")
    assert code == 2 and "exactly one budget" in stderr


def test_prune_further_takes_five_percent_of_the_largest_layer_only(digits):
    """The over-budget last resort (no layer's bits can go lower): the layer keeping the most weights
    loses 5% of its survivors by magnitude; the other layers keep their masks."""
    from nncompress.analysis.metrics import weight_layers
    from nncompress.config import Context, run_method
    from nncompress.flows.allocate import _prune_further
    from nncompress.prune.unstructured import MagnitudePrune

    model, _, _ = dense_model("lenet300", digits, seed=0)
    densities = {"fc1": 0.1, "fc2": 0.3, "fc3": 0.5}
    run_method(model, MagnitudePrune(sparsity=0.7, layer_sparsity={n: 1 - d for n, d in densities.items()}), Context())
    kept = {n: int((m.weight != 0).sum()) for n, m in weight_layers(model).items()}
    new = _prune_further(model, digits, densities)
    after = {n: int((m.weight != 0).sum()) for n, m in weight_layers(model).items()}
    largest = max(kept, key=kept.get)
    assert new[largest] == pytest.approx(densities[largest] * 0.95)
    assert after[largest] == pytest.approx(kept[largest] * 0.95, abs=2)
    assert all(after[n] == kept[n] for n in kept if n != largest)
