"""How a batch is fed to a model, whatever its shape: the one rule calibration, `evaluate` and `fit` share.

A batch is split into the model's inputs and the target:

- a tensor `x`: `model(x)`, no target;
- a Mapping (a dict, a `transformers` BatchEncoding): `model(**inputs)`, with the label keys
  ("labels", "label") split off as the target. Every other key is passed through unchanged, so a
  padded batch keeps its `attention_mask`;
- a tuple / list: `(inputs..., target)`, the last element being the target when there are two or
  more: `(x, y)` -> `model(x)`; `(x1, x2, y)` and `((x1, x2), y)` -> `model(x1, x2)`;
  `({"input_ids": ...}, y)` -> `model(input_ids=...)`; `(x,)` -> `model(x)` with no target;
- `forward_fn(model, batch) -> output` overrides all of that. `with_forward(data, forward_fn)` binds
  it to a data stream, so every consumer of that stream (a Method's calibration included) uses it.

An output is a tensor, a `transformers` ModelOutput / dict / object with `logits` or
`last_hidden_state`, or a tuple whose first element is the output (`return_dict=False`);
`output_tensor` picks the tensor.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .validate import UserError

#: Keys of a Mapping batch that hold the target (the `transformers` conventions).
LABEL_KEYS = ("labels", "label")
#: Output fields tried in order when an output is not a tensor.
OUTPUT_KEYS = ("logits", "last_hidden_state")

ForwardFn = Callable[[nn.Module, Any], Any]


@dataclass(frozen=True)
class ModelCall:
    """One batch split into the model's positional and keyword inputs and the target (None if absent)."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    target: Any = None


@dataclass(frozen=True)
class Bound:
    """A batch that carries the `forward_fn` feeding it (what `with_forward` yields)."""

    batch: Any
    forward_fn: ForwardFn


class BoundData:
    """`data` whose batches are fed with `forward_fn(model, batch)` wherever they go (see `with_forward`).

    Keeps `len()` and `set_epoch()` of the underlying loader."""

    def __init__(self, data: Iterable, forward_fn: ForwardFn):
        if not callable(forward_fn):
            raise UserError(f"forward_fn={forward_fn!r} is not callable: pass a function (model, batch) -> output")
        self.data, self.forward_fn = data, forward_fn

    def __iter__(self) -> Iterator[Bound]:
        return (Bound(batch, self.forward_fn) for batch in self.data)

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(epoch)


def with_forward(data: Iterable | None, forward_fn: ForwardFn | None) -> Iterable | None:
    """`data` whose batches every consumer feeds with `forward_fn` (a Method's calibration included);
    `data` itself when either is None or it is already bound.

    Example:
        >>> import torch
        >>> data = with_forward([torch.ones(2, 3)], lambda model, batch: model(batch * 2))
        >>> float(feed(torch.nn.Identity(), next(iter(data))).sum())
        12.0
    """
    if data is None or forward_fn is None or isinstance(data, BoundData):
        return data
    return BoundData(data, forward_fn)


@dataclass(frozen=True)
class BatchData:
    """Your own batches where a training flow takes a zoo `Dataset` (`compress_miracle`, the
    same-budget control): `train` is iterated in its order every epoch (a phase's batch size and
    shuffle seed do not apply: batch and shuffle them yourself, e.g. with a DataLoader), `test`
    measures the result, and `forward_fn` (optional) feeds both (`with_forward`). Batches are anything
    `feed` takes, e.g. `transformers` BatchEncodings with "labels". Under torch.distributed every rank
    iterates all of `train`: give each rank its own share."""

    train: Iterable
    test: Iterable
    forward_fn: ForwardFn | None = None

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            value = getattr(self, name)
            if isinstance(value, tuple):
                raise UserError(f"BatchData.{name} is a tuple, which would be read as a list of batches: pass a list "
                                "of batches, e.g. [(x, y), ...]")
            if not hasattr(value, "__len__") or iter(value) is value:
                raise UserError(f"BatchData.{name} must be re-iterable with a length (a list of batches or a "
                                f"DataLoader), not {type(value).__name__}: it is iterated once per epoch")
            if len(value) == 0:
                raise UserError(f"BatchData.{name} is empty")

    @property
    def train_size(self) -> int:
        """Training samples in one epoch."""
        return sum(batch_size(b) for b in self.train)

    def train_loader(self, batch_size: int = 64, *, seed: int = 0) -> Iterable:  # noqa: ARG002 (Dataset's signature)
        return with_forward(self.train, self.forward_fn)

    def test_loader(self, batch_size: int = 500) -> Iterable:  # noqa: ARG002
        return with_forward(self.test, self.forward_fn)


def split_batch(batch: Any) -> ModelCall:
    """Split a batch into inputs and target by the rules in the module docstring."""
    if isinstance(batch, Bound):
        return split_batch(batch.batch)
    if isinstance(batch, torch.Tensor):
        return ModelCall((batch,))
    if isinstance(batch, Mapping):
        return _split_mapping(batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise UserError("a batch is an empty tuple/list: expected (inputs..., target) or (inputs,)")
        if len(batch) == 1:
            return _inputs(batch[0])
        inputs = _inputs(batch[0]) if len(batch) == 2 else ModelCall(tuple(batch[:-1]))
        return ModelCall(inputs.args, inputs.kwargs, batch[-1])
    raise UserError(f"cannot feed a batch of type {type(batch).__name__}: a batch is a tensor, a Mapping "
                    "(dict / BatchEncoding) or a tuple/list (inputs..., target); for anything else pass "
                    "forward_fn=lambda model, batch: model(...)")


def _split_mapping(batch: Mapping) -> ModelCall:
    labels = [k for k in LABEL_KEYS if k in batch]
    target = batch[labels[0]] if labels else None
    return ModelCall((), {k: v for k, v in batch.items() if k not in LABEL_KEYS}, target)


def _inputs(inputs: Any) -> ModelCall:
    """The inputs part of a tuple batch: a tuple/list spreads into arguments, a Mapping into keywords."""
    if isinstance(inputs, Mapping):
        return ModelCall((), dict(inputs))
    if isinstance(inputs, (tuple, list)):
        return ModelCall(tuple(inputs))
    return ModelCall((inputs,))


def feed(model: nn.Module, batch: Any, forward_fn: ForwardFn | None = None) -> Any:
    """Run `model` on `batch`: `forward_fn(model, batch)` if given (or bound), else by the split rules."""
    if isinstance(batch, Bound):
        forward_fn, batch = forward_fn or batch.forward_fn, batch.batch
    if forward_fn is not None:
        return forward_fn(model, batch)
    call = split_batch(batch)
    return model(*call.args, **call.kwargs)


def target_of(batch: Any) -> Any:
    """The target of a batch (None when it has none)."""
    return split_batch(batch).target


def batch_size(batch: Any) -> int:
    """Samples in a batch: the target's first dimension, else the first input tensor's."""
    call = split_batch(batch)
    for item in (call.target, call.args, call.kwargs):
        tensor = first_tensor(item)
        if tensor is not None:
            return int(tensor.shape[0]) if tensor.dim() else 1
    raise UserError(f"cannot count the samples of a batch of type {type(batch).__name__}: it holds no tensor")


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor in a (nested) tensor / Mapping / tuple / list, or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    return next((t for t in map(first_tensor, values) if t is not None), None)


def output_tensor(output: Any, keys: tuple[str, ...] = OUTPUT_KEYS) -> torch.Tensor:
    """The tensor of a model or layer output: itself, its first field among `keys` (a ModelOutput,
    dict or object), else the first tensor of a Mapping / tuple (HF's `return_dict=False`)."""
    if isinstance(output, torch.Tensor):
        return output
    for key in keys:
        value = output.get(key) if isinstance(output, Mapping) else getattr(output, key, None)
        if isinstance(value, torch.Tensor):
            return value
    tensor = first_tensor(output)
    if tensor is None:
        raise UserError(f"cannot find the output tensor in a {type(output).__name__}: expected a tensor, a tuple, or "
                        f"a dict / ModelOutput with one of {list(keys)}; pass forward_fn=... returning a tensor")
    return tensor


def pack_batch(batch: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """A batch as flat named tensors plus a JSON-able skeleton (to store an example in a safetensors
    file); `unpack_batch` inverts it. Tuples come back as lists (fed the same way)."""
    tensors: dict[str, torch.Tensor] = {}

    def pack(obj: Any, key: str) -> Any:
        if isinstance(obj, Bound):
            return pack(obj.batch, key)
        if isinstance(obj, torch.Tensor):
            tensors[key] = obj.detach().cpu()
            return {"tensor": key}
        if isinstance(obj, Mapping):
            return {"dict": {str(k): pack(v, f"{key}.{k}") for k, v in obj.items()}}
        if isinstance(obj, (tuple, list)):
            return {"list": [pack(v, f"{key}.{i}") for i, v in enumerate(obj)]}
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return {"value": obj}
        raise UserError(f"cannot store an example batch holding a {type(obj).__name__}: "
                        "use tensors, dicts, tuples / lists, numbers and strings")

    return tensors, pack(batch, prefix)


def unpack_batch(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """The batch `pack_batch` flattened into (`tensors`, `skeleton`)."""
    if "tensor" in skeleton:
        return tensors[skeleton["tensor"]]
    if "dict" in skeleton:
        return {k: unpack_batch(tensors, v) for k, v in skeleton["dict"].items()}
    if "list" in skeleton:
        return [unpack_batch(tensors, v) for v in skeleton["list"]]
    return skeleton["value"]
