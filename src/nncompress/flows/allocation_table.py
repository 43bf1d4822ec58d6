"""The candidate table of the allocator (`flows/allocate.py`, its steps 1-3, 6 and 8): for every
Conv / Linear layer and every (density d, bits b) of a grid, the exact bytes the candidate adds to a
`.nnc` file (`encode/cost.py`) and the damage it does alone: the change of cross-entropy and accuracy
on held-in training images when only that layer is pruned to d and k-means-shared with 2^b
centroids, measured on the model as is, or after a short retraining of the pruned layer (step 6).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..analysis.metrics import weight_layers
from ..encode.cost import LayerCosts, candidate
from ..encode.layout import Coding
from ..parametrize import detach
from ..prune.mask import Mask, attach_mask
from ..batches import ForwardFn
from ..train import LossFn, TrainConfig, evaluate, fit
from ..validate import UserError
from ..zoo import Dataset, TensorLoader
from .allocation_plan import AllocationConfig, Candidate



@dataclass(frozen=True)
class HeldIn:
    """The data every damage is measured on: batches of any shape `batches.py` feeds (tensors,
    (x, y) pairs, dicts / BatchEncodings with "labels"), read once per measurement (so a list or a
    loader, not a generator), with `train.evaluate`'s `forward_fn` / `loss_fn` (default: the
    cross-entropy of the logits). Without class targets only the loss is measured."""

    batches: Iterable
    forward_fn: ForwardFn | None = None
    loss_fn: LossFn | None = None

    def __post_init__(self) -> None:
        if iter(self.batches) is self.batches:  # a generator would be empty after the first pass
            object.__setattr__(self, "batches", list(self.batches))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """`train.evaluate` on these batches: "loss", and "accuracy" when they hold class targets."""
        return evaluate(model, self.batches, forward_fn=self.forward_fn, loss_fn=self.loss_fn)

    def measure(self, model: nn.Module) -> dict[str, float]:
        """{"loss", "accuracy"} of `model` (accuracy 0.0 when the batches hold no class targets)."""
        measured = self.evaluate(model)
        return {"loss": measured["loss"], "accuracy": measured.get("accuracy", 0.0)}


def held_in(batches: Iterable | HeldIn) -> HeldIn:
    return batches if isinstance(batches, HeldIn) else HeldIn(batches)


def sensitivity_batches(dataset: Dataset, config: AllocationConfig) -> TensorLoader:
    """The held-in images every damage is measured on (the first `sensitivity_images` training images)."""
    n = min(config.sensitivity_images, len(dataset.train_x))
    return TensorLoader(dataset.train_x[:n], dataset.train_y[:n], 256)


Retrain = Callable[[nn.Module, str, torch.Tensor], None]


def candidate_table(model: nn.Module, batches, densities, bits,
                    retrain: Retrain | None = None, coding: Coding = Coding()) -> dict[str, list[Candidate]]:
    """Every layer's candidates with exact bytes and measured damage (one layer at a time; the model
    is restored after each). With `retrain(model, layer name, keep mask)`, each (layer, density) is
    pruned and retrained on a copy first and the bits are applied to the retrained weights (module
    docstring, step 6); the bytes stay those of the dense weights' candidates, stored as `coding`
    says (`encode/cost.py`)."""
    model, batches = copy.deepcopy(model).eval(), held_in(batches)
    base = batches.measure(model)
    table: dict[str, list[Candidate]] = {}
    for name, layer in weight_layers(model).items():
        costs = LayerCosts(f"{name}.weight", layer.weight.detach().clone(), coding)
        table[name] = [row for density in densities
                       for row in _density_rows(model, name, costs, density, bits, batches, base, retrain)]
    return table


@torch.no_grad()
def _density_rows(model: nn.Module, name: str, costs: LayerCosts, density: float, bits, batches, base: dict,
                  retrain: Retrain | None) -> list[Candidate]:
    """The candidates of one (layer, density): each bit-width's damage, measured on `model` with only
    that layer replaced (on a retrained copy if `retrain` is given); `model` is left unchanged."""
    net = model
    if retrain is not None:
        net = copy.deepcopy(model)
        keep, _ = costs.keep(density)
        with torch.enable_grad():
            retrain(net, name, keep)
        net.eval()
    layer = weight_layers(net)[name]
    original = layer.weight.detach().clone()
    rows = []
    for b in bits:
        value, nbytes = costs.evaluate(density, b)
        if retrain is not None:
            value = candidate(original, density, b, costs.keep(density)[0])[0]
        layer.weight.copy_(value)
        measured = batches.measure(net)
        rows.append(Candidate(density, b, nbytes, measured["loss"] - base["loss"],
                              measured["accuracy"] - base["accuracy"]))
    layer.weight.copy_(original)
    return rows


def short_retrain(dataset: Dataset, config: AllocationConfig, base: TrainConfig) -> Retrain:
    """The short retraining of step 6: one pass (batches of 64, shuffled with `base.seed`) over the
    `sensitivity_retrain_images` training images after the `sensitivity_images` the damage is
    measured on, SGD at `lr_factor` x the original learning rate (constant), the layer's pruned
    weights held at zero after every step (as pruning's masks do during retraining). Dropout keeps its
    rate (Han's rescaling for pruned layers is left to the real retraining)."""
    start = min(config.sensitivity_images, len(dataset.train_x))
    stop = min(start + config.sensitivity_retrain_images, len(dataset.train_x))
    if stop <= start:
        raise UserError(f"no training images left for the sensitivity retraining after the first {start:,}; "
                        f"lower sensitivity_images")
    train_config = replace(base, epochs=1, lr=base.lr * config.lr_factor, schedule="constant")

    def retrain(model: nn.Module, name: str, keep: torch.Tensor) -> None:
        layer = weight_layers(model)[name]
        attach_mask(layer, keep, name)  # pruning's own mask: pruned weights stay exactly zero
        loader = TensorLoader(dataset.train_x[start:stop], dataset.train_y[start:stop], 64, shuffle=True,
                              seed=base.seed)
        fit(model, loader, train_config, progress=False, log=lambda _: None)
        detach(layer, Mask)  # a plain weight again (zeros where pruned), for the bits to replace

    return retrain


def measure_table(model: nn.Module, dataset: Dataset, config: AllocationConfig,
                  base: TrainConfig) -> dict[str, list[Candidate]]:
    """The candidate table of `config`'s grid, damage measured on the first `sensitivity_images`
    training images (never the test split); after a short retraining (`short_retrain`, from the
    training config `base`) if `config.sensitivity_retrain_images` > 0."""
    retrain = None
    if config.sensitivity_retrain_images:
        retrain = short_retrain(dataset, config, base)
    return candidate_table(model, sensitivity_batches(dataset, config), config.densities,
                           config.bits, retrain, config.coding)




class PlanContext:
    """The candidates' weights of a model (k-means once per candidate, then cached) and the damage of
    whole plans on held-in images (module step 8): `joint_loss(choice)` is the loss with *every* layer
    replaced by its chosen candidate at once, and `context_table(table, choice)` re-measures every
    layer's candidates with the other layers at `choice`, the interactions the additive table leaves out."""

    def __init__(self, model: nn.Module, batches):
        self.model, self.batches = copy.deepcopy(model).eval(), held_in(batches)
        self.layers = weight_layers(self.model)
        self.dense = {name: layer.weight.detach().clone() for name, layer in self.layers.items()}
        self._values: dict[tuple[str, float, int], torch.Tensor] = {}

    def value(self, name: str, c: Candidate) -> torch.Tensor:
        key = (name, c.density, c.bits)
        if key not in self._values:
            self._values[key] = candidate(self.dense[name], c.density, c.bits)[0]
        return self._values[key]

    @torch.no_grad()
    def _evaluate(self, weights: dict[str, torch.Tensor]) -> dict:
        for name, layer in self.layers.items():
            layer.weight.copy_(weights.get(name, self.dense[name]))
        return self.batches.measure(self.model)

    def joint_loss(self, choice: dict[str, Candidate]) -> float:
        return self._evaluate({name: self.value(name, c) for name, c in choice.items()})["loss"]

    def context_table(self, table: dict[str, list[Candidate]],
                      choice: dict[str, Candidate]) -> dict[str, list[Candidate]]:
        """Each layer's rows with the damage measured against the plan without that layer (its dense
        weights), the other layers at their chosen candidates; bytes unchanged."""
        out = {}
        for name, rows in table.items():
            others = {n: self.value(n, c) for n, c in choice.items() if n != name}
            base = self._evaluate(others)
            out[name] = []
            for c in rows:
                measured = self._evaluate({**others, name: self.value(name, c)})
                out[name].append(replace(c, loss=measured["loss"] - base["loss"],
                                         accuracy=measured["accuracy"] - base["accuracy"]))
        return out
