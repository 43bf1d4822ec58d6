"""What users call: apply methods, build or load a model, train it on a named dataset, save it, inspect it.

Saved models are safetensors files with a JSON header. Any `nn.Module` can be saved; a zoo model
also records its architecture, input shape and class count, so `load_model(path)` rebuilds it
alone, while any other model is restored into the instance (or factory) passed as `model=`. A
compressed model records its recipe (the Methods applied, as plain data, whether BatchNorm was
folded first and whether `convert_` ran last): loading replays the recipe on an example batch (the
user's, one stored in the file, or a random probe for zoo models) to rebuild the same
parametrizations and quantizers, then loads every tensor, so calibrated scales, masks, codebooks
and integer codes come back exactly. Nothing is unpickled; what is checked in a file before anything
is built is in `load_checks.py`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis.metrics import count_nonzero, count_params, layer_stats, total_macs, weight_layers
from .batches import ForwardFn, feed, pack_batch, unpack_batch
from .config import Context, Method, run_method
from .encode.container import read_nnc
from .encode.model import decode_model
from .fileio import load_weights, read_metadata, save_weights
from .load_checks import check_finite, check_metadata, check_zoo_size, first_few, not_zoo_error, zoo_description
from .methods import method_from_dict
from .parametrize import squash_  # noqa: F401  (re-exported)
from .prune.shrink import resize_to_state_
from .quant.fold import fold_batchnorm_
from .train import TrainConfig, evaluate, fit, is_main_process
from .validate import UserError
from .zoo import MODELS, Dataset, build_model, load_dataset

#: Prefix of the example batch's tensors in a saved file (kept apart from the model's state_dict).
EXAMPLE_PREFIX = "__example__"

#: Recipes that reach the baselines in benchmarks/results/baselines.md (SGD + momentum, cosine LR).
RECOMMENDED_TRAINING: dict[str, TrainConfig] = {
    "lenet300": TrainConfig(epochs=20, lr=0.05, weight_decay=1e-3),
    "lenet5": TrainConfig(epochs=15, lr=0.02, weight_decay=5e-4),
    "resnet20": TrainConfig(epochs=15, lr=0.05, weight_decay=5e-4),
    "vgg_small": TrainConfig(epochs=15, lr=0.05, weight_decay=5e-4),
    "mobilenetv2_small": TrainConfig(epochs=15, lr=0.05, weight_decay=4e-5),
    "tiny_vit": TrainConfig(epochs=30, lr=1e-3, optimizer="adam", weight_decay=1e-4),
}


def save_model(model: nn.Module, path: str | os.PathLike, *, recipe: Sequence[Method] = (), example: Any = None,
               arch: str | None = None, in_shape: tuple[int, ...] | None = None, num_classes: int | None = None,
               fold_batchnorm: bool = False, **meta: object) -> Path:
    """Write `model`'s state_dict as safetensors, with what `load_model` needs to rebuild it.

    `recipe`: the Methods applied to the fresh model, in order (after folding its BatchNorms when
    `fold_batchnorm`); whether `convert_` ran is detected and recorded. `example`: one small batch of
    your data, in any shape `batches.py` feeds; it is stored in the file so `load_model` can replay a
    calibrating recipe without being given one (two rows are enough). `arch` / `in_shape` /
    `num_classes`: a zoo model, which `load_model` rebuilds by itself. `meta`: any JSON-able extras;
    `shrunk=True` marks a model `prune.shrink.shrink_` made smaller: `load_model` builds the full
    architecture, gives its Conv / Linear / BatchNorm layers the stored (smaller) shapes, loads, and
    checks one forward pass.
    """
    int8 = [name for name, m in model.named_modules() if getattr(type(m), "int8_kernel", False)]
    if int8:
        raise UserError(f"layer {int8[0]!r} runs an int8 kernel (to_int8_): its prepacked weights are for inference "
                        "only; save the converted model before to_int8_, and call to_int8_ again after load_model")
    header: dict[str, Any] = {**meta, **_zoo_meta(arch, in_shape, num_classes)}
    converted = _is_converted(model)
    if header.get("shrunk") is not None and not isinstance(header["shrunk"], bool):
        raise UserError(f"save_model: shrunk={header['shrunk']!r} must be True (shrink_ ran) or False")
    if header.get("shrunk") and converted:
        raise UserError("save_model: a shrunk and converted model cannot be rebuilt from a file; save the shrunk float "
                        "(or fake-quantized) model, or convert after load_model")
    if converted and not recipe:
        raise UserError("the model was converted (convert_) but save_model got no recipe: pass "
                        "recipe=[the methods applied, in order] so load_model can rebuild its structure")
    if recipe:
        header["recipe"] = {"fold_batchnorm": fold_batchnorm, "converted": converted,
                            "methods": [m.to_dict() for m in recipe]}
    state, tied = _untie(model.state_dict())
    if tied:
        header["tied"] = tied
    if example is not None:
        tensors, header["example"] = pack_batch(example, EXAMPLE_PREFIX)
        state.update(tensors)
    return save_weights(path, state, header)


def _untie(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one key per shared tensor (tied weights, e.g. a language model's decoder and embedding):
    safetensors stores each tensor once. Returns (state, {dropped key: kept key}) for `load_model`."""
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    first: dict[tuple, str] = {}
    for key, tensor in state.items():
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                 tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and ident in first:
            tied[key] = first[ident]
            continue
        if tensor.numel():
            first[ident] = key
        kept[key] = tensor
    return kept, tied


def _zoo_meta(arch: str | None, in_shape: tuple[int, ...] | None, num_classes: int | None) -> dict:
    """The header fields of the zoo shortcut; a zoo arch needs its input shape and class count."""
    if arch is None:
        return {}
    if arch in MODELS and (in_shape is None or num_classes is None):
        raise UserError(f"arch={arch!r} is a zoo model: pass in_shape=... and num_classes=... too "
                        "(or leave arch out and load with load_model(path, model=...))")
    fields = {"arch": arch, "in_shape": list(in_shape) if in_shape is not None else None, "num_classes": num_classes}
    return {k: v for k, v in fields.items() if v is not None}


def _is_converted(model: nn.Module) -> bool:
    from .quant.convert import is_converted  # imported here: convert is optional for plain models
    return is_converted(model)


def load_model(path: str | os.PathLike, model: nn.Module | Callable[[], nn.Module] | None = None, *,
               example: Any = None, forward_fn: ForwardFn | None = None) -> tuple[nn.Module, dict]:
    """Restore a model saved by `save_model`; returns (model, metadata).

    `model`: the module to restore into (in place), or a zero-argument factory building it; required
    unless the file names a zoo architecture. `example`: one batch of your data (any shape `batches.py`
    feeds; `forward_fn` as for `quantize_`) to replay the recipe on; default: the example stored in
    the file, else a random probe of the zoo input shape. The recipe is replayed (fold BatchNorm,
    each Method, `convert_`), then every tensor is loaded.
    Example:
        >>> import nncompress as nc, torch, tempfile, os
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.quantize_(net, nc.LinearQuant(weight_bits=4, act_bits=8), data=[torch.randn(16, 8)])
        >>> path = os.path.join(tempfile.mkdtemp(), "q.safetensors")
        >>> _ = nc.save_model(net, path, recipe=[nc.LinearQuant(weight_bits=4, act_bits=8)], example=torch.randn(2, 8))
        >>> loaded, _ = nc.load_model(path, lambda: torch.nn.Sequential(torch.nn.Linear(8, 4)))
        >>> x = torch.randn(3, 8); torch.equal(loaded(x), net(x))
        True
    """
    meta = read_metadata(path) if Path(path).is_file() else {}
    check_metadata(meta, path, zoo=model is None)
    if model is None:
        check_zoo_size(meta, path)  # before any tensor or model is allocated
    state, meta = load_weights(path)
    check_finite(state, path)
    stored_example = _stored_example(state, meta, path)
    state = {k: v for k, v in state.items() if k.split(".")[0] != EXAMPLE_PREFIX}
    state.update({key: state[source] for key, source in meta.get("tied", {}).items()})
    net = _model_to_restore(path, meta, model)
    if meta.get("shrunk"):  # shrink_ removed channels: the built model takes the stored shapes
        resize_to_state_(net, state)
    batch = example if example is not None else stored_example if stored_example is not None else _zoo_probe(meta)
    if "recipe" in meta:
        replay_recipe_(net, meta["recipe"], None if batch is None else [batch], forward_fn=forward_fn)
    _load_state(net, state, path, meta)
    if meta.get("shrunk") and batch is not None:
        _check_runs(net, batch, path, forward_fn)
    return net, meta


def _check_runs(model: nn.Module, batch: Any, path: str | os.PathLike, forward_fn: ForwardFn | None) -> None:
    """A shrunk model's stored shapes must fit together: one forward pass of `batch`, as a UserError."""
    was_training = model.training
    try:
        with torch.no_grad():
            feed(model.eval(), batch, forward_fn)
    except RuntimeError as err:
        raise UserError(f"{str(path)!r}: the shrunk model's stored channel counts do not fit together "
                        f"({err})") from None
    finally:
        model.train(was_training)


def _stored_example(state: dict[str, torch.Tensor], meta: dict, path: str | os.PathLike) -> Any:
    if "example" not in meta:
        return None
    try:
        return unpack_batch(state, meta["example"])
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError) as err:
        raise UserError(f"{str(path)!r} metadata: field 'example' does not describe the stored example "
                        f"tensors ({type(err).__name__}: {err})") from None


def _model_to_restore(path: str | os.PathLike, meta: dict, model: nn.Module | Callable[[], nn.Module] | None) -> nn.Module:
    """`model` (called when it is a factory), else the zoo model the file names."""
    if model is None:
        if meta.get("arch") not in MODELS:
            raise not_zoo_error(path, meta)
        return build_model(*zoo_description(meta, path))
    built = model if isinstance(model, nn.Module) else model() if callable(model) else model
    if not isinstance(built, nn.Module):
        raise UserError(f"model={model!r} is not an nn.Module nor a zero-argument function returning one")
    return built


def _zoo_probe(meta: dict) -> tuple[torch.Tensor, None] | None:
    """A fixed random batch of the zoo input shape (None when the file records no shape)."""
    if "in_shape" not in meta:
        return None
    return torch.randn(2, *meta["in_shape"], generator=torch.Generator().manual_seed(0)), None


def replay_recipe_(model: nn.Module, recipe: dict, data: Iterable | None,
                   forward_fn: ForwardFn | None = None) -> nn.Module:
    """Rebuild a recipe's structure on `model` (fold BatchNorm, each Method on `data`, `convert_`);
    the values it calibrates are overwritten by the caller's `load_state_dict`."""
    if recipe.get("fold_batchnorm"):
        fold_batchnorm_(model)
    for spec in recipe.get("methods", []):
        method = method_from_dict(spec)
        if data is None and "data" in method.needs:
            raise UserError(f"the saved recipe's {type(method).__name__} calibrates on data: pass example=one batch of "
                            "your data to load_model (or to save_model, which stores it in the file)")
        try:
            apply_(model, method, data=data, train_fn=lambda m: None, forward_fn=forward_fn)
        except (TypeError, RuntimeError, KeyError, IndexError, AttributeError) as err:  # the model does not take the example
            raise UserError(f"replaying the saved recipe's {type(method).__name__} on {type(model).__name__} failed "
                            f"({type(err).__name__}: {err}): pass model= the class the file was saved from and "
                            "example= a batch it accepts (and forward_fn= if it needs one)") from err
    if recipe.get("converted"):
        from .quant.convert import convert_  # imported here: only converted files need it
        convert_(model)
    return model


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, meta: dict) -> None:
    """`model.load_state_dict(state)`, with missing / unexpected keys and shape clashes as a UserError
    that says what to pass."""
    expected = model.state_dict().keys()
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        compressed = any(".parametrizations." in k or "input_quantizer" in k for k in unexpected)
        hint = ("it holds a compressed model saved without recipe=[...]: save it again with save_model(..., "
                "recipe=[the methods applied, in order])" if compressed and "recipe" not in meta else
                "pass model= the same class and configuration it was saved from, and check that the saved recipe "
                "builds the saved structure (after a method's finish(), save the methods it returned)"
                if "recipe" in meta else "pass model= the same class and configuration it was saved from")
        raise UserError(f"{str(path)!r} does not fit the model ({type(model).__name__}): {hint}. "
                        f"Missing keys: {first_few(missing)}; unexpected keys: {first_few(unexpected)}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        lines = (line.strip().removesuffix(".") for line in str(err).splitlines())
        clashes = [line for line in lines if line.startswith("size mismatch")]
        raise UserError(f"{str(path)!r} does not fit the model ({type(model).__name__}): pass model= the same class "
                        f"and configuration it was saved from. {first_few(clashes, 3) if clashes else err}") from None


def resolve_model(spec: str, dataset: Dataset, seed: int = 0) -> tuple[nn.Module, str, bool]:
    """`spec` is a zoo name (a fresh model, seeded), a saved .safetensors file or a .nnc file (decoded:
    float weights holding the file's exact values); returns (model, arch, trained)."""
    path = Path(spec)
    if path.suffix not in (".nnc", ".safetensors") and not path.is_file():
        torch.manual_seed(seed)
        return build_model(spec, dataset.in_shape, dataset.num_classes), spec, False
    if path.suffix == ".nnc":
        nnc = read_nnc(path)
        model, meta = decode_model(nnc), nnc.model
    else:
        model, meta = load_model(path)
    if tuple(meta["in_shape"]) != dataset.in_shape:
        raise UserError(f"{spec!r} was trained on inputs {tuple(meta['in_shape'])}, "
                        f"but dataset {dataset.name!r} has {dataset.in_shape}")
    return model, meta["arch"], True


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
           train_fn: Callable[[nn.Module], object] | None = None, forward_fn: ForwardFn | None = None,
           report: list[dict] | None = None) -> nn.Module:
    """Apply any Method in place (masks / fake quantizers as parametrizations); returns `model`.

    `data`: calibration / data-aware batches of any shape `batches.py` feeds (tensors, (x, y),
    dicts / BatchEncodings...), `forward_fn(model, batch) -> output` when those rules do not fit.
    `report`: a list that receives the method's per-layer report entries (`{"method": name, ...}`).
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
        >>> entries = []
        >>> _ = nc.prune_(net, nc.MagnitudePrune(sparsity=0.8, scope="global"), report=entries)
        >>> round(1 - nc.count_nonzero_weights(net) / 120, 2), entries[0]["method"]
        (0.8, 'magnitude')
    """
    entries = run_method(model, method, Context(data=data, train_fn=train_fn, forward_fn=forward_fn))
    if report is not None:
        report.extend(entries)
    return model


#: One in-place verb per stage; both run a Method (pruning or quantization) on the model.
prune_ = apply_
quantize_ = apply_


def count_nonzero_weights(model: nn.Module) -> int:
    """Non-zero weights of the Conv / Linear layers (biases not counted)."""
    return sum(int(torch.count_nonzero(m.weight.detach())) for m in weight_layers(model).values())
