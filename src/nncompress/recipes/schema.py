"""The recipe schema: what a YAML recipe may say, checked (pydantic) before anything runs.

```yaml
name: han2015-lenet300
model: lenet300            # a zoo model, or a saved .safetensors file
dataset: mnist-10k         # --dataset overrides it
seed: 0
stages:
  - train: {}              # the model's recommended training (api.RECOMMENDED_TRAINING), fields override it
  - prune: {method: magnitude, sparsity: 0.92, layer_sparsity: {fc3: 0.74}, schedule: agp, finetune_epochs: 40, lr_factor: 1.0}
  - evaluate: {}
```

A stage is a one-key mapping `kind: {options}`. `prune` and `quantize` name any registered Method
(`nncompress methods`) and take its fields beside the stage's own options; the fields are checked by
`methods.method_from_dict` (the same check a saved model's recipe gets), so a method registered in
`methods.py` is reachable from a recipe with nothing added here (a method field named like a stage
option goes under `fields: {...}`). `allocate: {target_ratio: 170}` chooses every layer's density and
bits instead (`flows/allocate.py`). Every error names the recipe line, the value and the allowed values.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ..config import Method
from ..flows.allocation_plan import AllocationConfig
from ..methods import METHODS, method_from_dict
from ..prune.unstructured import SparsityPrune
from ..validate import UserError, did_you_mean
from ..zoo import DATASETS, MODELS
from .loader import Marked, dotted, load_yaml, load_yaml_text
from .order import check_stage_order

MAX_STAGES = 64


class Stage(BaseModel):
    """Base of the stage options; `line(field)` is the recipe line of a field (or of the stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str] = ""
    changes_model: ClassVar[bool] = True  # False: the model leaves the stage as it came (a file written before still holds it)
    writes_file: ClassVar[bool] = False  # True: the stage writes the run's .nnc file and goes on with its decoded model
    _marked: Marked | None = PrivateAttr(default=None)
    _path: tuple = PrivateAttr(default=())

    def where(self, field: str | None = None) -> str:
        """'recipe.yaml line 9 (stages[1].prune.sparsity)'."""
        path = self._path + ((field,) if field else ())
        return self._marked.where(path) if self._marked is not None else dotted(path)


class TrainStage(Stage):
    """Train the model; options left out are the model's recommended training (`api.training_config`)."""

    kind: ClassVar[str] = "train"
    epochs: int | None = Field(None, ge=1, le=100_000)
    lr: float | None = Field(None, gt=0, le=100)
    optimizer: Literal["sgd", "adam"] | None = None
    momentum: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0, le=1)
    schedule: Literal["cosine", "step", "constant"] | None = None
    batch_size: int = Field(64, ge=1, le=65_536)


class MethodStage(Stage):
    """A stage that applies one registered Method: `method: NAME` plus the method's fields."""

    model_config = ConfigDict(extra="allow", frozen=True)
    method: str
    fields: dict[str, Any] | None = None  # method fields whose names are also stage options go here

    def method_names(self) -> list[str]:
        return family(self.kind)

    def method_fields(self) -> dict[str, Any]:
        """The method's fields: those under `fields:` and those given beside the stage options."""
        extra = self.model_extra or {}
        for key in extra.keys() & (self.fields or {}).keys():
            raise UserError(f"{self.where(key)}: method field {key!r} is given twice (here and under 'fields:')")
        return {**(self.fields or {}), **extra}

    def method_spec(self) -> dict[str, Any]:
        return {"method": self.method, **self.method_fields()}

    def build_method(self) -> Method:
        """The Method, checked by `method_from_dict`; errors name the recipe line of the field."""
        names = self.method_names()
        if self.method in METHODS and self.method not in names:
            other = "quantize" if self.kind == "prune" else "prune"
            raise UserError(f"{self.where('method')}: {self.method!r} is a {other} method: put it in a {other} stage")
        if self.method not in names:
            raise UserError(f"{self.where('method')}: unknown {self.kind} method {self.method!r}."
                            f"{did_you_mean(self.method, names)} Allowed: {', '.join(names)}")
        cls = METHODS[self.method]
        fields = [f.name for f in dataclasses.fields(cls)]
        options = [name for name in type(self).model_fields if name not in ("method", "fields")]
        for key in self.method_fields():
            if key not in fields:
                raise UserError(f"{self.where(key)}: {key!r} is neither a {self.kind} stage option nor a field of "
                                f"method {self.method!r}.{did_you_mean(key, fields + options)} Stage options: "
                                f"{', '.join(options)}; {self.method} fields: {', '.join(fields)}")
        for key in sorted(set(fields) & set(options) & self.model_fields_set - set(self.fields or {})):
            raise UserError(f"{self.where(key)}: {key!r} is both a {self.kind} stage option and a field of method "
                            f"{self.method!r}: here it sets the stage option; give the method's under 'fields: {{{key}: ...}}' "
                            "(and move this line there if it was meant for the method)")
        try:
            return method_from_dict(self.method_spec())
        except UserError as err:
            key = _field_named(str(err), self.method_fields())
            where = self.where(key if key in (self.model_extra or {}) else "fields" if key else "method")
            raise UserError(f"{where}: {err}") from None


class PruneStage(MethodStage):
    """Prune with any pruning method on a schedule, retraining at `lr_factor` x the training LR.
    Options left out are the architecture's `flows.prune.pruning_settings`."""

    kind: ClassVar[str] = "prune"
    schedule: Literal["oneshot", "iterative", "agp"] | None = None
    rounds: int | None = Field(None, ge=1, le=100)
    finetune_epochs: int | None = Field(None, ge=0, le=100_000)
    lr_factor: float | None = Field(None, gt=0, le=100)
    batch_size: int = Field(64, ge=1, le=65_536)

    def build_method(self) -> Method:
        method = super().build_method()
        if self.schedule in ("iterative", "agp") and not isinstance(method, SparsityPrune):
            raise UserError(f"{self.where('schedule')}: schedule {self.schedule!r} ramps a sparsity target, but "
                            f"method {self.method!r} has none: use schedule: oneshot (or one of "
                            f"{', '.join(n for n in self.method_names() if issubclass(METHODS[n], SparsityPrune))})")
        return method


class QuantizeStage(MethodStage):
    """Quantize with any quantization method (PTQ calibration on `calib_images` training images),
    optionally folding BatchNorm first; with `finetune_epochs` > 0 the quantized model is then trained
    (QAT, k-means codebook fine-tuning, soft weight-sharing's prior) at `lr` with the method's
    regularizers; then the method's `finish` hardens what training kept soft (soft weight-sharing's
    snap), so a method whose finish needs that training refuses `finetune_epochs: 0`."""

    kind: ClassVar[str] = "quantize"
    fold_batchnorm: bool = True
    calib_images: int = Field(512, ge=1, le=1_000_000)
    finetune_epochs: int = Field(0, ge=0, le=100_000)
    lr: float = Field(1e-3, gt=0, le=100)
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(64, ge=1, le=65_536)

    def build_method(self) -> Method:
        method = super().build_method()
        if getattr(method, "snapped", False):
            raise UserError(f"{self.where('snapped')}: snapped: true is the finished form that finish() records for "
                            f"saved files; a recipe applies {self.method!r} unsnapped and snaps it at the stage's end")
        if method.trains_before_finish and not self.finetune_epochs:
            raise UserError(f"{self.where('finetune_epochs')}: method {self.method!r} trains in this stage and is "
                            "hardened at its end (finish): give it finetune_epochs > 0")
        return method


class FinetuneStage(Stage):
    """Train the (compressed) model further at `lr_factor` x the training LR."""

    kind: ClassVar[str] = "finetune"
    epochs: int = Field(ge=1, le=100_000)
    lr_factor: float = Field(0.1, gt=0, le=100)
    weight_decay: float | None = Field(None, ge=0, le=1)
    batch_size: int = Field(64, ge=1, le=65_536)


class ConvertStage(Stage):
    """`convert_`: every transform chain becomes its integer codes (the model stops training)."""

    kind: ClassVar[str] = "convert"


class EncodeStage(Stage):
    """Write the model as a .nnc file (Deep Compression: float16 biases and codebooks, Huffman codes),
    decode the file and go on with the decoded model (checked equal to the encoded one).
    `mask_coding: context` lets keep masks use the context codec where smaller (.nnc 3.2);
    `header_coding: compact` compresses the header from the format's preset dictionary (.nnc 3.3)."""

    kind: ClassVar[str] = "encode"
    writes_file: ClassVar[bool] = True
    format: Literal["nnc"] = "nnc"
    file: str | None = Field(None, min_length=1, max_length=4096)  # relative: inside the run folder (--out)
    mask_coding: Literal["relative", "context"] = "relative"
    header_coding: Literal["zlib", "compact"] = "zlib"


class AllocateStage(Stage):
    """Automatic per-layer density and bits (`flows/allocate.py`) for one budget, `target_ratio` (fp32
    parameter bytes / file bytes), `target_bytes` or `max_accuracy_drop` (a fraction: 0.005 is half a point
    of accuracy, predicted by the additive sensitivity model): measure every layer's
    candidates, solve, prune with retraining, share weights, fine-tune the codebooks and write the .nnc
    file within the budget, as `nncompress deep-compress --target-ratio` does. It starts from the dense
    model and writes the run's file (like encode). The retraining options left out (schedule, rounds,
    finetune_epochs, lr_factor) are the architecture's recommended pruning (`flows.prune.pruning_settings`,
    as `prune` stages and the CLI use); the others are `AllocationConfig`'s defaults."""

    kind: ClassVar[str] = "allocate"
    writes_file: ClassVar[bool] = True
    target_ratio: float | None = Field(None, gt=0, le=1e9)
    target_bytes: int | None = Field(None, ge=1, le=1 << 40)
    max_accuracy_drop: float | None = Field(None, ge=0, le=1)
    densities: list[float] | None = Field(None, min_length=1, max_length=256)
    bits: list[int] | None = Field(None, min_length=1, max_length=16)
    sensitivity_images: int | None = Field(None, ge=1, le=1_000_000)
    sensitivity_retrain_images: int | None = Field(None, ge=0, le=1_000_000)
    joint_rounds: int | None = Field(None, ge=0, le=10)
    margin: float | None = Field(None, ge=0, lt=1)
    schedule: Literal["oneshot", "iterative", "agp"] | None = None
    rounds: int | None = Field(None, ge=1, le=100)
    finetune_epochs: int | None = Field(None, ge=0, le=100_000)
    lr_factor: float | None = Field(None, gt=0, le=100)
    codebook_epochs: int | None = Field(None, ge=0, le=100_000)
    codebook_lr: float | None = Field(None, gt=0, le=100)
    distill_alpha: float | None = Field(None, ge=0, le=1)
    distill_temperature: float | None = Field(None, gt=0, le=1000)
    bias_bits: int | None = Field(None, ge=2, le=16)
    mask_coding: Literal["relative", "context"] | None = None
    header_coding: Literal["zlib", "compact"] | None = None
    file: str | None = Field(None, min_length=1, max_length=4096)  # relative: inside the run folder (--out)

    def build_config(self, defaults: dict[str, Any] | None = None) -> AllocationConfig:
        """The `AllocationConfig`, checked; errors name the recipe line of the option. `defaults` fill
        the options left out (the runner gives the architecture's recommended pruning schedule)."""
        options = {k: tuple(v) if isinstance(v, list) else v
                   for k, v in {**(defaults or {}), **self.model_dump(exclude_none=True, exclude={"file"})}.items()}
        try:
            return AllocationConfig(**options)
        except UserError as err:
            raise UserError(f"{self.where(_field_named(str(err), options))}: {err}") from None


class ExportStage(Stage):
    """Export to ONNX (QDQ or QOperator) and check ONNX Runtime against PyTorch on test images."""

    kind: ClassVar[str] = "export"
    changes_model: ClassVar[bool] = False
    format: Literal["qdq", "qoperator"] = "qdq"
    file: str | None = Field(None, min_length=1, max_length=4096)  # relative: inside the run folder (--out)
    check_images: int = Field(500, ge=0, le=1_000_000)


class EvaluateStage(Stage):
    """Test accuracy, weights kept, compression; `control: true` also trains the same-budget dense
    control (flows/control.py: the model after the last train stage, through every training phase
    since, distilling the same teacher where an allocate stage distilled) and reports the gap."""

    kind: ClassVar[str] = "evaluate"
    changes_model: ClassVar[bool] = False
    control: bool = False


STAGES: dict[str, type[Stage]] = {cls.kind: cls for cls in (TrainStage, PruneStage, QuantizeStage, FinetuneStage,
                                                           ConvertStage, AllocateStage, EncodeStage, ExportStage,
                                                           EvaluateStage)}


def family(kind: str) -> list[str]:
    """The registered methods a `prune` stage (defined in nncompress.prune) or a `quantize` stage
    (every other) may name."""
    in_prune = lambda cls: cls.__module__.startswith("nncompress.prune")  # noqa: E731
    return sorted(n for n, cls in METHODS.items() if in_prune(cls) == (kind == "prune"))


class Header(BaseModel):
    """The recipe's top-level keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    model: str = Field(min_length=1, max_length=4096)
    dataset: str = "digits"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    stages: list[Any] = Field(min_length=1, max_length=MAX_STAGES)


@dataclass(frozen=True)
class Recipe:
    """A validated recipe: its header, its stages in order, and the YAML it came from (for lines)."""

    header: Header
    stages: tuple[Stage, ...]
    marked: Marked

    @property
    def name(self) -> str:
        return self.header.name or Path(self.marked.source).stem

    def data(self) -> dict:
        """The recipe as plain data (what a checkpoint records to recognise its run)."""
        return {**self.header.model_dump(exclude={"stages"}),
                "stages": [{s.kind: s.model_dump(exclude_none=True)} for s in self.stages]}

    def methods(self) -> list[Method]:
        return [s.build_method() for s in self.stages if isinstance(s, MethodStage)]


def parse_recipe(marked: Marked) -> Recipe:
    """Validate YAML data as a recipe: top-level keys, each stage's options and its method's fields.
    Raises one UserError listing every problem found, each with its recipe line."""
    if not isinstance(marked.data, dict):
        raise UserError(f"{marked.where(())}: a recipe is a mapping with 'model' and 'stages', "
                        f"got {type(marked.data).__name__}")
    header = _validate(Header, marked.data, (), marked)
    if header.model not in MODELS and not header.model.endswith(".safetensors"):
        raise UserError(f"{marked.where(('model',))}: model {header.model!r} is neither a zoo model nor a .safetensors "
                        f"file.{did_you_mean(header.model, MODELS)} Zoo models: {', '.join(MODELS)}")
    if header.dataset not in DATASETS:
        raise UserError(f"{marked.where(('dataset',))}: unknown dataset {header.dataset!r}."
                        f"{did_you_mean(header.dataset, DATASETS)} Allowed: {', '.join(DATASETS)}")
    stages = tuple(_stage(item, ("stages", i), marked) for i, item in enumerate(header.stages))
    check_stage_order(stages)
    recipe = Recipe(header, stages, marked)
    recipe.methods()  # every method's fields, checked now (before any training)
    for stage in stages:
        if isinstance(stage, AllocateStage):
            stage.build_config()
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file."""
    return parse_recipe(load_yaml(path))


def recipe_from_text(text: str, source: str = "<recipe>") -> Recipe:
    return parse_recipe(load_yaml_text(text, source))


def edited(recipe: Recipe, changes: dict[tuple, Any]) -> Recipe:
    """A copy of `recipe` with the values at data paths replaced and validated again, e.g.
    `edited(r, {("stages", 1, "prune", "sparsity"): 0.9})` (benchmarks derive variants this way)."""
    data = copy.deepcopy(recipe.marked.data)
    for path, value in changes.items():
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return parse_recipe(Marked(data, recipe.marked.source, recipe.marked.lines))


def stage_index(recipe: Recipe, kind: str) -> int:
    """The index of the recipe's first stage of `kind` (UserError when it has none)."""
    for i, stage in enumerate(recipe.stages):
        if stage.kind == kind:
            return i
    raise UserError(f"{recipe.marked.source} has no {kind!r} stage")


def _stage(item: Any, path: tuple, marked: Marked) -> Stage:
    kinds = ", ".join(STAGES)
    if isinstance(item, str):
        item = {item: None}  # "- evaluate" alone
    if not isinstance(item, dict) or len(item) != 1:
        raise UserError(f"{marked.where(path)}: a stage is a one-key mapping such as 'prune: {{...}}', got "
                        f"{str(item)[:80]!r}. Stages: {kinds}")
    (kind, options), = item.items()
    if kind not in STAGES:
        raise UserError(f"{marked.where((*path, kind))}: unknown stage {str(kind)[:80]!r}.{did_you_mean(str(kind), STAGES)} "
                        f"Stages: {kinds}")
    stage = _validate(STAGES[kind], {} if options is None else options, (*path, kind), marked)
    stage._marked, stage._path = marked, (*path, kind)
    return stage


def _validate(cls: type[BaseModel], data: Any, path: tuple, marked: Marked) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{marked.where(path)}: expected a mapping of options, got {str(data)[:80]!r}. "
                        f"Options: {', '.join(cls.model_fields)}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise UserError("\n".join(_message(e, cls, path, marked) for e in err.errors())) from None


def _message(error: dict, cls: type[BaseModel], path: tuple, marked: Marked) -> str:
    loc = (*path, *error["loc"])
    got = str(error.get("input"))[:80]
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        fields = list(cls.model_fields)
        return (f"{marked.where(loc)}: unknown option {key!r}.{did_you_mean(key, fields)} "
                f"Allowed: {', '.join(fields)}")
    if error["type"] == "missing":
        return f"{marked.where(loc)}: {error['loc'][-1]!r} is required"
    hint = " (ONNX files are written by an export stage: export: {format: qdq})" if (
        cls is EncodeStage and error["loc"][-1] == "format" and got.lower() in ("onnx", "qdq", "qoperator")) else ""
    return f"{marked.where(loc)}: {error['msg']}, got {got}{hint}"


def _field_named(message: str, fields: dict[str, Any]) -> str | None:
    """The method field a method_from_dict / __post_init__ message is about (for its recipe line)."""
    for key in sorted(fields, key=len, reverse=True):
        if f"{key}=" in message or f"{key}[" in message or f"'{key}'" in message:
            return key
    return None
