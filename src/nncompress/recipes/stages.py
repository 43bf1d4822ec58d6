"""What each recipe stage does, on the flows' own functions (so a recipe, the CLI command and the
benchmark script run the same code): train -> `flows.control.pretrain_phase` (what
`flows.prune.dense_model` runs), prune -> `flows.prune.prune_and_retrain`, quantize -> `api.apply_`
on `flows.prune.calibration_batches` (+ fine-tuning as Deep Compression's codebook phase), encode ->
the .nnc writer and decoder of `flows.deep_compression`, evaluate -> test accuracy, weights kept,
compression, and the same-budget dense control of `flows.control`; allocate -> `flows.allocate.compress_to_budget`
(what `nncompress deep-compress --target-ratio` runs).

Each `run_<kind>(stage, run)` changes `run.model` in place (or replaces it) and returns the stage's
figures (plain JSON data, no timings: a resumed run must give the same figures).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from ..analysis.metrics import weight_densities, weight_layers
from ..api import apply_, count_nonzero_weights, training_config
from ..config import Method
from ..encode.container import Coding, read_nnc, write_nnc
from ..encode.deep_compression import round_biases_fp16_, round_codebooks_fp16_
from ..encode.model import decode_model, encode_model
from ..flows.allocate import compress_to_budget, compression_phases
from ..flows.control import TrainingPhase, pretrain_phase, pruning_phases, same_budget_control
from ..flows.deep_compression import layer_row, overhead_row
from ..flows.distill import DistillConfig
from ..flows.prune import calibration_batches, prune_and_retrain, pruning_settings
from ..quant.convert import convert_
from ..quant.fold import fold_batchnorm_
from ..train import TrainConfig, evaluate
from ..validate import UserError
from ..zoo import Dataset
from .schema import (AllocateStage, ConvertStage, EncodeStage, EvaluateStage, ExportStage, FinetuneStage, PruneStage, QuantizeStage,
                     Stage, TrainStage)


@dataclass
class Run:
    """The state a recipe run carries from stage to stage (and a checkpoint restores)."""

    name: str
    model: nn.Module
    arch: str
    dataset: Dataset
    seed: int
    out: Path
    base: TrainConfig
    dense_bytes: int
    methods: list[Method] = field(default_factory=list)  # applied so far, in order: the saved recipe
    fold_batchnorm: bool = False
    phases: list[TrainingPhase] = field(default_factory=list)  # training since the dense model (control budget)
    dense_accuracy: float | None = None
    dense_checkpoint: str | None = None  # the model after the last train stage (the control starts there)
    nnc: str | None = None  # the .nnc file the model was decoded from (encode / allocate stage)
    control_distill: dict | None = None  # the distillation the same-budget control gets ({"alpha", "temperature"})
    load_dense: Callable[[str], nn.Module] | None = None  # set by the runner: checkpoint path -> model

    def accuracy(self, model: nn.Module | None = None) -> float:
        return evaluate(model if model is not None else self.model, self.dataset.test_loader())["accuracy"]


def run_train(stage: TrainStage, run: Run) -> dict:
    overrides = stage.model_dump(exclude={"batch_size"}, exclude_none=True)
    config = training_config(run.arch, seed=run.seed, **overrides)
    pretrain_phase(config, stage.batch_size).run(run.model, run.dataset)
    run.base, run.phases = config, []
    run.dense_accuracy = run.accuracy()
    return {"test_accuracy": run.dense_accuracy, "config": {**config.__dict__, "batch_size": stage.batch_size}}


def run_prune(stage: PruneStage, run: Run) -> dict:
    method = stage.build_method()
    defaults = pruning_settings(run.arch)
    settings = {"schedule": stage.schedule or defaults.schedule,
                "rounds": stage.rounds if stage.rounds is not None else defaults.rounds,
                "finetune_epochs": stage.finetune_epochs if stage.finetune_epochs is not None else defaults.finetune_epochs,
                "lr_factor": stage.lr_factor if stage.lr_factor is not None else defaults.lr_factor}
    ctx = prune_and_retrain(run.model, method, run.dataset, run.base, batch_size=stage.batch_size, **settings)
    run.methods.append(method)
    run.phases += pruning_phases(run.base, batch_size=stage.batch_size, **settings)
    return {"method": method.to_dict(), **settings, "test_accuracy": run.accuracy(), **sparsity_figures(run.model),
            "steps": ctx.report[-1:]}


#: a snap that loses more than this (accuracy, 0..1) against the trained model gets a warning in the figures
SNAP_LOSS_WARNING = 0.05


def run_quantize(stage: QuantizeStage, run: Run) -> dict:
    method = stage.build_method()
    if "dataset_size" in {f.name for f in fields(method)} and "dataset_size" not in stage.method_fields():
        method = replace(method, dataset_size=len(run.dataset.train_y))  # N: this run's training set
    if stage.fold_batchnorm and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in run.model.modules()):
        if run.methods:
            raise UserError(f"{stage.where('fold_batchnorm')}: folding BatchNorm after {run.methods[-1].name!r} is not "
                            "supported (a saved model replays the fold first): quantize before pruning, or set "
                            "fold_batchnorm: false")
        fold_batchnorm_(run.model)
        run.fold_batchnorm = True
    run.model.eval()  # calibrate on inference activations (no dropout)
    nonzero_before = count_nonzero_weights(run.model)
    apply_(run.model, method, data=calibration_batches(run.dataset, stage.calib_images))
    figures: dict = {"method": method.to_dict(), "test_accuracy": run.accuracy()}
    if stage.finetune_epochs:
        phase = TrainingPhase(TrainConfig(epochs=stage.finetune_epochs, lr=stage.lr, optimizer=stage.optimizer,
                                          weight_decay=stage.weight_decay, seed=run.seed),
                              run.seed + 2000, stage.batch_size, "quantize fine-tune")
        phase.run(run.model, run.dataset, regularizers=method.regularizers(run.model))
        run.phases.append(phase)
        figures.update(before_finetune_accuracy=figures["test_accuracy"], test_accuracy=run.accuracy(),
                       finetune_epochs=stage.finetune_epochs, lr=stage.lr)
    rebuild, finished = method.finish(run.model)  # e.g. soft weight-sharing's snap
    run.methods += rebuild
    if finished:
        figures.update(finished=finished, trained_accuracy=figures["test_accuracy"], test_accuracy=run.accuracy())
        lost = figures["trained_accuracy"] - figures["test_accuracy"]
        if lost > SNAP_LOSS_WARNING:
            figures["warning"] = (f"finishing {method.name} lost {100 * lost:.1f} points of test accuracy "
                                  f"({100 * figures['trained_accuracy']:.2f} -> {100 * figures['test_accuracy']:.2f}): "
                                  "what its training kept soft did not survive hardening. For soft_sharing: assign: "
                                  "likelihood (the method's default) keeps the weights that the fixed pi_0 = 0.999 of "
                                  "assign: posterior prunes, and more finetune_epochs let the weights cluster first")
    if count_nonzero_weights(run.model) != nonzero_before:  # the method pruned (soft weight-sharing's zero component)
        figures.update(sparsity_figures(run.model))
    return figures


def run_finetune(stage: FinetuneStage, run: Run, index: int) -> dict:
    config = replace(run.base, epochs=stage.epochs, lr=run.base.lr * stage.lr_factor,
                     weight_decay=run.base.weight_decay if stage.weight_decay is None else stage.weight_decay)
    phase = TrainingPhase(config, run.seed + 3000 + index, stage.batch_size, f"fine-tune (stage {index + 1})")
    phase.run(run.model, run.dataset, regularizers=[r for m in run.methods for r in m.regularizers(run.model)])
    run.phases.append(phase)
    return {"epochs": stage.epochs, "lr": config.lr, "test_accuracy": run.accuracy()}


def run_convert(stage: ConvertStage, run: Run) -> dict:
    convert_(run.model)
    state_bytes = sum(t.numel() * t.element_size() for t in run.model.state_dict().values())
    return {"state_dict_bytes": state_bytes, "ratio_vs_float32": state_bytes / run.dense_bytes,
            "test_accuracy": run.accuracy()}


def run_encode(stage: EncodeStage, run: Run) -> dict:
    """Deep Compression's storage: float16 biases and codebooks, the .nnc file, decoded again;
    the run goes on with the decoded model (equal outputs checked on 256 test images)."""
    round_biases_fp16_(run.model)
    round_codebooks_fp16_(run.model)
    run.model.eval()
    simulated = run.accuracy()
    path = output_path(stage.file, run, "nnc")
    desc = {"arch": run.arch, "in_shape": list(run.dataset.in_shape), "num_classes": run.dataset.num_classes}
    nnc = encode_model(run.model, desc, {"dataset": run.dataset.name, "recipe": run.name, "seed": run.seed},
                       Coding(stage.mask_coding, stage.header_coding))
    file_bytes = write_nnc(path, nnc)
    stored = read_nnc(path)
    decoded = decode_model(stored).eval()
    x = run.dataset.test_x[:256]
    with torch.no_grad():
        exact = bool(torch.equal(decoded(x), run.model(x)))
    run.model, run.nnc = decoded, str(path.resolve())
    return {"file": _shown(path, run.out), "file_bytes": file_bytes, "compression": run.dense_bytes / file_bytes,
            "simulated_accuracy": simulated, "test_accuracy": run.accuracy(), "exact_roundtrip": exact,
            "layers": [layer_row(layer) for layer in stored.layers], "overhead": overhead_row(stored)}


def run_allocate(stage: AllocateStage, run: Run) -> dict:
    """`flows.allocate.compress_to_budget` on the dense model: the plan, pruning with retraining, weight
    sharing, codebook fine-tuning and the .nnc file within the budget; the run goes on with the model
    decoded from the file, and the control trains through the same phases (and distillation)."""
    recommended = pruning_settings(run.arch)
    config = stage.build_config({"schedule": recommended.schedule, "rounds": recommended.rounds,
                                 "finetune_epochs": recommended.finetune_epochs, "lr_factor": recommended.lr_factor})
    path = output_path(stage.file, run, "nnc")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        decoded, result = compress_to_budget(run.model, run.arch, run.dataset, run.base, config, seed=run.seed, out=path)
    except UserError as err:
        raise UserError(f"{stage.where()}: {err}") from None
    run.phases += compression_phases(run.base, config, run.seed)
    if config.distill_alpha:
        run.control_distill = {"alpha": config.distill_alpha, "temperature": config.distill_temperature}
    run.model, run.nnc = decoded.eval(), str(path.resolve())
    keys = ("budget_bytes", "planned_bytes", "file_bytes", "allocated_densities", "allocated_bits",
            "densities", "bits", "tries", "pruned_accuracy", "simulated_accuracy", "exact_roundtrip", "layers",
            "overhead", "predicted_loss", "predicted_accuracy_change")
    return {"file": _shown(path, run.out), **{k: result[k] for k in keys}, "compression": run.dense_bytes / result["file_bytes"],
            "test_accuracy": run.accuracy()}


def run_export(stage: ExportStage, run: Run) -> dict:
    from ..export.bench import compare_on_data  # onnx / onnxruntime are optional dependencies
    from ..export.graph import ort_session
    from ..export.onnx import export_onnx

    path = output_path(stage.file, run, "onnx")
    calib = [x for x, _ in calibration_batches(run.dataset, 256)]
    result = export_onnx(run.model.eval(), calib[0][:1], path, format=stage.format, calibration=calib)
    figures = {"file": _shown(path, run.out), "file_bytes": path.stat().st_size, "format": stage.format,
               "weight_range": result.weight_range}
    if stage.check_images:
        n = stage.check_images
        batches = [(run.dataset.test_x[i:i + 256], run.dataset.test_y[i:i + 256]) for i in range(0, n, 256)]
        batches = [(x[: n - i * 256], y[: n - i * 256]) for i, (x, y) in enumerate(batches) if len(y)]
        figures["check"] = compare_on_data(run.model, ort_session(str(path), threads=torch.get_num_threads()), batches)
    return figures


def run_evaluate(stage: EvaluateStage, run: Run) -> dict:
    """Test accuracy and loss, weights kept, the gap to the dense model and (control: true) to the
    same-budget dense control: the dense model trained through every training phase since."""
    measured = evaluate(run.model, run.dataset.test_loader())
    figures: dict = {"test_accuracy": measured["accuracy"], "test_loss": measured["loss"], **sparsity_figures(run.model)}
    if run.dense_accuracy is not None:
        figures.update(dense_accuracy=run.dense_accuracy, gap=measured["accuracy"] - run.dense_accuracy)
    if stage.control:
        if run.dense_checkpoint is None or run.load_dense is None:
            raise UserError(f"{stage.where('control')}: control: true compares with the dense model after a train "
                            "stage, and this recipe has none before its evaluate stage")
        distill = DistillConfig(**run.control_distill) if run.control_distill else None
        control, info = same_budget_control(run.load_dense(run.dense_checkpoint), run.dataset, run.phases, distill)
        control_accuracy = run.accuracy(control)
        figures.update(control_accuracy=control_accuracy, gap_vs_control=measured["accuracy"] - control_accuracy,
                       control_steps=info["steps"], control_epochs=info["epochs"], control_distill=run.control_distill)
    return figures


def output_path(file: str | None, run: Run, suffix: str) -> Path:
    """Where a stage writes its file: `file` (a relative path is inside the run folder, so two runs of
    one recipe in two folders never share a file a resume would decode) or `<run folder>/<recipe name>.<suffix>`."""
    return run.out / (file if file else f"{run.name}.{suffix}")


def _shown(path: Path, out: Path) -> str:
    """A written file's name as figures show it: relative to the run folder when inside it (so the
    figures of one recipe run in two folders compare equal)."""
    try:
        return str(path.resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def sparsity_figures(model: nn.Module) -> dict:
    """Non-zero Conv / Linear weights, their total, the ratio, and the density of each layer."""
    total = sum(m.weight.numel() for m in weight_layers(model).values())
    nonzero = count_nonzero_weights(model)
    return {"nonzero_weights": nonzero, "total_weights": total, "weight_compression": total / max(nonzero, 1),
            "densities": weight_densities(model)}


def run_stage(stage: Stage, run: Run, index: int) -> dict:
    """Run one stage; returns its figures."""
    if isinstance(stage, FinetuneStage):
        return run_finetune(stage, run, index)
    runners = {TrainStage: run_train, PruneStage: run_prune, QuantizeStage: run_quantize, ConvertStage: run_convert,
               AllocateStage: run_allocate, EncodeStage: run_encode, ExportStage: run_export, EvaluateStage: run_evaluate}
    return runners[type(stage)](stage, run)
