"""The `nncompress binarize` workflow: a trained float model -> a binary / ternary / LQ-Nets method ->
fine-tuning through the straight-through estimator (BinaryConnect's clipped accumulators after every
step; stochastic BinaryConnect's BatchNorm statistics re-estimated for the sign(w) network it is
evaluated and stored as) -> accuracy and real stored bytes (the converted model saved to a file,
against the float one).
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..api import save_model
from ..config import Context, Method, run_method
from ..quant.binary import BNN, BWN, BinaryConnect, XNORNet, clip_latent_weights_, has_stochastic_weights
from ..quant.bn_reestimate import reestimate_batchnorm_
from ..quant.convert import convert_
from ..quant.lqnet import LQNet
from ..quant.ternary import TTQ, TWN
from ..train import TrainConfig, evaluate, fit
from ..validate import unknown_name_error
from ..zoo import Dataset
from ..zoo.loader import TensorLoader
from .prune import calibration_batches, dense_model

#: CLI names -> the method with the lecture's settings (`act_bits` / `stochastic` select variants).
METHOD_NAMES = ("bc", "bnn", "bwn", "xnor", "twn", "ttq", "lqnet")
FINETUNE_WEIGHT_DECAY = 1e-4  # TWN's setting; binary latent weights need little decay


def binary_method(name: str, *, stochastic: bool = False, weight_bits: int = 2, act_bits: int | None = None,
                  seed: int = 0) -> Method:
    """The Method for a CLI name: bc (BinaryConnect, `stochastic`), bnn, bwn, xnor, twn, ttq, lqnet
    (`weight_bits`, `act_bits`)."""
    if name == "bc":
        return BinaryConnect(stochastic=stochastic, seed=seed)
    if name == "lqnet":
        return LQNet(weight_bits=weight_bits, act_bits=act_bits)
    makers = {"bnn": BNN, "bwn": BWN, "xnor": XNORNet, "twn": TWN, "ttq": TTQ}
    if name not in makers:
        raise unknown_name_error("binarization method", name, METHOD_NAMES)
    return makers[name]()


def finetune_config(base: TrainConfig, epochs: int, seed: int) -> TrainConfig:
    """The float model's recipe for `epochs` epochs, weight decay FINETUNE_WEIGHT_DECAY."""
    return replace(base, epochs=epochs, seed=seed, weight_decay=FINETUNE_WEIGHT_DECAY)


def binarize_and_train(model: nn.Module, method: Method, dataset: Dataset, config: TrainConfig,
                       batch_size: int = 64) -> Context:
    """Apply `method` to `model` in place (calibrating on the first training images) and fine-tune
    it, clipping BinaryConnect accumulators after every optimizer step; when the model trains with
    stochastic binary weights, its BatchNorm statistics are then re-estimated for the evaluated
    sign(w) network on the training images (`reestimate_batchnorm_`). Returns the context."""
    ctx = Context(data=calibration_batches(dataset))
    run_method(model, method, ctx)
    fit(model, dataset.train_loader(batch_size, seed=config.seed), config,
        on_step=lambda step: clip_latent_weights_(model))
    if has_stochastic_weights(model):
        norms = reestimate_batchnorm_(model, TensorLoader(dataset.train_x, dataset.train_y, batch_size))
        ctx.record(method, batchnorm_reestimated=norms, images=len(dataset.train_x))
    return ctx


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the state dict's weight tensors (the `weight` of every layer, in stored form after
    `convert_`: packed codes + scales / levels / bases), biases and BatchNorm statistics left out."""
    total = 0
    for key, tensor in model.state_dict().items():
        head, _, tail = key.partition(".parametrizations.weight.")
        if tail or key.endswith(".weight") and not _is_norm(model, key):
            total += tensor.numel() * tensor.element_size()
    return total


def _is_norm(model: nn.Module, key: str) -> bool:
    owner = key.rsplit(".", 1)[0]
    try:
        return isinstance(model.get_submodule(owner), nn.modules.batchnorm._NormBase)
    except AttributeError:
        return False


def file_bytes(model: nn.Module, recipe: list[Method], arch: str, dataset: Dataset, path: str | None = None) -> int:
    """Size in bytes of the model saved with `save_model` (to `path`, or a temporary file)."""
    if path is not None:
        return os.path.getsize(save_model(model, path, recipe=recipe, arch=arch, in_shape=dataset.in_shape,
                                          num_classes=dataset.num_classes))
    with tempfile.TemporaryDirectory() as folder:
        saved = save_model(model, Path(folder) / "model.safetensors", recipe=recipe, arch=arch,
                           in_shape=dataset.in_shape, num_classes=dataset.num_classes)
        return os.path.getsize(saved)


def measure_binary(float_model: nn.Module, model: nn.Module, method: Method, arch: str, dataset: Dataset,
                   out: str | None = None) -> dict:
    """Accuracy of the simulated model, then convert_ it and count real bytes against the float model."""
    accuracy = evaluate(model, dataset.test_loader())["accuracy"]
    model.eval()
    convert_(model)
    converted_accuracy = evaluate(model, dataset.test_loader())["accuracy"]
    float_file, binary_file = file_bytes(float_model, [], arch, dataset), file_bytes(model, [method], arch, dataset, out)
    float_w, binary_w = weight_bytes(float_model), weight_bytes(model)
    return {"test_accuracy": accuracy, "converted_accuracy": converted_accuracy, "float_file_bytes": float_file,
            "file_bytes": binary_file, "file_saving": float_file / binary_file, "float_weight_bytes": float_w,
            "weight_bytes": binary_w, "weight_saving": float_w / binary_w}


def binarize(spec: str, method: Method, dataset: Dataset, *, epochs: int | None = None, seed: int = 0,
             batch_size: int = 64, out: str | None = None) -> dict:
    """Train (or load) the float model, binarize a copy with `method`, fine-tune it for `epochs`
    (default: the float recipe's), and measure both: accuracies, stored bytes and savings."""
    float_model, arch, base = dense_model(spec, dataset, seed, batch_size)
    float_accuracy = evaluate(float_model, dataset.test_loader())["accuracy"]
    model = copy.deepcopy(float_model)
    config = finetune_config(base, epochs if epochs is not None else base.epochs, seed)
    torch.manual_seed(seed)
    ctx = binarize_and_train(model, method, dataset, config, batch_size)
    result = measure_binary(float_model, model, method, arch, dataset, out)
    return {"model": arch, "dataset": dataset.name, "method": method.to_dict(), "epochs": config.epochs,
            "seed": seed, "float_accuracy": float_accuracy, **result, "report": ctx.report}
