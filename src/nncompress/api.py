"""What users call: build or load a model, train it on a named dataset, save it, inspect it.

Saved models are safetensors files whose header records the zoo architecture, input shape and
class count, so `load_model(path)` rebuilds the module without unpickling anything. A compressed
model also records its recipe (the Methods applied, as plain data): loading replays the recipe on a
fixed random probe batch to rebuild the same wrappers and parametrizations, then loads every tensor
from the file, so calibrated scales, masks and codebooks come back exactly.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .analysis.metrics import count_nonzero, count_params, layer_stats, total_macs, weight_layers
from .config import Context, Method
from .fileio import load_weights, save_weights
from .methods import method_from_dict
from .parametrize import squash_  # noqa: F401  (re-exported)
from .quant.fold import fold_batchnorm_
from .train import TrainConfig, evaluate, fit, is_main_process
from .zoo import MODELS, Dataset, build_model, load_dataset

#: Recipes that reach the baselines in benchmarks/results/baselines.md (SGD + momentum, cosine LR).
RECOMMENDED_TRAINING: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(epochs=20, lr=0.05, weight_decay=1e-3),
    "lenet5": TrainConfig(epochs=15, lr=0.02, weight_decay=5e-4),
    "resnet20": TrainConfig(epochs=15, lr=0.05, weight_decay=5e-4),
    "vgg_small": TrainConfig(epochs=15, lr=0.05, weight_decay=5e-4),
    "mobilenetv2_small": TrainConfig(epochs=15, lr=0.05, weight_decay=4e-5),
    "tiny_vit": TrainConfig(epochs=30, lr=1e-3, optimizer="adam", weight_decay=1e-4),
}


def save_model(model: nn.Module, path: str | os.PathLike, *, arch: str, in_shape: tuple[int, ...],
               num_classes: int, recipe: Sequence[Method] = (), fold_batchnorm: bool = False,
               **extra: object) -> Path:
    """Write `model`'s state_dict as safetensors, with what `load_model` needs to rebuild it.

    `recipe`: the Methods applied to the freshly built zoo model, in order (after folding its
    BatchNorms when `fold_batchnorm`); `load_model` replays them before loading the tensors.
    """
    meta = {"arch": arch, "in_shape": list(in_shape), "num_classes": num_classes, **extra}
    if recipe:
        meta["recipe"] = {"fold_batchnorm": fold_batchnorm, "methods": [m.to_dict() for m in recipe]}
    return save_weights(path, model.state_dict(), meta)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Rebuild a zoo model saved by `save_model` (replaying its recipe); returns (model, metadata)."""
    state, meta = load_weights(path)
    if meta.get("arch") not in MODELS:
        raise ValueError(f"{str(path)!r} does not name a zoo architecture (metadata: {meta}); "
                         "load your own model class and call model.load_state_dict(safetensors.torch.load_file(path))")
    model = build_model(meta["arch"], tuple(meta["in_shape"]), int(meta["num_classes"]))
    if "recipe" in meta:
        replay_recipe_(model, meta["recipe"], tuple(meta["in_shape"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{str(path)!r} does not fit a {meta['arch']} rebuilt from its metadata (a compressed "
                         f"model saved without recipe=[...]?): {err}") from None
    return model, meta


def replay_recipe_(model: nn.Module, recipe: dict, in_shape: tuple[int, ...]) -> nn.Module:
    """Rebuild a recipe's structure on `model`: the values it calibrates are overwritten by the caller."""
    if recipe.get("fold_batchnorm"):
        fold_batchnorm_(model)
    probe = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    for spec in recipe.get("methods", []):
        apply_(model, method_from_dict(spec), data=[(probe, None)], train_fn=lambda m: None)
    return model


def resolve_model(spec: str, dataset: Dataset, seed: int = 0) -> tuple[nn.Module, str, bool]:
    """`spec` is a zoo name (a fresh model, seeded) or a saved file; returns (model, arch, trained)."""
    if Path(spec).suffix == ".safetensors" or Path(spec).is_file():
        model, meta = load_model(spec)
        if tuple(meta["in_shape"]) != dataset.in_shape:
            raise ValueError(f"{spec!r} was trained on inputs {tuple(meta['in_shape'])}, "
                             f"but dataset {dataset.name!r} has {dataset.in_shape}")
        return model, meta["arch"], True
    torch.manual_seed(seed)
    return build_model(spec, dataset.in_shape, dataset.num_classes), spec, False


def training_config(arch: str, **overrides: object) -> TrainConfig:
    """The recommended config for `arch`, with any non-None overrides applied."""
    base = RECOMMENDED_TRAINING.get(arch, TrainConfig())
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def summarize(model: nn.Module, dataset: Dataset) -> dict:
    """Parameters, non-zeros, MACs and test accuracy of `model` on `dataset`."""
    return {"test_accuracy": evaluate(model, dataset.test_loader())["accuracy"], "params": count_params(model),
            "nonzero": count_nonzero(model), "macs": total_macs(model, dataset.in_shape),
            "layers": [row.as_dict() for row in layer_stats(model, dataset.in_shape)]}


def train_model(arch_or_path: str, dataset_name: str = "digits", *, data_dir: str | None = None,
                download: bool = False, batch_size: int = 64, out: str | None = None,
                checkpoint: str | None = None, resume: bool = False, **overrides: object) -> tuple[nn.Module, dict]:
    """Train a zoo model (or continue a saved one) on a named dataset; returns (model, result dict)."""
    dataset = load_dataset(dataset_name, data_dir, download=download)
    model, arch, _ = resolve_model(arch_or_path, dataset, seed=int(overrides.get("seed") or 0))
    config = training_config(arch, **overrides)
    history = fit(model, dataset.train_loader(batch_size, seed=config.seed), config,
                  checkpoint=checkpoint, resume=resume)
    result = {"model": arch, "dataset": dataset.name, "epochs": config.epochs, "seconds": history.seconds,
              "train_loss": history.train_loss[-1] if history.train_loss else None,
              **summarize(model, dataset), "config": {**config.__dict__, "batch_size": batch_size}}
    if out and is_main_process():
        save_model(model, out, arch=arch, in_shape=dataset.in_shape, num_classes=dataset.num_classes,
                   dataset=dataset.name, test_accuracy=result["test_accuracy"])
    return model, result


def apply_(model: nn.Module, method: Method, *, data: Iterable | None = None,
           train_fn: Callable[[nn.Module], object] | None = None) -> nn.Module:
    """Apply any Method in place (masks / fake quantizers as parametrizations); returns `model`.

    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> _ = nc.prune_(net, nc.MagnitudePrune(sparsity=0.8, scope="global"))
        >>> round(1 - nc.count_nonzero_weights(net) / 120, 2)
        0.8
    """
    ctx = Context(data=data, train_fn=train_fn)
    method.check_context(ctx)
    method.apply(model, ctx)
    return model


#: One in-place verb per stage; both run a Method (pruning or quantization) on the model.
prune_ = apply_
quantize_ = apply_


def count_nonzero_weights(model: nn.Module) -> int:
    """Non-zero weights of the Conv / Linear layers (biases not counted)."""
    return sum(int(torch.count_nonzero(m.weight.detach())) for m in weight_layers(model).values())
