"""The `nncompress prune` and `nncompress sensitivity` workflows.

prune: get a trained dense model (train it with the model's recipe if a zoo name is given), prune
it with a Method on a schedule (one-shot, iterative, AGP) with retraining at 1/10 of the original
learning rate (Han et al. 2015), and report dense vs pruned accuracy and per-layer densities.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..analysis.metrics import weight_densities, weight_layers
from ..analysis.sensitivity import DEFAULT_SPARSITIES, SensitivityCurves, sensitivity_scan
from ..api import apply_, count_nonzero_weights, resolve_model, save_model, training_config
from ..config import Context, Method, Select, run_method
from ..parametrize import squash_
from ..prune.schedules import GradualPruning, prune_iteratively, rescale_dropout_, retrain_config
from ..prune.unstructured import MagnitudePrune
from ..train import TrainConfig, evaluate, fit, stderr_log
from ..validate import check_choice
from ..zoo import Dataset, TensorLoader

SCHEDULES = ("oneshot", "iterative", "agp")


@dataclass(frozen=True, kw_only=True)
class PruneSettings:
    """How a model is pruned by default: the method (as `method_from_dict` data) and the schedule.
    The CLI's `prune` / `deep-compress` defaults and the shipped recipes (recipes/han2015-*.yaml)
    are these, so the plain command reproduces the README's pruning rows."""

    method: dict = field(default_factory=lambda: {"method": "magnitude", "sparsity": 0.9})
    schedule: str = "iterative"
    rounds: int = 3
    finetune_epochs: int = 5
    lr_factor: float = 0.1


#: Chosen on a validation split (benchmarks/pruning.py --val, 3 seeds), never on test accuracy.
#: LeNet-300-100: Han's per-layer densities (8/8/26%) reached with AGP over a full-length retraining
#: at the original learning rate. LeNet-5: one global threshold, 3 prune-retrain rounds at 0.3x LR.
RECOMMENDED_PRUNING: dict[str, PruneSettings] = {
    "lenet300": PruneSettings(method={"method": "magnitude", "sparsity": 0.92, "layer_sparsity": {"fc3": 0.74}},
                              schedule="agp", rounds=1, finetune_epochs=40, lr_factor=1.0),
    "lenet5": PruneSettings(method={"method": "magnitude", "sparsity": 0.925, "scope": "global"},
                            schedule="iterative", rounds=3, finetune_epochs=6, lr_factor=0.3),
}


def pruning_settings(arch: str | None) -> PruneSettings:
    """The recommended pruning settings for a zoo architecture (generic ones for any other model)."""
    return RECOMMENDED_PRUNING.get(arch or "", PruneSettings())


def dense_model(spec: str, dataset: Dataset, seed: int, batch_size: int = 64) -> tuple[nn.Module, str, TrainConfig]:
    """A trained dense model: loaded from a file, or a zoo model trained with its recipe."""
    model, arch, trained = resolve_model(spec, dataset, seed=seed)
    config = training_config(arch, seed=seed)
    if not trained:
        fit(model, dataset.train_loader(batch_size, seed=seed), config, log=lambda m: stderr_log(f"pretrain: {m}"))
    return model, arch, config


def calibration_batches(dataset: Dataset, n_images: int = 512, batch_size: int = 128) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n_images` training images (fixed, so runs are comparable), in batches: the
    calibration data of PTQ and of data-aware pruning criteria."""
    n = min(n_images, len(dataset.train_x))
    return list(TensorLoader(dataset.train_x[:n], dataset.train_y[:n], batch_size))


def prune_and_retrain(model: nn.Module, method: Method, dataset: Dataset, base: TrainConfig, *,
                      schedule: str = "iterative", rounds: int = 3, finetune_epochs: int = 5,
                      lr_factor: float = 0.1, batch_size: int = 64, fit_kwargs: dict | None = None) -> Context:
    """Prune `model` in place on `schedule`, retraining after each step at `lr_factor` x the original
    learning rate (Han et al. 2015: 1/10); returns the context with the report. Every pruning step goes
    through `run_method` with this context, whose `data` (calibration batches) reaches data-aware
    criteria. `fit_kwargs`: extra `train.fit` keywords for every retraining (distillation's
    forward_fn / loss_fn, flows/distill.py)."""
    check_choice("schedule", schedule, SCHEDULES)
    fit_kwargs = dict(fit_kwargs or {})
    ctx = Context(data=calibration_batches(dataset))
    config = retrain_config(base, finetune_epochs, lr_factor)
    dropout_rates = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.Dropout)}

    def retrain(net: nn.Module, round_index: int = 0) -> None:
        rescale_dropout_(net, dropout_rates)
        if finetune_epochs:
            fit(net, dataset.train_loader(batch_size, seed=base.seed + 1000 + round_index), config, **fit_kwargs)

    if schedule == "oneshot":
        run_method(model, method, ctx)
        retrain(model)
    elif schedule == "iterative":
        prune_iteratively(model, method, ctx, rounds, retrain)
    else:
        steps = max(finetune_epochs, 1) * len(dataset.train_loader(batch_size))
        agp = GradualPruning(model, method, ctx, begin=0, end=int(0.75 * steps), frequency=max(steps // 100, 1))
        fit(model, dataset.train_loader(batch_size, seed=base.seed + 1000), replace(config, epochs=max(finetune_epochs, 1)),
            on_step=agp, **fit_kwargs)
    return ctx


def prune_model(spec: str, dataset: Dataset, method: Method, *, schedule: str = "iterative", rounds: int = 3,
                finetune_epochs: int = 5, lr_factor: float = 0.1, seed: int = 0,
                out: str | None = None) -> tuple[nn.Module, dict]:
    """Dense model -> pruned and retrained model, with the figures `nncompress prune --json` writes."""
    model, arch, base = dense_model(spec, dataset, seed)
    dense_acc = evaluate(model, dataset.test_loader())["accuracy"]
    ctx = prune_and_retrain(model, method, dataset, base, schedule=schedule, rounds=rounds,
                            finetune_epochs=finetune_epochs, lr_factor=lr_factor)
    squash_(model)
    total = sum(m.weight.numel() for m in weight_layers(model).values())
    nonzero = count_nonzero_weights(model)
    result = {"model": arch, "dataset": dataset.name, "method": method.to_dict(), "schedule": schedule,
              "rounds": rounds, "finetune_epochs": finetune_epochs, "lr_factor": lr_factor, "seed": seed,
              "dense_accuracy": dense_acc, "pruned_accuracy": evaluate(model, dataset.test_loader())["accuracy"],
              "nonzero_weights": nonzero, "total_weights": total, "compression": total / max(nonzero, 1),
              "densities": weight_densities(model), "steps": ctx.report}
    if out:
        save_model(model, out, arch=arch, in_shape=dataset.in_shape, num_classes=dataset.num_classes,
                   dataset=dataset.name, pruned_accuracy=result["pruned_accuracy"])
    return model, result


def layer_sensitivity(model: nn.Module, dataset: Dataset, sparsities=DEFAULT_SPARSITIES) -> SensitivityCurves:
    """Magnitude-prune each Conv / Linear layer alone (no retraining) and record test accuracy."""
    def apply_one(net: nn.Module, layer: str, sparsity: float) -> None:
        apply_(net, MagnitudePrune(sparsity=sparsity, targets=Select(include=(layer,))))

    def accuracy(net: nn.Module) -> float:
        return evaluate(net, dataset.test_loader())["accuracy"]

    return sensitivity_scan(copy.deepcopy(model), list(weight_layers(model)), apply_one, accuracy, sparsities)
