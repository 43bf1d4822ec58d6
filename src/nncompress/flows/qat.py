"""The `nncompress qat` workflow: float model -> fold BatchNorm -> fake quantizers (STE, PACT or LSQ)
-> fine-tune the float shadow weights (and the learned clips / steps) -> `convert_` -> measure.

BatchNorm, two ways (Krishnamoorthi 2018 sec. 3.2 offers folding or keeping statistics):
- `batchnorm="fold"` (the default above 2 bits): folded *before* QAT (Jacob et al. 2018 sec. 3.2). The fake-quantized
  weights the network trains with are exactly the folded weights the integer engine and ONNX export
  run, the bias trains on the int32 grid S_W S_X, and no statistics drift. What it gives up, batch
  statistics during fine-tuning, matters little at 3 bits and above for a short fine-tune at a tenth
  of the learning rate (ResNet-20 on mnist-10k: W3A3 within 0.03 points of its control).
- `batchnorm="train"`: BatchNorm stays live (batch statistics) during QAT, as in the LSQ and PACT
  papers, and is folded afterwards into the learned per-channel grids exactly
  (quant/fold_trained.py: codes kept, steps times |f|; only the bias is rounded onto S_W S_X). That
  rounding alone cost ResNet-20 at W2A2 0.05-0.65 points, so the last epoch runs folded at a tenth of
  the rate (`qat_phases`), letting biases and steps settle on their integer grids. Needed at 2 bits,
  where a deep network trained without normalisation collapses (qat_resnet20_bn.md vs qat_resnet20.md);
  `batchnorm="auto"` (the default) picks it for 2-bit LSQ.

Oscillation (quant/oscillation.py) is tracked on LSQ weights every step and reported per epoch;
`freeze_threshold` freezes oscillating weights, `dampen` adds Nagel et al.'s dampening loss.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..api import apply_, save_model, training_config
from ..config import Method
from ..quant.convert import convert_
from ..quant.fold import batchnorm_pairs, fold_batchnorm_
from ..quant.fold_trained import check_foldable, fold_trained_batchnorm_
from ..quant.highway import highway_layer_bits, quantize_skips_, skip_bits_report
from ..quant.lsq import LSQ
from ..quant.oscillation import OscillationTracker, dampening_loss
from ..quant.pact import PACT
from ..quant.ptq import LinearQuant
from ..quant.qat import STEQuant
from ..train import TrainConfig, evaluate
from ..validate import UserError, check_choice
from ..zoo import Dataset
from .control import TrainingPhase
from .distill import DistillConfig, distillation_kwargs
from .prune import calibration_batches, dense_model

QAT_METHODS = {"ste": STEQuant, "pact": PACT, "lsq": LSQ}
BATCHNORM_MODES = ("auto", "fold", "train")  # folded before QAT, or trained live and folded after it
FOLDED_EPOCHS, FOLDED_LR_FACTOR = 1, 0.1  # batchnorm="train": the last epoch runs folded, at 0.1x the QAT rate


def edge_layers(model: nn.Module, method: Method | None = None) -> tuple[str, str]:
    """Names of the first and the last targeted layer (kept at 8 bits by LSQ and PACT)."""
    names = list((method.targets if method is not None else LinearQuant().targets).layers(model))
    if not names:
        raise UserError("the model has no Linear / Conv layer to quantize")
    return names[0], names[-1]


def make_method(name: str, weight_bits: int, act_bits: int | None, *, model: nn.Module | None = None,
                first_last_bits: int | None = 8, granularity: str = "channel", skip_bits: int | None = None,
                init: str | None = None) -> Method:
    """A QAT method by name ("ste", "pact", "lsq"); with `model`, its first and last layers get
    `first_last_bits` (weights and inputs), as in the LSQ and PACT papers, and with `skip_bits` its
    projection shortcuts get that many bits (the precision highway, quant/highway.py). `init`: how
    LSQ's steps start ("lsq" or "mse", see quant/lsq.py; LSQ only)."""
    check_choice("method", name, tuple(QAT_METHODS))
    if init is not None and name != "lsq":
        raise UserError(f"init={init!r} applies to LSQ's learned steps only, not to method {name!r}")
    layer_bits = {}
    if model is not None and first_last_bits is not None:
        layer_bits = {n: first_last_bits for n in edge_layers(model)}
    if model is not None and skip_bits is not None:
        layer_bits.update(highway_layer_bits(model, skip_bits))
    extra = {"init": init} if init is not None else {}
    return QAT_METHODS[name](weight_bits=weight_bits, act_bits=act_bits, granularity=granularity,
                             layer_bits=layer_bits, **extra)


def ptq_twin(method: Method) -> LinearQuant:
    """PTQ with the same bits and layers (LinearQuant, min-max): the baseline QAT must beat."""
    return LinearQuant(weight_bits=method.weight_bits, act_bits=method.act_bits, granularity=method.granularity,
                       layer_bits=dict(method.layer_bits), targets=method.targets)


def qat_phase(base: TrainConfig, *, epochs: int | None = None, lr_factor: float = 0.1, seed: int = 0,
              batch_size: int = 64) -> TrainingPhase:
    """QAT's fine-tuning as a training phase: `epochs` (default: a third of the float recipe's) at
    `lr_factor` x its learning rate, loader seed `seed` + 2000. `flows.control.same_budget_control`
    replays it on the float model for the same-budget control (no quantizers)."""
    config = replace(base, epochs=epochs if epochs is not None else max(base.epochs // 3, 1),
                     lr=base.lr * lr_factor, seed=seed)
    return TrainingPhase(config, seed + 2000, batch_size, "qat")


def resolve_batchnorm(method: Method, batchnorm: str) -> str:
    """"auto" -> "train" for LSQ with per-channel weights at 2 bits (weights or activations), where a
    network folded first collapses (qat_resnet20.md vs qat_resnet20_bn.md), else "fold"; "fold" /
    "train" as given."""
    check_choice("batchnorm", batchnorm, BATCHNORM_MODES)
    if batchnorm != "auto":
        return batchnorm
    bits = [b for b in (method.weight_bits, method.act_bits) if b is not None]
    low = bool(bits) and min(bits) <= 2
    return "train" if isinstance(method, LSQ) and method.granularity == "channel" and low else "fold"


def qat_phases(base: TrainConfig, *, epochs: int | None = None, lr_factor: float = 0.1, seed: int = 0,
               batch_size: int = 64, batchnorm: str = "fold") -> list[TrainingPhase]:
    """The training phases `qat_model` runs (and the same-budget control replays): `qat_phase` alone
    when BatchNorm is folded first; with batchnorm="train" its epochs but the last `FOLDED_EPOCHS`
    with BatchNorm live, then, after the fold, those at `FOLDED_LR_FACTOR` x the rate (loader and
    seed + 1), so the biases, now rounded onto the int32 grid S_W S_X, and the steps settle there."""
    phase = qat_phase(base, epochs=epochs, lr_factor=lr_factor, seed=seed, batch_size=batch_size)
    if batchnorm != "train" or phase.config.epochs <= FOLDED_EPOCHS:
        return [phase]
    live = replace(phase.config, epochs=phase.config.epochs - FOLDED_EPOCHS)
    folded = replace(phase.config, epochs=FOLDED_EPOCHS, lr=phase.config.lr * FOLDED_LR_FACTOR, seed=seed + 1)
    return [TrainingPhase(live, seed + 2000, batch_size, "qat, BatchNorm live"),
            TrainingPhase(folded, seed + 2001, batch_size, "qat, BatchNorm folded")]


def qat_finetune(model: nn.Module, method: Method, dataset: Dataset, config: TrainConfig, *, batch_size: int = 64,
                 freeze_threshold: float | None = None, dampen: float = 0.0, checkpoint: str | None = None,
                 resume: bool = False, progress: bool | None = None, teacher: nn.Module | None = None,
                 distill: DistillConfig | None = None, loader_seed: int | None = None) -> tuple[dict, OscillationTracker]:
    """Fine-tune a fake-quantized `model` in place with `method`'s regularizers; returns the training
    figures and the oscillation tracker (its state is saved next to `checkpoint` for exact resumes).
    With `teacher` and `distill`, the loss distils the teacher (the float model; flows/distill.py).
    `loader_seed`: the shuffle seed of the training loader (default `config.seed` + 2000, as
    `qat_phase`); pass a `TrainingPhase`'s own."""
    tracker = OscillationTracker(model, freeze_threshold=freeze_threshold)
    osc_path = Path(f"{checkpoint}.oscillation.pt") if checkpoint else None
    if resume and osc_path is not None and osc_path.is_file():
        tracker.load_state_dict(torch.load(osc_path, weights_only=True))

    def on_epoch(epoch: int, history) -> None:
        tracker.end_epoch(epoch, history)
        if osc_path is not None:
            torch.save(tracker.state_dict(), osc_path)

    regularizers = list(method.regularizers(model)) + ([dampening_loss(dampen)] if dampen > 0 else [])
    phase = TrainingPhase(config, config.seed + 2000 if loader_seed is None else loader_seed, batch_size, "qat")
    history = phase.run(model, dataset, on_step=tracker, on_epoch=on_epoch, regularizers=regularizers,
                        checkpoint=checkpoint, resume=resume, progress=progress, log=lambda _msg: None,
                        **distillation_kwargs(teacher, distill))
    return {"train_loss": history.train_loss, "seconds": history.seconds}, tracker


@torch.no_grad()
def engine_accuracy(model: nn.Module, dataset: Dataset) -> dict:
    """Test accuracy of the integer engine (and of ONNX Runtime when onnx/onnxruntime are installed)
    on a converted model; a model they cannot run gets the reason instead."""
    from ..runtime.engine import IntegerEngine
    from ..runtime.qvalue import UnsupportedModelError

    example = dataset.test_x[:2]
    out: dict = {}
    try:
        out["engine_accuracy"] = evaluate(IntegerEngine.from_model(model, example), dataset.test_loader())["accuracy"]
    except (UnsupportedModelError, OverflowError) as err:
        out["engine_error"] = str(err)
    try:
        from ..export.graph import ort_session
        from ..export.onnx import export_onnx

        session = ort_session(export_onnx(model, example).model, threads=1)
        correct = sum(int((torch.from_numpy(session.run(None, {"input": x.numpy()})[0]).argmax(1) == y).sum())
                      for x, y in dataset.test_loader())
        out["onnx_accuracy"] = correct / len(dataset.test_y)
    except (UserError, ImportError) as err:
        out["onnx_error"] = str(err)
    return out


def _fold_and_settle(net: nn.Module, method: Method, dataset: Dataset, pairs: list[tuple[str, str]],
                     phases: list[TrainingPhase], tuning: dict, report: dict, trained: dict,
                     oscillation: list[dict]) -> tuple[dict, list[dict]]:
    """batchnorm="train", after the live phase: fold the BatchNorms `pairs` into the learned grids,
    then run the folded `phases` (not checkpointed: a resumed run repeats them exactly). Adds
    live / folded accuracy and the fold's report to `report`; returns the training figures and
    the oscillation rows with the folded phases appended."""
    report["live_accuracy"] = evaluate(net, dataset.test_loader())["accuracy"]
    report["batchnorm_fold"] = fold_trained_batchnorm_(net, pairs)
    report["folded_accuracy"] = evaluate(net, dataset.test_loader())["accuracy"]
    for phase in phases:
        more, more_tracker = qat_finetune(net, method, dataset, phase.config, loader_seed=phase.loader_seed, **tuning)
        trained = {k: trained[k] + more[k] for k in trained}
        oscillation = oscillation + [{**row, "epoch": len(oscillation) + i + 1, "phase": phase.label}
                                     for i, row in enumerate(more_tracker.history)]
    net.eval()
    return trained, oscillation


def qat_model(spec: str, dataset: Dataset, method: Method, *, epochs: int | None = None, lr_factor: float = 0.1,
              seed: int = 0, batch_size: int = 64, freeze_threshold: float | None = None, dampen: float = 0.0,
              float_model: nn.Module | None = None, checkpoint: str | None = None, resume: bool = False,
              runtimes: bool = True, out: str | None = None, skip_bits: int | None = None,
              distill: DistillConfig | None = None, progress: bool | None = None,
              batchnorm: str = "auto") -> tuple[nn.Module, nn.Module, dict]:
    """Trained float model -> QAT copy, fine-tuned and converted; returns (float, converted, report).

    `epochs`: fine-tuning epochs (default: a third of the model's float recipe), at `lr_factor` x its
    learning rate; `float_model`: reuse a trained float model instead of loading / training one;
    `skip_bits`: quantize the residual skip paths to that many bits (8: precision highway; build the
    method with `make_method(..., skip_bits=...)` so that projection shortcuts match); `distill`:
    the fine-tuning distils the float model (Hinton et al. 2015; LSQ's sec. 3.3 distils its 2-bit
    networks), and the same-budget control must then be distilled alike; `batchnorm`: "fold" before
    QAT, or "train" it live and fold it after (module docstring; the phases: `qat_phases`), or
    "auto" (`resolve_batchnorm`). With "train" the report adds `live_accuracy` (before the fold),
    `folded_accuracy` (just after it) and `batchnorm_fold`; `qat_accuracy` is the final model's."""
    batchnorm = resolve_batchnorm(method, batchnorm)
    if float_model is None:
        float_model, arch, base = dense_model(spec, dataset, seed)
    else:
        arch, base = spec, training_config(spec, seed=seed)
    float_model.eval()
    calib = calibration_batches(dataset)
    net = copy.deepcopy(float_model)
    trained_pairs = batchnorm_pairs(net) if batchnorm == "train" else []
    batchnorm = batchnorm if trained_pairs else "fold"  # no BatchNorm: nothing to keep live
    folded = fold_batchnorm_(net) if batchnorm == "fold" else [layer for layer, _ in trained_pairs]
    apply_(net, method, data=calib)
    check_foldable(net, trained_pairs)  # before training: a grid the fold cannot take fails now, not after QAT
    if skip_bits is not None:
        quantize_skips_(net, skip_bits, calib)
    report = {"model": arch, "dataset": dataset.name, "method": method.to_dict(), "seed": seed,
              "batchnorm": batchnorm, "folded_batchnorm": folded, "float_accuracy": evaluate(float_model, dataset.test_loader())["accuracy"],
              "initial_accuracy": evaluate(net, dataset.test_loader())["accuracy"], "skip_bits": skip_bits_report(net)}
    phases = qat_phases(base, epochs=epochs, lr_factor=lr_factor, seed=seed, batch_size=batch_size, batchnorm=batchnorm)
    tuning = dict(batch_size=batch_size, freeze_threshold=freeze_threshold, dampen=dampen, progress=progress,
                  teacher=float_model, distill=distill)
    trained, tracker = qat_finetune(net, method, dataset, phases[0].config, loader_seed=phases[0].loader_seed,
                                    checkpoint=checkpoint, resume=resume, **tuning)
    oscillation = tracker.history
    net.eval()
    if trained_pairs:
        trained, oscillation = _fold_and_settle(net, method, dataset, trained_pairs, phases[1:], tuning, report,
                                                trained, oscillation)
    report.update(epochs=sum(p.config.epochs for p in phases), lr=phases[0].config.lr, phases=[p.label for p in phases],
                  **trained, distill=vars(distill) if distill else None, oscillation=oscillation,
                  qat_accuracy=evaluate(net, dataset.test_loader())["accuracy"])
    probe = dataset.test_x[:256]
    before = net(probe)
    convert_(net)
    report["converted_accuracy"] = evaluate(net, dataset.test_loader())["accuracy"]
    report["converted_exact"] = bool(torch.equal(net(probe), before))
    if runtimes:
        report.update(engine_accuracy(net, dataset))
    if out:
        save_model(net, out, arch=arch, in_shape=dataset.in_shape, num_classes=dataset.num_classes, recipe=[method],
                   fold_batchnorm=True, dataset=dataset.name, quantized_accuracy=report["converted_accuracy"])
    return float_model, net, report

