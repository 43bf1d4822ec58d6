"""Automatic per-layer allocation (flows/allocate.py, encode/cost.py): exact byte costs, an optimal
knapsack, and a written file within the budget that decodes to the evaluated model bit for bit."""
import copy
import itertools
import os

import pytest
import torch

import nncompress as nc

from nncompress.encode.container import Coding, read_nnc
from nncompress.encode.cost import candidate, chain_bytes
from nncompress.encode.model import decode_model, encode_model
from nncompress.encode.container import serialize
from nncompress.flows.allocate import AllocationConfig, compress_to_budget, exact_plan_bytes, fixed_bytes, solve
from nncompress.flows.allocation_table import Candidate
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


@pytest.mark.parametrize("bias_bits, coding", [(None, Coding()), (8, Coding()), (8, Coding("context")),
                                               (None, Coding(header="compact")), (8, Coding("context", "compact"))])
def test_planned_bytes_are_the_written_file_bytes(bias_bits, coding):
    """A plan's exact bytes equal the file that pruning + k-means to the same candidates writes
    (biases as float16 or as 8-bit codes; masks as relative indices or context-coded; the 3.0 or the
    compact header); per-layer costs measured alone are an upper bound (each header entry
    compressed on its own)."""
    from nncompress.encode.deep_compression import quantize_biases_, round_biases_fp16_, round_codebooks_fp16_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))
    densities, bits = {"1": 0.2, "3": 0.6}, {"1": 3, "3": 5}
    choice = {n: Candidate(densities[n], bits[n], 0, 0.0, 0.0) for n in ("1", "3")}
    planned = exact_plan_bytes(model, choice, {"arch": "mlp"}, bias_bits=bias_bits, coding=coding)
    alone = fixed_bytes(model, {"arch": "mlp"}, bias_bits=bias_bits, coding=coding) + sum(
        chain_bytes(f"{n}.weight", candidate(model[int(n)].weight, densities[n], bits[n])[1], coding)
        for n in ("1", "3"))
    nc.apply_(model, nc.MagnitudePrune(sparsity=0.5, layer_sparsity={k: 1 - d for k, d in densities.items()}))
    nc.apply_(model, nc.KMeansQuant(layer_bits=bits))
    round_biases_fp16_(model)
    round_codebooks_fp16_(model)
    if bias_bits:
        quantize_biases_(model, bias_bits)
    written = len(serialize(encode_model(model, {"arch": "mlp"}, coding=coding)))
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


@pytest.mark.parametrize("args, flag", [(("--target-ratio", "30", "--bits", "fc=4"), "--bits"),
                                        (("--target-ratio", "30", "--prune-sparsity", "0.5"), "--prune-sparsity"),
                                        (("--distill-alpha", "0.5",), "--distill-alpha"),
                                        (("--joint-rounds", "2",), "--joint-rounds")])
def test_cli_refuses_hand_settings_the_allocator_would_ignore_and_allocator_options_without_a_target(main, args, flag):
    code, _, stderr = main("deep-compress", "lenet300", *args)
    assert code == 2 and flag in stderr and "--target-ratio" in stderr


def test_prune_further_takes_five_percent_of_the_largest_layer_only(digits):
    """The over-budget last resort (no layer's bits can go lower): the layer keeping the most weights
    loses 5% of its survivors by magnitude; the other layers keep their masks."""
    from nncompress.analysis.metrics import weight_layers
    from nncompress.config import Context, run_method
    from nncompress.flows.budget_fit import prune_further
    from nncompress.prune.unstructured import MagnitudePrune

    model, _, _ = dense_model("lenet300", digits, seed=0)
    densities = {"fc1": 0.1, "fc2": 0.3, "fc3": 0.5}
    run_method(model, MagnitudePrune(sparsity=0.7, layer_sparsity={n: 1 - d for n, d in densities.items()}), Context())
    kept = {n: int((m.weight != 0).sum()) for n, m in weight_layers(model).items()}
    new = prune_further(model, digits, densities)
    after = {n: int((m.weight != 0).sum()) for n, m in weight_layers(model).items()}
    largest = max(kept, key=kept.get)
    assert new[largest] == pytest.approx(densities[largest] * 0.95)
    assert after[largest] == pytest.approx(kept[largest] * 0.95, abs=2)
    assert all(after[n] == kept[n] for n in kept if n != largest)


def _small_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def test_short_retrain_holds_pruned_weights_at_zero_and_skips_the_measured_images(digits):
    """Step 6's retraining: the layer's pruned weights stay exactly zero, the kept ones move, and only
    the images after the `sensitivity_images` ones are trained on (those are poisoned with NaN here:
    touching them would make every weight NaN)."""
    from types import SimpleNamespace

    from nncompress.encode.cost import magnitude_keep
    from nncompress.flows.allocation_table import short_retrain
    from nncompress.train import TrainConfig

    x = digits.train_x[:768].clone()
    x[:256] = float("nan")
    data = SimpleNamespace(train_x=x, train_y=digits.train_y[:768])
    config = AllocationConfig(target_ratio=1.0, sensitivity_images=256, sensitivity_retrain_images=512, lr_factor=1.0)
    model = _small_mlp()
    before = model[1].weight.detach().clone()
    keep = magnitude_keep(before, 0.2)
    short_retrain(data, config, TrainConfig(lr=0.05))(model, "1", keep)
    after = model[1].weight.detach()
    assert torch.isfinite(after).all() and torch.isfinite(model[3].weight).all()
    assert torch.count_nonzero(after[~keep]) == 0
    assert not torch.equal(after[keep], before[keep])


def test_retrained_table_recovers_pruning_damage_with_the_same_bytes(digits):
    """Damage measured after a short retraining (step 6) is smaller for heavy pruning than on the
    dense model as is, the byte costs are the same candidates' and the model measured is unchanged."""
    from nncompress.flows.allocation_table import measure_table
    from nncompress.train import TrainConfig, fit

    model = _small_mlp()
    fit(model, digits.train_loader(64, seed=0), TrainConfig(epochs=8, lr=0.05), progress=False, log=lambda _: None)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grid = dict(target_ratio=1.0, densities=(1.0, 0.05), bits=(8,), sensitivity_images=512, lr_factor=1.0)
    plain = measure_table(model, digits, AllocationConfig(**grid), TrainConfig(lr=0.05))
    retrained = measure_table(model, digits, AllocationConfig(**grid, sensitivity_retrain_images=768),
                              TrainConfig(lr=0.05))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    for name in plain:
        assert [c.bytes for c in plain[name]] == [c.bytes for c in retrained[name]]
    for name in plain:  # one pass over 768 images: 12 steps
        heavy = lambda t: next(c for c in t[name] if c.density == 0.05)  # noqa: E731
        assert heavy(plain).loss > 0.4
        assert heavy(retrained).loss < 0.75 * heavy(plain).loss


def test_the_probe_predicts_the_written_file(digits, tmp_path):
    """probe_file_bytes (sharing without the codebook fine-tuning) is the written file's size exactly
    without fine-tuning, and within PROBE_SLACK of it after (indices and masks stay; centroids and
    biases move)."""
    from nncompress.flows.budget_fit import PROBE_SLACK
    from nncompress.flows.deep_compression import DeepCompressionConfig, probe_file_bytes, share_and_encode

    model, arch, _ = dense_model("lenet300", digits, seed=0)
    nc.apply_(model, nc.MagnitudePrune(sparsity=0.8))
    bits = {"fc1": 2, "fc2": 3, "fc3": 4}
    for bias_bits, masks, header in ((None, "relative", "zlib"), (8, "relative", "zlib"), (8, "context", "zlib"),
                                     (8, "context", "compact")):
        probe = probe_file_bytes(model, arch, digits, bits, seed=0, bias_bits=bias_bits, coding=Coding(masks, header))
        for epochs in (0, 1):
            config = DeepCompressionConfig(bits=bits, codebook_epochs=epochs, bias_bits=bias_bits, mask_coding=masks,
                                           header_coding=header)
            _, result = share_and_encode(copy.deepcopy(model), arch, digits, config, seed=0,
                                         out=tmp_path / f"{epochs}.nnc")
            if epochs == 0:
                assert result["file_bytes"] == probe
            assert abs(result["file_bytes"] - probe) <= PROBE_SLACK * probe


def test_probing_lowers_bits_until_the_probe_fits(monkeypatch):
    """Over budget, the layer whose planned loss per byte saved is smallest loses a bit, probe by
    probe, until a probe fits with the slack; nothing is written meanwhile."""
    from nncompress.flows import allocate as A
    from nncompress.flows import budget_fit as B

    table = {"a": [Candidate(0.5, b, 1000 * b, 1.0 / b, 0.0) for b in (2, 3, 4)],
             "b": [Candidate(0.5, b, 1000 * b, 5.0 / b, 0.0) for b in (2, 3, 4)]}
    allocation = A.Allocation({"a": table["a"][2], "b": table["b"][2]}, 0, 7000, table)
    monkeypatch.setattr(B, "probe_file_bytes", lambda model, arch, data, bits, seed, *storage: 1000 * sum(bits.values()))
    bits, densities, probes = B.fit_by_probing(None, "mlp", None, allocation, 0, slack=0.0)
    assert [p["probe_bytes"] for p in probes] == [8000, 7000]
    assert bits == {"a": 3, "b": 4} and densities == {"a": 0.5, "b": 0.5}  # "a" costs less loss per byte
    _, _, probes = B.fit_by_probing(None, "mlp", None, allocation, 0, slack=0.1)
    assert [p["probe_bytes"] for p in probes] == [8000, 6000] and probes[-1]["bits"] == {"a": 2, "b": 4}
    far = A.Allocation({"a": table["a"][2], "b": table["b"][2]}, 0, 4500, table)
    bits, _, probes = B.fit_by_probing(None, "mlp", None, far, 0, slack=0.0)  # 3.5 kB over: 4 bits in one step
    assert [p["probe_bytes"] for p in probes] == [8000, 4000] and bits == {"a": 2, "b": 2}


def test_joint_damage_and_the_plan_context_table(digits):
    """Step 8: `joint_loss` is the loss with every layer at its candidate at once; a context-table row
    is that layer's candidate against the plan without it (its dense weights)."""
    from nncompress.flows.allocation_table import PlanContext, measure_table, sensitivity_batches
    from nncompress.train import TrainConfig, fit

    model = _small_mlp()
    fit(model, digits.train_loader(64, seed=0), TrainConfig(epochs=4, lr=0.05), progress=False, log=lambda _: None)
    config = AllocationConfig(target_ratio=1.0, densities=(1.0, 0.3, 0.1), bits=(2, 4), sensitivity_images=512)
    table = measure_table(model, digits, config, TrainConfig(lr=0.05))
    batches = sensitivity_batches(digits, config)
    context = PlanContext(model, batches)
    choice = {name: rows[-1] for name, rows in table.items()}  # every layer at 10% / 4 bits
    replaced = copy.deepcopy(model)
    with torch.no_grad():
        for name, c in choice.items():
            replaced[int(name)].weight.copy_(candidate(model[int(name)].weight, c.density, c.bits)[0])
    assert context.joint_loss(choice) == pytest.approx(evaluate(replaced, batches)["loss"], abs=1e-6)
    refined = context.context_table(table, choice)
    first = next(iter(table))
    without = {n: c for n, c in choice.items() if n != first}
    for c, r in zip(table[first], refined[first]):
        assert (r.density, r.bits, r.bytes) == (c.density, c.bits, c.bytes)
        with torch.no_grad():
            replaced[int(first)].weight.copy_(candidate(model[int(first)].weight, c.density, c.bits)[0])
        expected = evaluate(replaced, batches)["loss"] - (context.joint_loss(without) if without else 0)
        assert r.loss == pytest.approx(expected, abs=1e-6)
    assert any(abs(r.loss - c.loss) > 1e-3 for c, r in zip(table[first], refined[first]))  # interactions exist


def test_joint_rounds_keep_the_plan_of_least_joint_damage_within_the_budget(digits, monkeypatch):
    """Step 8's choice among plans: a context table that makes every layer's cheapest candidate free
    gives a second plan (all cheapest); of the two, the one with the smaller joint loss is kept, with
    its table, unless its exact bytes are over the target while the other plan fits."""
    from dataclasses import replace

    from nncompress.flows import allocate as A
    from nncompress.train import TrainConfig

    model = _small_mlp()
    grid = dict(target_ratio=6.0, densities=(1.0, 0.5, 0.3, 0.2, 0.1, 0.05), bits=(2, 3, 4), sensitivity_images=256)
    base = TrainConfig(lr=0.05)
    table = A.measure_table(model, digits, A.AllocationConfig(**grid), base)
    plain = A.allocate(model, digits, A.AllocationConfig(**grid), {"arch": "mlp"}, table=table, base=base)
    cheapest = {n: min(rows, key=lambda c: c.bytes) for n, rows in table.items()}
    assert {n: (c.density, c.bits) for n, c in plain.choice.items()} != {n: (c.density, c.bits) for n, c in cheapest.items()}
    is_cheapest = lambda choice: all((c.density, c.bits) == (cheapest[n].density, cheapest[n].bits)  # noqa: E731
                                     for n, c in choice.items())

    def fake_context(prefer_cheapest: bool):
        class Context:
            def __init__(self, model, batches):
                pass

            def context_table(self, table, choice):
                return {n: [replace(c, loss=0.0 if c is cheapest[n] else 1.0) for c in rows] for n, rows in table.items()}

            def joint_loss(self, choice):
                return 0.0 if is_cheapest(choice) == prefer_cheapest else 1.0
        return Context

    joint = lambda: A.allocate(model, digits, A.AllocationConfig(**grid, joint_rounds=1), {"arch": "mlp"}, table=table,  # noqa: E731
                               base=base)
    monkeypatch.setattr(A, "PlanContext", fake_context(prefer_cheapest=True))
    chosen = joint()
    assert is_cheapest(chosen.choice) and all(c.loss == 0.0 for c in chosen.choice.values())  # the refined table kept
    monkeypatch.setattr(A, "PlanContext", fake_context(prefer_cheapest=False))
    assert joint().choice == plain.choice
    real = A.exact_plan_bytes
    target = int(A.AllocationConfig(**grid).budget_bytes(model) * (1 - 0.02))  # the default margin
    monkeypatch.setattr(A, "exact_plan_bytes", lambda model, choice, *args: target + 1 if is_cheapest(choice) else
                        real(model, choice, *args))  # the preferred plan "over the budget": the other one is kept
    monkeypatch.setattr(A, "PlanContext", fake_context(prefer_cheapest=True))
    assert joint().choice == plain.choice
    with pytest.raises(UserError, match="joint_rounds=11"):
        AllocationConfig(target_ratio=2.0, joint_rounds=11)
    with pytest.raises(UserError, match="size budgets"):
        AllocationConfig(max_accuracy_drop=0.01, joint_rounds=1)


def test_uniform_plans_are_the_settings_every_layer_has_that_fit():
    """Step 8's floor: only (density, bits) pairs every layer has, and only where fixed + the table's
    bytes fit the target (TABLE: (1.0, 8) is the one pair all layers share: 100 + 1,600 bytes)."""
    from nncompress.flows.allocate import uniform_plans

    assert uniform_plans(TABLE, fixed=100, target=1_699) == []
    plans = uniform_plans(TABLE, fixed=100, target=1_700)
    assert [{n: (c.density, c.bits) for n, c in p.items()} for p in plans] == [{n: (1.0, 8) for n in TABLE}]


def test_plan_allocation_refuses_what_it_cannot_measure():
    """Any model, any batches: the short retraining needs a Dataset, an accuracy budget needs labels."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 4))
    unlabelled = [torch.randn(8, 6)]
    mse = lambda out, target: out.pow(2).mean()  # noqa: E731 (no targets: a loss of the output alone)
    with pytest.raises(UserError, match="sensitivity_retrain_images needs a Dataset"):
        nc.plan_allocation(model, unlabelled, AllocationConfig(target_ratio=2.0, sensitivity_retrain_images=64),
                           loss_fn=mse)
    with pytest.raises(UserError, match="max_accuracy_drop needs batches with class targets"):
        nc.plan_allocation(model, unlabelled, AllocationConfig(max_accuracy_drop=0.01), loss_fn=mse)
    plan = nc.plan_allocation(model, unlabelled, AllocationConfig(target_bytes=600, bits=(4, 8)), loss_fn=mse)
    assert plan.planned_bytes <= plan.budget and set(plan.choice) == {"0"}
