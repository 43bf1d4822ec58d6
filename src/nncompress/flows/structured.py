"""The structured-pruning workflows behind `nncompress prune --structure ... [--shrink]` and
`nncompress slim`: dense model -> (sparsity training with the method's regularizer) -> prune ->
fine-tune -> optionally shrink to a smaller dense model, with accuracy, MACs and parameters before
and after."""
from __future__ import annotations

import math
from dataclasses import replace

from torch import nn

from ..analysis.metrics import count_params, nonzero_macs, total_macs, weight_densities
from ..api import save_model
from ..config import Method
from ..prune.schedules import retrain_config
from ..prune.shrink import shrink_, shrink_summary
from ..prune.slimming import NetworkSlimming, matched_penalty
from ..train import TrainConfig, evaluate, fit
from ..zoo import Dataset
from .prune import calibration_batches, dense_model, prune_and_retrain


def sparsity_train(model: nn.Module, method: Method, dataset: Dataset, base: TrainConfig, epochs: int,
                   batch_size: int = 64) -> None:
    """Train with the method's regularizers added to the loss (group lasso, L1 on BN scales)."""
    regularizers = method.regularizers(model)
    if epochs and regularizers:
        fit(model, dataset.train_loader(batch_size, seed=base.seed + 500), replace(base, epochs=epochs),
            regularizers=regularizers)


def _measure(model: nn.Module, dataset: Dataset) -> dict:
    return {"accuracy": evaluate(model, dataset.test_loader())["accuracy"], "params": count_params(model),
            "macs": total_macs(model, dataset.in_shape), "nonzero_macs": nonzero_macs(model, dataset.in_shape)}


def _finish(model: nn.Module, dataset: Dataset, shrink: bool, result: dict, method: Method, arch: str,
            out: str | None) -> dict:
    """Shrink (optional), add the after-figures and the per-group channel counts, and save to `out`:
    the shrunk model (`shrunk=True`: `load_model` rebuilds the zoo architecture at the stored, smaller
    shapes), or the masked one with its recipe."""
    example = calibration_batches(dataset, 64, 64)[0][0]
    result["groups"] = shrink_summary(model, example)
    if shrink:
        shrink_(model, example)
    result["shrunk"] = shrink
    result["after"] = _measure(model, dataset)
    result["mac_reduction"] = result["before"]["macs"] / max(result["after"]["macs"], 1)
    if out:
        save_model(model, out, recipe=[] if shrink else [method], arch=arch, in_shape=dataset.in_shape,
                   num_classes=dataset.num_classes, dataset=dataset.name, example=example[:2], shrunk=shrink)
        result["out"] = out
    return result


def structured_prune(spec: str, dataset: Dataset, method: Method, *, schedule: str = "oneshot", rounds: int = 1,
                     finetune_epochs: int = 5, lr_factor: float = 0.1, sparsify_epochs: int = 0, seed: int = 0,
                     shrink: bool = False, out: str | None = None) -> tuple[nn.Module, dict]:
    """Dense -> sparsity training (`sparsify_epochs` with the method's regularizers) -> prune on
    `schedule` with fine-tuning -> shrink; saved to `out` (the shrunk model when `shrink`, else the
    masked one with its recipe)."""
    model, arch, base = dense_model(spec, dataset, seed)
    result = {"model": arch, "dataset": dataset.name, "method": method.to_dict(), "schedule": schedule,
              "rounds": rounds, "finetune_epochs": finetune_epochs, "sparsify_epochs": sparsify_epochs, "seed": seed,
              "before": _measure(model, dataset)}
    sparsity_train(model, method, dataset, base, sparsify_epochs)
    ctx = prune_and_retrain(model, method, dataset, base, schedule=schedule, rounds=rounds,
                            finetune_epochs=finetune_epochs, lr_factor=lr_factor)
    result["steps"] = ctx.report
    result["densities"] = weight_densities(model)
    return model, _finish(model, dataset, shrink, result, method, arch, out)


def slim_model(spec: str, dataset: Dataset, method: NetworkSlimming, *, sparsify_epochs: int = 5,
               finetune_epochs: int = 3, lr_factor: float = 0.1, seed: int = 0,
               shrink: bool = True, out: str | None = None, match_penalty: bool = False) -> tuple[nn.Module, dict]:
    """Network slimming (Liu et al. 2017): sparsity training with s * sum |gamma|, global |gamma|
    pruning, fine-tuning, shrinking; reports accuracy before pruning, right after and fine-tuned.
    `match_penalty`: s from `slimming.matched_penalty` for the sparsity-training schedule (the
    paper's drift of |gamma| in `sparsify_epochs`) instead of `method.penalty`."""
    model, arch, base = dense_model(spec, dataset, seed)
    if match_penalty:
        steps = math.ceil(len(dataset.train_x) / 64)
        method = replace(method, penalty=matched_penalty(replace(base, epochs=max(sparsify_epochs, 1)), steps))
    result = {"model": arch, "dataset": dataset.name, "method": method.to_dict(), "seed": seed,
              "penalty_matched": match_penalty,
              "sparsify_epochs": sparsify_epochs, "finetune_epochs": finetune_epochs, "before": _measure(model, dataset)}
    sparsity_train(model, method, dataset, base, sparsify_epochs)
    result["sparsity_trained_accuracy"] = evaluate(model, dataset.test_loader())["accuracy"]
    ctx = prune_and_retrain(model, method, dataset, base, schedule="oneshot", finetune_epochs=0)
    result["pruned_accuracy"] = evaluate(model, dataset.test_loader())["accuracy"]
    if finetune_epochs:
        fit(model, dataset.train_loader(64, seed=seed + 1000), retrain_config(base, finetune_epochs, lr_factor))
    result["steps"] = ctx.report
    return model, _finish(model, dataset, shrink, result, method, arch, out)
