"""What may follow what in a recipe, checked on the parsed stages before anything runs. The checks read
each stage's `kind` and the two facts a stage class declares, `changes_model` and `writes_file`
(`schema.Stage`), so this module needs none of the stage classes."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..validate import UserError

#: the stage kinds that apply a registered method (`schema.MethodStage`)
METHOD_KINDS = ("prune", "quantize")


def check_stage_order(stages: Sequence) -> None:
    """Every ordering rule below, and each stage's `file:`; raises UserError naming the lines."""
    _check_nothing_changes_the_model_after_its_file(stages)
    _check_allocate_starts_dense(stages)
    _check_nothing_compresses_after_convert(stages)
    _check_control_has_a_train_stage(stages)
    for stage in stages:
        _check_file_name(stage)


def _check_nothing_changes_the_model_after_its_file(stages: Sequence) -> None:
    """The .nnc file (an encode or allocate stage's) is the run's result and the run goes on with the
    plain model decoded from it: a stage that trains or compresses after it would work on that plain
    copy (losing masks and codebooks) and leave the file behind."""
    writer = next((s for s in stages if s.writes_file), None)
    later = [s for s in stages[stages.index(writer) + 1:] if s.changes_model] if writer else []
    if later and later[0].writes_file:
        raise UserError(f"{later[0].where()}: a recipe writes one .nnc file, in its {writer.kind} stage ({writer.where()})")
    if later:
        raise UserError(f"{later[0].where()}: a {later[0].kind} stage after the {writer.kind} stage ({writer.where()}) "
                        f"would change the model decoded from the file, not the file: put it before {writer.kind} "
                        "(only export and evaluate may follow)")


def _check_allocate_starts_dense(stages: Sequence) -> None:
    """An allocate stage measures, prunes and quantizes the dense model itself; with distillation its
    teacher is the model it starts from, which the same-budget control must start from too (the
    model a train stage just wrote)."""
    for i, stage in enumerate(stages):
        if not stage.kind == "allocate":
            continue
        earlier = next((s for s in stages[:i] if s.kind in METHOD_KINDS + ("convert",)), None)
        if earlier is not None:
            raise UserError(f"{stage.where()}: allocate starts from the dense model and chooses every layer's pruning "
                            f"and bits itself; the {earlier.kind} stage before it ({earlier.where()}) would be "
                            "compressed again: remove it or use prune / quantize / encode stages instead")
        before = [s for s in stages[:i] if s.changes_model]
        if stage.distill_alpha and before and before[-1].kind != "train":
            raise UserError(f"{stage.where('distill_alpha')}: distillation in an allocate stage needs it right after a "
                            f"train stage, not after the {before[-1].kind} stage ({before[-1].where()}): the teacher, "
                            "and the same-budget control's start, is the model the train stage wrote")


def _check_control_has_a_train_stage(stages: Sequence) -> None:
    """The same-budget control starts from the model a train stage wrote: without one before it,
    `evaluate: {control: true}` could only fail after everything before it had run."""
    for i, stage in enumerate(stages):
        if stage.kind == "evaluate" and stage.control and not any(s.kind == "train" for s in stages[:i]):
            raise UserError(f"{stage.where('control')}: control: true trains the dense model after a train stage "
                            "through the same phases, and no train stage comes before it: add one (train: {}) first")


#: what each file-writing stage writes, by its file's suffix
FILE_SUFFIXES = {"encode": ".nnc", "allocate": ".nnc", "export": ".onnx"}


def _check_file_name(stage) -> None:
    """`file:` names a file of the stage's format, inside the run folder when relative."""
    file = getattr(stage, "file", None)
    if file is None:
        return
    path, suffix = Path(file), FILE_SUFFIXES[stage.kind]
    if file.endswith(("/", "\\")) or path.suffix != suffix:
        raise UserError(f"{stage.where('file')}: file {file!r} must name a {suffix} file (e.g. model{suffix})")
    if not path.is_absolute() and ".." in path.parts:
        raise UserError(f"{stage.where('file')}: a relative file {file!r} is inside the run folder (--out) and may not "
                        "climb out of it with '..'; give an absolute path to write elsewhere")


def _check_nothing_compresses_after_convert(stages: Sequence) -> None:
    """convert_ turns every transform chain into its integer codes: methods come before it."""
    convert = next((s for s in stages if s.kind == "convert"), None)
    later = next((s for s in stages[stages.index(convert) + 1:] if s.kind in METHOD_KINDS + ("allocate",)),
                 None) if convert else None
    if later is not None:
        raise UserError(f"{later.where()}: a {later.kind} stage after the convert stage ({convert.where()}): convert "
                        "stores every layer as its integer codes, so every method comes before it")
