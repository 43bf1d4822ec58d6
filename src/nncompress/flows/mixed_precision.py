"""The `nncompress mixed-precision` and `nncompress fp8-train` workflows.

mixed-precision: a trained float model -> learned per-layer weight bit-widths (NIPQ's three stages,
or DiffQ's size-penalised training then rounding) -> real linear quantization fine-tuned -> per-layer
bits, average bits (weighted by parameter count), weight size and accuracy; or the post-training
bit-width search baseline (`bitsearch_model`). fp8-train: the same model trained twice from the same
initialisation, with the same seed and schedule, in float32 and in FP8 (`FP8Training`).
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from ..api import apply_, resolve_model, training_config
from ..config import Method
from ..quant.bitsearch import DEFAULT_OPTIONS, apply_bits_, search_bits
from ..quant.fp8_training import FP8Training
from ..quant.mixed_precision import (NIPQ, DiffQ, bits_report, candidate_pull, set_bits_, snap_to_candidates,
                                     to_real_quantization_, weighted_average)
from ..quant.noise import bit_step_, layer_params, learned_bits, pseudo_noise
from ..train import TrainConfig, evaluate, fit
from ..validate import UserError, check_int_range, check_positive
from ..zoo import Dataset
from .control import TrainingPhase
from .prune import calibration_batches, dense_model

FLOAT_BITS = 32


def weight_size(bits: dict, counts: dict) -> dict[str, float]:
    """Bytes of the quantized weights (sum b_i N_i / 8) and of the same weights in float32."""
    quantized = sum(bits[n] * counts[n] for n in bits) / 8
    dense = sum(counts.values()) * FLOAT_BITS / 8
    return {"weight_bytes": quantized, "float_weight_bytes": dense, "compression": dense / quantized}


def _accuracy(model: nn.Module, dataset: Dataset) -> float:
    return evaluate(model, dataset.test_loader())["accuracy"]


def mixed_precision_phases(base: TrainConfig, *, epochs: tuple[int, int, int] = (3, 1, 2), lr_factor: float = 0.1,
                           batch_size: int = 64, nipq: bool = True) -> list[TrainingPhase]:
    """The training phases `learn_mixed_precision` runs: stage 1 (noise, learned bits; loader seed
    seed+100), NIPQ's stage 2 (noise + pull to the candidates; seed+200) and stage 3 (real
    quantization fine-tune; seed+300), each at `lr_factor` x the base learning rate. A stage of 0
    epochs is left out. `flows.control.same_budget_control` replays them on the float model."""
    for i, e in enumerate(epochs):
        check_int_range(f"epochs[{i}]", e, 0, 10_000)
    config = replace(base, lr=base.lr * lr_factor)
    stages = [(epochs[0], 100, "stage 1: noise"), (epochs[1] if nipq else 0, 200, "stage 2: pull"),
              (epochs[2], 300, "stage 3: fine-tune")]
    return [TrainingPhase(replace(config, epochs=e), base.seed + offset, batch_size, label)
            for e, offset, label in stages if e]


def _phase(phases: list[TrainingPhase], label: str) -> TrainingPhase | None:
    return next((p for p in phases if p.label.startswith(label)), None)


def _noise_fit(model: nn.Module, dataset: Dataset, phase: TrainingPhase | None, regularizers: list, bit_lr: float,
               progress: bool | None) -> None:
    """Train with pseudo-quantization noise; after every optimizer step the bits take their own
    SGD step (`bit_step_`) and are kept in range."""
    if phase is None:
        return
    with pseudo_noise(model):
        phase.run(model, dataset, regularizers=regularizers, on_step=lambda _: bit_step_(model, bit_lr),
                  progress=progress)


def learn_mixed_precision(model: nn.Module, dataset: Dataset, method: Method, base: TrainConfig, *,
                          epochs: tuple[int, int, int] = (3, 1, 2), lr_factor: float = 0.1, bit_lr: float = 0.05,
                          pull: float = 1.0, batch_size: int = 64, progress: bool | None = None) -> dict:
    """Run NIPQ (stages 1-3) or DiffQ (noise training, round, fine-tune) on a trained `model` in place.

    `epochs`: (stage 1, stage 2, stage 3) for NIPQ; DiffQ uses stage 1 and stage 3 (no candidate set).
    The model's learning rate is `lr_factor` x the base one; the bits get `bit_lr` (see `bit_step_`).
    The phases are `mixed_precision_phases(base, ...)`: the same-budget control replays them.
    Returns the report: per-stage average bits and accuracy, final per-layer bits, size, accuracy.
    """
    if not isinstance(method, (NIPQ, DiffQ)):
        raise UserError(f"learn_mixed_precision takes NIPQ or DiffQ, got {type(method).__name__}")
    check_positive("bit_lr", bit_lr)
    phases = mixed_precision_phases(base, epochs=epochs, lr_factor=lr_factor, batch_size=batch_size,
                                    nipq=isinstance(method, NIPQ))
    apply_(model, method)
    counts = layer_params(model)
    regs = method.regularizers(model)
    report: dict = {"method": method.to_dict(), "params": counts, "stages": []}
    _noise_fit(model, dataset, _phase(phases, "stage 1"), regs, bit_lr, progress)
    report["stages"].append({"stage": 1, **bits_report(model), "accuracy_round_b": _accuracy(model, dataset)})
    if isinstance(method, NIPQ):
        _noise_fit(model, dataset, _phase(phases, "stage 2"), [*regs, candidate_pull(method.candidates, pull)],
                   bit_lr, progress)
        chosen = snap_to_candidates(learned_bits(model), counts, method.candidates, method.target_bits)
        set_bits_(model, chosen)
        report["stages"].append({"stage": 2, "bits": chosen, "average_bits": weighted_average(chosen, counts),
                                 "accuracy_before_finetune": _accuracy(model, dataset)})
    else:
        chosen = {n: int(round(b)) for n, b in learned_bits(model).items()}
    to_real_quantization_(model, chosen)
    finetune = _phase(phases, "stage 3")
    if finetune is not None:
        finetune.run(model, dataset, progress=progress)
    accuracy = _accuracy(model, dataset)
    report["stages"].append({"stage": 3, "accuracy": accuracy})
    report.update({"bits": chosen, "average_bits": weighted_average(chosen, counts), "accuracy": accuracy,
                   **weight_size(chosen, counts)})
    return report


def mixed_precision_model(spec: str, dataset: Dataset, method: Method, *, seed: int = 0,
                          epochs: tuple[int, int, int] = (3, 1, 2), **kwargs) -> tuple[nn.Module, dict]:
    """Trained float model (loaded, or a zoo model trained with its recipe) -> learned mixed precision."""
    model, arch, base = dense_model(spec, dataset, seed)
    float_accuracy = _accuracy(model, dataset)
    report = learn_mixed_precision(model, dataset, method, base, epochs=epochs, **kwargs)
    return model, {"model": arch, "dataset": dataset.name, "float_accuracy": float_accuracy, **report}


def bitsearch_model(model: nn.Module, dataset: Dataset, budget: float, levels=("network", "layer", "channel"), *,
                    options=DEFAULT_OPTIONS, calib_images: int = 1024) -> dict:
    """The PTQ bit-width search baseline on a trained model (left unchanged): for each level, the
    allocation under `budget` average bits and the accuracy of the weight-quantized copy."""
    calib = calibration_batches(dataset, calib_images)

    def loss(net: nn.Module) -> float:
        return evaluate(net, calib)["loss"]

    work = copy.deepcopy(model).eval()
    layers = {n: m for n, m in work.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    costs = None
    rows = {}
    for level in levels:
        found = search_bits(work, layers, budget, level, loss, options, costs)
        costs = found["layer_costs"] or costs
        quant = copy.deepcopy(work)
        apply_bits_({n: m for n, m in quant.named_modules() if n in layers}, found["bits"], level)
        per_layer = _per_layer_average(found["bits"], layers, level)
        rows[level] = {"average_bits": found["average_bits"], "accuracy": _accuracy(quant, dataset), "bits": per_layer}
    return rows


def _per_layer_average(bits: dict, layers: dict[str, nn.Module], level: str) -> dict[str, float]:
    if level != "channel":
        return {n: float(bits[n]) for n in layers}
    return {n: sum(bits[(n, c)] for c in range(m.weight.shape[0])) / m.weight.shape[0] for n, m in layers.items()}


def fp8_train_model(arch: str, dataset: Dataset, method: FP8Training | None = None, *, seed: int = 0,
                    epochs: int | None = None, batch_size: int = 64, progress: bool | None = None) -> dict:
    """Train `arch` from the same initialisation with the same seed and schedule in float32 and in FP8;
    returns both accuracies, their difference and the training times."""
    method = method or FP8Training()
    model, arch, trained = resolve_model(arch, dataset, seed=seed)
    if trained:
        raise UserError("fp8-train trains from scratch: give a zoo model name, not a saved model")
    config = training_config(arch, seed=seed, epochs=epochs)
    init = copy.deepcopy(model.state_dict())
    results = {}
    for name in ("float32", "fp8"):
        net = copy.deepcopy(model)
        net.load_state_dict(init)
        if name == "fp8":
            apply_(net, method)
        history = fit(net, dataset.train_loader(batch_size, seed=seed), config, progress=progress)
        results[name] = {"accuracy": _accuracy(net, dataset), "seconds": history.seconds,
                         "final_train_loss": history.train_loss[-1] if history.train_loss else None}
    return {"model": arch, "dataset": dataset.name, "seed": seed, "epochs": config.epochs, "method": method.to_dict(),
            **results, "difference": results["fp8"]["accuracy"] - results["float32"]["accuracy"],
            "threads": torch.get_num_threads()}
