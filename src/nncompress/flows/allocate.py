"""Automatic per-layer allocation of density and bits toward a size or accuracy budget.

Han et al. chose each layer's pruning rate and bits by hand from sensitivity curves (NeurIPS 2015
fig. 6, ICLR 2016 table 2). Here the choice is made by a program (its question and answer,
`AllocationConfig` / `Candidate` / `Allocation`, live in `allocation_plan.py`; the table in
`allocation_table.py`; fitting the written file in `budget_fit.py`):

1. Candidates: for every Conv / Linear layer, every (density d, bits b) of a grid: keep the d
   largest |w|, share the kept values among 2^b k-means centroids (`encode/cost.py`).
2. Exact cost: bytes_l(d, b), the bytes the candidate's chain adds to a real `.nnc` file (the real
   codecs: relative indices, Huffman tables, float16 codebook), plus the file's fixed part (header,
   float16 biases) measured the same way.
3. Sensitivity: Delta loss_l(d, b) and Delta accuracy_l(d, b), the change of the cross-entropy and
   accuracy on held-in training images when only layer l is replaced by its candidate, no
   retraining (the per-layer sensitivity of `analysis/sensitivity.py`, over a 2-D grid).
4. Search: assuming the per-layer damages add up, pick one candidate per layer to
      minimise sum_l Delta loss_l(c_l)  subject to  fixed + sum_l bytes_l(c_l) <= budget
   (a multiple-choice knapsack, solved exactly by dynamic programming over byte bins rounded up, so
   the planned sum never exceeds the budget); for an accuracy budget, the fewest bytes with
   sum_l Delta accuracy_l(c_l) >= -max_drop.
5. Then prune to the chosen densities with retraining, share weights with the chosen bits,
   fine-tune the codebooks, write the file; retraining changes the weights and so the streams, and
   `flows/budget_fit.py` probes the file before the fine-tuning and steps bits (or densities) down
   until it fits.
6. Optionally (`sensitivity_retrain_images` > 0; `flows/allocation_table.py`) the damage is measured *after a short retraining*
   instead of on the dense model as is: for every layer and density, the layer is pruned alone, the
   whole model is retrained one pass over that many training images (disjoint from the images the
   damage is measured on; SGD at the retraining learning rate, the pruned weights held at zero), and
   only then is each bit-width's k-means applied to the retrained layer. Pruning damage is largely
   recovered by retraining (Han et al. 2015, fig. 4), so a table measured without any retraining
   overstates the cost of low densities against that of few bits; measuring after a short
   retraining follows HAQ's reward after a short fine-tuning (Wang et al. 2019), here one short
   retraining per (layer, density). Byte costs stay those of the dense model's candidates (the
   written file is checked anyway). Measured (benchmarks/results/frontier.md): on LeNet-300-100 at
   70x it leaves the plain table's 1-bit choice unchanged on 2 of 3 seeds; what helped on the
   validation split there was leaving 1 bit out of the candidate `bits`.
7. Optionally (`distill_alpha` > 0) every retraining and codebook epoch distils the dense model
   (`flows/distill.py`); the same-budget control must then get the same distillation
   (`same_budget_control(..., distill=config.distill)`).
8. Optionally (`joint_rounds` > 0, size budgets) the additive assumption of step 4 is checked against
   the plan itself: every layer's candidates are re-measured with the other layers at their planned
   candidates (`allocation_table.PlanContext`), the knapsack is solved again on that table, and so
   on for `joint_rounds` rounds; of all the plans found (within the budget, where any is) and every
   uniform plan (one density and bits for all layers, `uniform_plans`) that fits, the one whose
   *joint* damage (every layer replaced at once, no retraining) is smallest is kept, with its table
   (the reported `predicted_loss` is then that table's sum: damages against the plan).
   Damages measured one layer at a time miss how pruning one layer makes the next more fragile: on
   LeNet-5 at 170x with context-coded masks (seed 0), the additive plan conv2 6.5% / fc1 1.6% has a
   joint loss of 0.79, the plan after 3 rounds, conv2 13% / fc1 1.1%, 0.51, and its decoded file
   tested 0.75 points better after the same retraining (benchmarks/results/frontier_context_masks.md).
   The uniform floor matters where the additive model fails outright: on a small trained BERT
   classifier (tests/test_outside_models.py), whose held-in loss is near zero, the additive plan
   pruned the MLPs to 1-2% for a joint loss of 0.38, three rounds reached 0.013, and every layer
   dense at 4 bits has 0.0014.
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from ..analysis.metrics import count_params, weight_layers
from ..encode.cost import candidate, plan_bytes
from ..encode.layout import Coding
from ..encode.deep_compression import bias_chains, round_biases_fp16_
from ..parametrize import plain_state
from ..batches import ForwardFn
from ..train import LossFn, TrainConfig, evaluate
from ..validate import UserError
from ..zoo import Dataset
from .control import TrainingPhase, codebook_phase, pruning_phases
from .deep_compression import DeepCompressionConfig, share_and_encode
from .distill import distillation_kwargs
from .allocation_plan import Allocation, AllocationConfig, Candidate
from .allocation_table import HeldIn, PlanContext, candidate_table, measure_table, sensitivity_batches
from .budget_fit import PROBE_SLACK, check_tries, fit_by_probing, step_down
from .prune import dense_model, prune_and_retrain

MAX_BINS = 4096  # byte bins of the knapsack table


def other_tensors(model: nn.Module, bias_bits: int | None = None) -> dict[str, torch.Tensor]:
    """The plain tensors of the file besides the weight chains: biases rounded to float16 as the Deep
    Compression flow stores them (none with `bias_bits`: they are chains then), BatchNorm statistics
    as they are."""
    layers = {f"{n}.weight" for n in weight_layers(model)}

    def layer_bias(key: str) -> bool:  # a Conv / Linear bias (BatchNorm's are stored as float32)
        return key.endswith(".bias") and key[:-5] + ".weight" in layers

    return {k: (v.half().float() if layer_bias(k) else v) for k, v in plain_state(model).items()
            if k not in layers and not (bias_bits and layer_bias(k))}


def _other_chains(model: nn.Module, bias_bits: int | None) -> dict[str, list]:
    """The chains of the file besides the weights': the quantized biases (`bias_bits`), if any."""
    if not bias_bits:
        return {}
    rounded = copy.deepcopy(model)
    round_biases_fp16_(rounded)  # as the flow does before quantizing them
    return bias_chains(rounded, bias_bits)


def fixed_bytes(model: nn.Module, model_desc: dict, meta: dict | None = None, bias_bits: int | None = None,
                coding: Coding = Coding()) -> int:
    """Bytes of the file besides the weight chains: header, description, the other tensors and chains."""
    return plan_bytes(model_desc, _other_chains(model, bias_bits), other_tensors(model, bias_bits), meta, coding)


def exact_plan_bytes(model: nn.Module, choice: dict[str, Candidate], model_desc: dict, meta: dict | None = None,
                     bias_bits: int | None = None, coding: Coding = Coding()) -> int:
    """Bytes of the file the plan gives before retraining: every chosen chain serialized together."""
    layers = weight_layers(model)
    chains = {f"{name}.weight": candidate(layers[name].weight, c.density, c.bits)[1] for name, c in choice.items()}
    chains.update(_other_chains(model, bias_bits))
    in_file_order = {k: chains[k] for k in plain_state(model) if k in chains}  # the header's order, as encode_model's
    return plan_bytes(model_desc, in_file_order, other_tensors(model, bias_bits), meta, coding)


def knapsack(table: dict[str, list[Candidate]], capacity: int, objective: str = "loss") -> tuple[np.ndarray, list]:
    """Min over choices of sum(objective) with sum(bytes) <= j bins, for every j (the last axis);
    returns (best per bin count, per layer the argmin arrays) and the bin size. Bytes are rounded
    *up* to bins, so a plan that fits in bins fits in bytes."""
    bin_size = max(1, math.ceil(capacity / MAX_BINS))
    cap = capacity // bin_size
    best = np.zeros(cap + 1)
    picks = []
    for rows in table.values():
        new, arg = np.full(cap + 1, np.inf), np.full(cap + 1, -1)
        for i, c in enumerate(rows):
            w = math.ceil(c.bytes / bin_size)
            if w > cap:
                continue
            value = getattr(c, objective) * (-1 if objective == "accuracy" else 1) + 1e-12 * c.bytes
            trial = best[: cap + 1 - w] + value
            better = trial < new[w:]
            new[w:][better], arg[w:][better] = trial[better], i
        best = new
        picks.append((arg, bin_size))
    return best, picks


def _backtrack(table: dict[str, list[Candidate]], picks: list, j: int) -> dict[str, Candidate]:
    choice = {}
    for name, (arg, bin_size) in reversed(list(zip(table, picks))):
        c = table[name][int(arg[j])]
        choice[name] = c
        j -= math.ceil(c.bytes / bin_size)
    return dict(reversed(list(choice.items())))


def solve(table: dict[str, list[Candidate]], *, fixed: int, budget: int | None = None,
          max_accuracy_drop: float | None = None) -> dict[str, Candidate]:
    """The allocation: least summed loss within `budget` bytes, or fewest bytes whose summed accuracy
    change stays above -max_accuracy_drop. UserError when nothing fits."""
    if budget is not None:
        best, picks = knapsack(table, max(budget - fixed, 0), "loss")
        if budget < fixed or not np.isfinite(best[-1]):
            smallest = fixed + sum(min(c.bytes for c in rows) for rows in table.values())
            raise UserError(f"a budget of {budget:,} bytes cannot be met: the smallest candidates take "
                            f"{smallest:,} bytes; allow fewer bits / lower densities or a larger budget")
        return _backtrack(table, picks, len(best) - 1)
    capacity = sum(max(c.bytes for c in rows) for rows in table.values())
    best, picks = knapsack(table, capacity, "accuracy")
    feasible = np.flatnonzero(best <= max_accuracy_drop + 1e-12)
    if not len(feasible):
        raise UserError(f"no allocation keeps the predicted accuracy drop within {max_accuracy_drop}")
    return _backtrack(table, picks, int(feasible[0]))


def allocate(model: nn.Module, dataset: Dataset, config: AllocationConfig, model_desc: dict,
             meta: dict | None = None, table: dict[str, list[Candidate]] | None = None, *,
             base: TrainConfig) -> Allocation:
    """Measure the candidate table on `model` (dense, trained) and solve for the budget. The
    per-layer costs are each measured alone (slightly pessimistic, see `encode/cost.py`), so the
    plan is re-solved with the budget corrected by the exact bytes of the whole planned file until
    the plan uses the budget (at most 5 solves); `planned_bytes` is that exact figure. A `table`
    measured before on the same model (`measure_table`) is reused. With `config.joint_rounds`, the
    plans of module step 8 are compared by their joint damage, and the best one's table is kept."""
    table = table if table is not None else measure_table(model, dataset, config, base)
    return _plan(model, HeldIn(sensitivity_batches(dataset, config)), config, model_desc, meta, table)


def plan_allocation(model: nn.Module, batches: Iterable, config: AllocationConfig, *, model_desc: dict | None = None,
                    forward_fn: ForwardFn | None = None, loss_fn: LossFn | None = None) -> Allocation:
    """Steps 1-4 (and 8) for any model: each Conv / Linear layer's (density, bits) candidates, their
    exact bytes in the `.nnc` file and their damage on `batches` (any batches `train.evaluate`
    takes: dicts with "labels" for a `transformers` classifier, or your `forward_fn` / `loss_fn`),
    solved for `config`'s budget. Nothing is trained: carry the plan out with `Allocation.methods()`
    (prune, retrain, share, fine-tune) and write with `encode_model(..., coding=config.coding)`.
    `model_desc`: the file's model description (default: the class name). An accuracy budget needs
    class targets; the short retraining of step 6 needs a zoo `Dataset` (`allocate`)."""
    if config.sensitivity_retrain_images:
        raise UserError("sensitivity_retrain_images needs a Dataset to retrain on: use flows.allocate.allocate")
    data = HeldIn(batches, forward_fn, loss_fn)
    if config.max_accuracy_drop is not None and "accuracy" not in data.evaluate(model):
        raise UserError("max_accuracy_drop needs batches with class targets; give a size budget "
                        "(target_bytes / target_ratio) instead")
    desc = model_desc if model_desc is not None else {"arch": type(model).__name__}
    table = candidate_table(model, data, config.densities, config.bits, None, config.coding)
    return _plan(model, data, config, desc, None, table)


def _plan(model: nn.Module, data: HeldIn, config: AllocationConfig, model_desc: dict, meta: dict | None,
          table: dict[str, list[Candidate]]) -> Allocation:
    """Steps 4 and 8 on a measured table: the knapsack, corrected by the exact bytes of the planned file."""
    fixed = fixed_bytes(model, model_desc, meta, config.bias_bits, config.coding)
    budget = config.budget_bytes(model)
    if budget is None:
        choice = solve(table, fixed=fixed, max_accuracy_drop=config.max_accuracy_drop)
        return Allocation(choice, fixed, None, table,
                          exact_plan_bytes(model, choice, model_desc, meta, config.bias_bits, config.coding))
    target = int(budget * (1 - config.margin))
    exact_bytes = lambda choice: exact_plan_bytes(model, choice, model_desc, meta, config.bias_bits,  # noqa: E731
                                                  config.coding)
    try:
        plans = [(table, *_solve_exactly(table, fixed, target, exact_bytes))]
    except UserError as err:
        raise UserError(f"{err} (the plan's budget is the file's {budget:,} bytes less the {config.margin:.0%} margin "
                        "kept free for the written file, AllocationConfig.margin)") from None
    if config.joint_rounds:
        context = PlanContext(model, data)
        for _ in range(config.joint_rounds):
            refined = context.context_table(table, plans[-1][1])
            plans.append((refined, *_solve_exactly(refined, fixed, target, exact_bytes)))
        fitting = [plan for plan in plans if plan[2] <= target] or plans  # a plan over the target only if none fits
        uniform = [(table, choice, None) for choice in uniform_plans(table, fixed, target)]
        for plan in sorted(fitting + uniform, key=lambda plan: context.joint_loss(plan[1])):
            if plan[2] is None:  # a uniform plan: its exact bytes, measured only when it would win
                plan = (table, plan[1], exact_bytes(plan[1]))
                if plan[2] > target:
                    continue
            plans = [plan]
            break
    table, choice, exact = plans[0]
    return Allocation(choice, fixed, budget, table, exact)


def uniform_plans(table: dict[str, list[Candidate]], fixed: int, target: int) -> list[dict[str, Candidate]]:
    """Every plan that gives all layers one (density, bits) and fits `target` by the table's bytes
    (each layer's measured alone, an upper bound of its share of the file): step 8's floor, so that
    the kept plan is never jointly worse than the best uniform setting."""
    keys = set.intersection(*({(c.density, c.bits) for c in rows} for rows in table.values())) if table else set()
    plans = []
    for key in sorted(keys):
        choice = {name: next(c for c in rows if (c.density, c.bits) == key) for name, rows in table.items()}
        if fixed + sum(c.bytes for c in choice.values()) <= target:
            plans.append(choice)
    return plans


def _solve_exactly(table: dict[str, list[Candidate]], fixed: int, target: int,
                   exact_bytes) -> tuple[dict[str, Candidate], int]:
    """The plan for `target` bytes, re-solved with the budget corrected by the exact bytes of the whole
    planned file until the plan uses the budget (at most 5 solves); returns it and its exact bytes."""
    best, solve_budget = None, target
    for _ in range(5):
        choice = solve(table, fixed=fixed, budget=solve_budget)
        exact = exact_bytes(choice)
        if exact <= target:
            best = (choice, exact)
        step = target - exact
        if 0 <= step < 16:
            break
        solve_budget += step if step > 0 else step - 16
    return best if best is not None else (choice, exact)  # the written file is checked (and bits lowered) anyway


def compression_phases(base: TrainConfig, config: AllocationConfig, seed: int) -> list[TrainingPhase]:
    """The training after pretraining that `compress_to_budget` runs (for the same-budget control;
    with distillation, pass `config.distill` to `same_budget_control` as well)."""
    return (pruning_phases(base, schedule=config.schedule, rounds=config.rounds,
                           finetune_epochs=config.finetune_epochs, lr_factor=config.lr_factor)
            + codebook_phase(config.codebook_epochs, config.codebook_lr, seed))


def compress_to_budget(model: nn.Module, arch: str, dataset: Dataset, base: TrainConfig, config: AllocationConfig, *,
                       seed: int = 0, out: str | os.PathLike | None = None,
                       table: dict[str, list[Candidate]] | None = None) -> tuple[nn.Module, dict]:
    """Allocate, prune with retraining, share weights, fine-tune codebooks, write the `.nnc` file
    within the budget (module step 5: probes of the file before the fine-tuning lower bits, or
    prune the largest layer 5% further, until it fits). `model` (dense, trained) is changed in
    place (pruned). Returns (the model decoded from the file, figures; `probes` and `tries` list
    the probed and the written sizes)."""
    desc = {"arch": arch, "in_shape": list(dataset.in_shape), "num_classes": dataset.num_classes}
    allocation = allocate(model, dataset, config, desc, table=table, base=base)
    fit_kwargs = distillation_kwargs(model, config.distill)  # the teacher: the dense model, before pruning
    method, _ = allocation.methods()
    prune_and_retrain(model, method, dataset, base, schedule=config.schedule, rounds=config.rounds,
                      finetune_epochs=config.finetune_epochs, lr_factor=config.lr_factor, fit_kwargs=fit_kwargs)
    pruned_accuracy = evaluate(model, dataset.test_loader())["accuracy"]
    bits, densities, probes = fit_by_probing(model, arch, dataset, allocation, seed, config.bias_bits, config.coding,
                                              slack=min(PROBE_SLACK, config.margin))
    dc = DeepCompressionConfig(codebook_epochs=config.codebook_epochs, codebook_lr=config.codebook_lr,
                               bias_bits=config.bias_bits, mask_coding=config.mask_coding,
                               header_coding=config.header_coding)
    tries = []
    while True:
        decoded, result = share_and_encode(copy.deepcopy(model), arch, dataset, replace(dc, bits=bits), seed=seed,
                                           out=out, fit_kwargs=fit_kwargs)
        tries.append({"bits": dict(bits), "densities": dict(densities), "file_bytes": result["file_bytes"]})
        if allocation.budget is None or result["file_bytes"] <= allocation.budget:
            break
        check_tries(len(tries), result["file_bytes"], allocation.budget)
        bits, densities = step_down(model, dataset, allocation, bits, densities,
                                   excess=result["file_bytes"] - allocation.budget)
    result.update(budget_bytes=allocation.budget, planned_bytes=allocation.planned_bytes, tries=tries,
                  probes=probes, densities=densities, allocated_densities=allocation.densities, allocated_bits=allocation.bits,
                  bits=bits,
                  pruned_accuracy=pruned_accuracy, distill={"alpha": config.distill_alpha, "temperature": config.distill_temperature},
                  compression=4 * count_params(model) / result["file_bytes"],
                  predicted_loss=sum(c.loss for c in allocation.choice.values()),
                  predicted_accuracy_change=sum(c.accuracy for c in allocation.choice.values()))
    return decoded, result


def allocated_deep_compress(spec: str, dataset: Dataset, config: AllocationConfig, *, seed: int = 0,
                            out: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """`nncompress deep-compress --target-ratio R`: dense model (trained with its recipe if a zoo name),
    then `compress_to_budget`. Returns (decoded model, figures incl. dense accuracy)."""
    model, arch, base = dense_model(spec, dataset, seed)
    dense_accuracy = evaluate(model, dataset.test_loader())["accuracy"]
    decoded, result = compress_to_budget(model, arch, dataset, base, config, seed=seed, out=out)
    result.update(model=arch, dataset=dataset.name, seed=seed, dense_accuracy=dense_accuracy,
                  phases=[p.label for p in compression_phases(base, config, seed)])
    return decoded, result
