"""The `nncompress quantize` workflow: float model -> fold BN -> PTQ -> accuracy and error analysis."""
from __future__ import annotations

import copy

from torch import nn

from ..analysis.error import output_error, weight_sqnr
from ..api import apply_, save_model
from ..config import Method
from ..quant.fold import fold_batchnorm_
from ..train import evaluate
from ..zoo import Dataset
from .prune import calibration_batches, dense_model


def quantize_copy(model: nn.Module, method: Method, calib: list) -> nn.Module:
    """A BN-folded, quantized copy of `model` (the original is left untouched)."""
    quant = copy.deepcopy(model)
    fold_batchnorm_(quant)
    return apply_(quant, method, data=calib)


def ptq_report(model: nn.Module, quant: nn.Module, dataset: Dataset) -> dict:
    """Float vs quantized accuracy, per-layer weight SQNR and output SQNR / cosine."""
    folded = copy.deepcopy(model)
    fold_batchnorm_(folded)
    batch = next(iter(dataset.test_loader(256)))
    return {"float_accuracy": evaluate(model, dataset.test_loader())["accuracy"],
            "quantized_accuracy": evaluate(quant, dataset.test_loader())["accuracy"],
            "weight_sqnr_db": weight_sqnr(quant), "output_error": output_error(folded, quant, batch)}


def quantize_model(spec: str, dataset: Dataset, method: Method, *, seed: int = 0, calib_images: int = 512,
                   out: str | None = None) -> tuple[nn.Module, nn.Module, dict]:
    """Trained float model (loaded or trained with its recipe) -> PTQ copy; returns (float, quant, report).

    `out`: save the quantized model (its recipe included, so `load_model` rebuilds it exactly)."""
    model, arch, _ = dense_model(spec, dataset, seed)
    model.eval()
    quant = quantize_copy(model, method, calibration_batches(dataset, calib_images))
    report = {"model": arch, "dataset": dataset.name, "method": method.to_dict(), **ptq_report(model, quant, dataset)}
    if out:
        save_model(quant, out, arch=arch, in_shape=dataset.in_shape, num_classes=dataset.num_classes,
                   recipe=[method], fold_batchnorm=True, dataset=dataset.name,
                   quantized_accuracy=report["quantized_accuracy"])
    return model, quant, report
