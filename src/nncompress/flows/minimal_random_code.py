"""MIRACLE end to end (Havasi et al., ICLR 2019; the method in `quant/minimal_random_code.py`): a byte
budget -> the coding goal -> variational training -> blocks laid out by each layer's KL -> blocks
coded in rounds with retraining between them -> the `.nnc` file, decoded and measured.

Two training phases (Adam, no weight decay; `miracle_phases` gives them to the same-budget control):
  1. "variational+balance", one cosine schedule at `lr`: the first `variational_epochs` with one penalty for
     the whole model annealed toward the total goal; then the blocks are laid out (layer l gets
     blocks in proportion to its KL, at least one per MAX_WIDTH weights) and `balance_epochs` follow
     with one penalty per block toward C bits each (`MiracleSchedule`, fit's on_step, as AGP's);
  2. "coding", a constant `coding_lr_factor` x `lr`: `rounds` rounds, each coding 1/rounds of every
     layer's blocks and then retraining the rest for `round_epochs` (the last round is coded after
     the phase; the biases train until then).
Why this schedule (LeNet-5 at 170x, seed 0, first runs): a cosine restarted for every round left the
dense control of the same phases at 96.6 % on val, below the model it started from (98.9 %), which
flatters any gap measured against it; one cosine over everything left the last rounds no learning
rate to adapt (98.3 % on val against 98.9 % with the restarts). A constant, lower rate for the rounds
leaves the control intact and the coded model a rate to adapt with.
The indices take exactly blocks x C bits; the rest of the file (header, float16 biases) is measured
by serializing the model's chains with placeholder indices, before training and again with the
layout, so the written file is within the budget (checked).
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analysis.metrics import count_params
from ..api import apply_
from ..batches import BatchData, feed, output_tensor
from ..encode.container import Coding, read_nnc, serialize, write_nnc
from ..encode.cost import plan_bytes
from ..encode.deep_compression import round_biases_fp16_
from ..encode.model import decode_model, encode_model
from ..parametrize import Encoded, plain_state, squash_
from ..quant.minimal_random_code import MinimalRandomCode, posterior_mean, posterior_sampling, random_code_layers
from ..quant.random_code_generator import MAX_BLOCK_BITS, MAX_WIDTH
from ..train import TrainConfig, evaluate
from ..validate import UserError, check_int_range, check_positive
from ..zoo import MODELS, Dataset, build_model
from .allocate import other_tensors
from .control import TrainingPhase
from .distill import DistillConfig, distillation_kwargs

#: bytes kept free when sizing the code: the trained biases, the learned prior scales and the
#: compressed header move the file by a few bytes from the placeholder it is sized with
MARGIN = 32


@dataclass(frozen=True, kw_only=True)
class MiracleConfig:
    """The schedule (module doc) and the code: `block_bits` C per block, Adam at `lr`. `distill`:
    knowledge distillation from the dense model in every epoch of both phases (`flows/distill.py`;
    off by default), which the same-budget control must then get too
    (`same_budget_control(..., distill=config.distill)`). `local_reparameterization`: sample each
    Linear / Conv output instead of the weights (`posterior_sampling(local=True)`, Kingma et al. 2015);
    the default, chosen on the validation split: over the five paired LeNet runs of
    benchmarks/results/miracle*.md (1x and 2x schedules on both LeNets, 3x on LeNet-5; 3 seeds each)
    its mean val gap is 0.18 points better than the paper's weight sampling (better in 3 of 5)."""

    block_bits: int = 12
    variational_epochs: int = 20
    balance_epochs: int = 10
    rounds: int = 8
    round_epochs: int = 1
    lr: float = 1e-3
    coding_lr_factor: float = 0.1
    init_sigma: float = 1.0
    beta_step: float = 0.02
    coding: Coding = Coding()
    distill: DistillConfig = DistillConfig()
    local_reparameterization: bool = True

    def __post_init__(self) -> None:
        check_int_range("block_bits", self.block_bits, 1, MAX_BLOCK_BITS)
        for name in ("variational_epochs", "balance_epochs"):
            check_int_range(name, getattr(self, name), 0, 100_000)
        check_int_range("rounds", self.rounds, 1, 1000)
        check_int_range("round_epochs", self.round_epochs, 1, 100_000)
        for name in ("lr", "coding_lr_factor", "init_sigma", "beta_step"):
            check_positive(name, getattr(self, name))
        for name, kind in (("coding", Coding), ("distill", DistillConfig), ("local_reparameterization", bool)):
            if not isinstance(getattr(self, name), kind):
                raise UserError(f"MiracleConfig.{name}={getattr(self, name)!r} must be a {kind.__name__}")


def miracle_phases(config: MiracleConfig, seed: int) -> list[TrainingPhase]:
    """The training `compress_miracle` runs after pretraining (for `flows/control.same_budget_control`)."""
    def adam(epochs: int, lr: float, schedule: str, offset: int, label: str) -> TrainingPhase:
        return TrainingPhase(TrainConfig(epochs=epochs, lr=lr, optimizer="adam", weight_decay=0.0, schedule=schedule,
                                         seed=seed + offset), seed + offset, 64, label)

    return [p for p in (adam(config.variational_epochs + config.balance_epochs, config.lr, "cosine", 700,
                             "variational+balance"),
                        adam((config.rounds - 1) * config.round_epochs, config.lr * config.coding_lr_factor, "constant",
                             701, "coding")) if p.config.epochs]


class MiracleSchedule:
    """The step schedule of `compress_miracle`: `variational_step` (fit's on_step in phase 1) lays
    the blocks out after the variational epochs; `coding_step` (on_step in phase 2) codes the next
    round every `round_epochs`; `code_round` / `finish` code rounds between and after the phases."""

    def __init__(self, model: nn.Module, config: MiracleConfig, steps_per_epoch: int, total: int,
                 fits: Callable[[dict[str, int]], int], generator: torch.Generator):
        self.model, self.config, self.total, self.fits, self.generator = model, config, total, fits, generator
        self.steps_per_epoch = steps_per_epoch
        self.blocks: dict[str, int] = {}
        self.coded_rounds = 0

    def lay_out(self) -> None:
        if not self.blocks:
            self.blocks = lay_out_blocks_(self.model, self.total, self.config.block_bits, self.fits)

    def variational_step(self, step: int) -> None:
        """After optimizer step number `step` (from 1) of phase 1."""
        if step >= self.config.variational_epochs * self.steps_per_epoch:
            self.lay_out()

    def code_round(self) -> None:
        if self.coded_rounds < self.config.rounds:
            self.lay_out()
            code_round_(self.model, self.coded_rounds, self.config.rounds, self.generator)
            self.coded_rounds += 1

    def coding_step(self, step: int) -> None:
        """After optimizer step number `step` of phase 2: round r + 1 once r x round_epochs epochs are done."""
        if step >= self.coded_rounds * self.config.round_epochs * self.steps_per_epoch:
            self.code_round()

    def finish(self) -> dict[str, int]:
        """Code every round still uncoded; returns the blocks per layer."""
        while self.coded_rounds < self.config.rounds:
            self.code_round()
        return self.blocks


def _placeholder_chains(model: nn.Module, blocks: dict[str, int], bits: int) -> dict[str, list[Encoded]]:
    """The weight chains the file will hold, with random indices (they pack at C bits like real ones)."""
    generator = torch.Generator().manual_seed(0)
    chains = {}
    for name, (layer, t) in random_code_layers(model).items():
        indices = torch.randint(0, 1 << bits, (blocks[name],), generator=generator)
        prior = torch.tensor(float(layer.weight.detach().std()), dtype=torch.float32)
        chains[f"{name}.weight"] = [Encoded(t.kind, {"indices": indices, "prior_std": prior},
                                            {"shape": list(layer.weight.shape), "seed": t.seed, "bits": bits,
                                             "int_ranges": {"indices": [0, (1 << bits) - 1]}})]
    return chains


def file_bytes(model: nn.Module, model_desc: dict, blocks: dict[str, int], bits: int, coding: Coding,
               meta: dict | None = None) -> int:
    """Bytes of the file with these block counts (placeholder indices; biases as float16)."""
    return plan_bytes(model_desc, _placeholder_chains(model, blocks, bits), other_tensors(model), meta, coding)


def split_blocks(total: int, weights: dict[str, int], numels: dict[str, int]) -> dict[str, int]:
    """`total` blocks over layers in proportion to `weights` (largest remainders), each layer at least
    ceil(numel / MAX_WIDTH) and at most numel blocks."""
    floor = {n: math.ceil(numels[n] / MAX_WIDTH) for n in numels}
    if total < sum(floor.values()):
        raise UserError(f"the budget allows {total} blocks; these layers need at least {sum(floor.values())} "
                        f"(one per {MAX_WIDTH} weights): raise the budget")
    out = dict(floor)
    while (spare := total - sum(out.values())) > 0 and (open_ := [n for n in numels if out[n] < numels[n]]):
        for n, extra in _largest_remainder(spare, {n: weights[n] for n in open_}).items():
            out[n] = min(numels[n], out[n] + extra)
    return out


def _largest_remainder(count: int, weights: dict[str, float]) -> dict[str, int]:
    """`count` split in proportion to `weights` (equally if they are all 0): integer parts, then one
    more each to the largest fractional parts."""
    weight_sum = sum(weights.values())
    share = {n: count * (w / weight_sum if weight_sum > 0 else 1 / len(weights)) for n, w in weights.items()}
    out = {n: int(x) for n, x in share.items()}
    for n in sorted(share, key=lambda n: share[n] - out[n], reverse=True)[: count - sum(out.values())]:
        out[n] += 1
    return out


def budget_blocks(model: nn.Module, model_desc: dict, budget: int, bits: int, coding: Coding,
                  meta: dict | None = None) -> int:
    """The most blocks (split by weight count, at most one per weight) whose file fits `budget` bytes,
    less `MARGIN`; a UserError naming the smallest file possible (one block per MAX_WIDTH weights:
    the header and the float16 biases) when even that does not fit."""
    check_int_range("budget_bytes", budget, 0, 1 << 40)  # 0 (a ratio too high for the model) gets the message below
    numels = {n: layer.weight.numel() for n, (layer, _) in random_code_layers(model).items()}
    smallest = {n: math.ceil(k / MAX_WIDTH) for n, k in numels.items()}
    least = file_bytes(model, model_desc, smallest, bits, coding, meta) + MARGIN
    if least > budget:
        raise UserError(f"a budget of {budget} bytes is below the smallest MIRACLE file of this model, {least} bytes "
                        f"(the header, the tensors it does not code: biases as float16, any others such as embeddings and norms "
                        f"as they are; and one {bits}-bit block per {MAX_WIDTH} weights)")
    total = min(max(sum(smallest.values()), (budget * 8) // bits), sum(numels.values()))
    for _ in range(64):
        size = file_bytes(model, model_desc, split_blocks(total, numels, numels), bits, coding, meta)
        if size + MARGIN <= budget:
            return total
        total = max(sum(smallest.values()), total - max(1, math.ceil((size + MARGIN - budget) * 8 / bits)))
    raise UserError(f"no block count fits {budget} bytes")


def lay_out_blocks_(model: nn.Module, total: int, bits: int, fits: Callable[[dict[str, int]], int] | None = None
                    ) -> dict[str, int]:
    """Split every layer into its share of `total` blocks, in proportion to its KL (module doc, phase 2);
    `fits(blocks)` (bytes over the budget, <= 0 when within) takes blocks from the largest layer until it fits."""
    found = random_code_layers(model)
    with torch.no_grad():
        kl = {n: float(t.kl_nats(posterior_mean(layer)).sum()) for n, (layer, t) in found.items()}
    numels = {n: layer.weight.numel() for n, (layer, _) in found.items()}
    blocks = split_blocks(total, kl, numels)
    while fits is not None and (excess := fits(blocks)) > 0:
        spare = {n: b - math.ceil(numels[n] / MAX_WIDTH) for n, b in blocks.items()}
        largest = max(spare, key=spare.get)
        if spare[largest] <= 0:
            raise UserError(f"the budget cannot hold even one block per {MAX_WIDTH} weights ({excess} bytes over)")
        blocks[largest] -= min(spare[largest], max(1, math.ceil(excess * 8 / bits)))
    for name, (_, t) in found.items():
        t.set_blocks(blocks[name], bits)
    return blocks


def code_round_(model: nn.Module, round_index: int, rounds: int, generator: torch.Generator) -> None:
    """Code round `round_index` of `rounds`: the next 1/rounds of every layer's blocks."""
    for layer, t in random_code_layers(model).values():
        first, last = (t.blocks * round_index) // rounds, (t.blocks * (round_index + 1)) // rounds
        t.code(posterior_mean(layer), np.arange(first, last), generator)


def planned_blocks(model: nn.Module, model_desc: dict, config: MiracleConfig, budget_bytes: int,
                   meta: dict | None = None) -> int:
    """How many blocks the budget holds for this model's structure (on a copy; its weights do not
    matter): a too-small budget is refused here, before any training."""
    probe = copy.deepcopy(model)
    apply_(probe, MinimalRandomCode(total_bits=1, block_bits=config.block_bits))
    return budget_blocks(probe, model_desc, budget_bytes, config.block_bits, config.coding, meta)


def compress_miracle(model: nn.Module, arch: str, data: Dataset | BatchData, config: MiracleConfig, *,
                     budget_bytes: int, seed: int = 0, out: str | os.PathLike | None = None,
                     meta: dict | None = None, log: Callable[[str], None] | None = None) -> tuple[nn.Module, dict]:
    """Train `model` (dense, trained; changed in place) into a MIRACLE code within `budget_bytes`;
    returns (the model decoded from the written file, figures). `arch`: the model's name in the file's
    description (a zoo name lets `decode_model(read_nnc(path))` rebuild it; any other model is read
    back with `decode_model(nnc, model=YourNet())`); `data`: an nncompress `Dataset` (its training
    split trains, its test split measures) or your own batches as `BatchData` (e.g. a `transformers`
    classifier's BatchEncodings with "labels"; `tests/test_outside_models.py`); `meta`: a JSON-able
    dict stored in the file (e.g. the dataset and seed; its bytes count in the budget); `log`: receives
    each epoch's line (default: stderr, labelled by phase; `lambda _: None` silences it)."""
    desc = _description(arch, data)
    _check_zoo_shapes(model, desc)
    total = planned_blocks(model, desc, config, budget_bytes, meta)
    fit_kwargs = distillation_kwargs(model, config.distill, getattr(data, "forward_fn", None))  # teacher: the dense model
    method = MinimalRandomCode(total_bits=total * config.block_bits, block_bits=config.block_bits,
                               init_sigma=config.init_sigma, beta_step=config.beta_step,
                               train_size=data.train_size, seed=seed)
    apply_(model, method)
    fits = lambda b: file_bytes(model, desc, b, config.block_bits, config.coding, meta) + MARGIN - budget_bytes  # noqa: E731
    phases = {p.label: p for p in miracle_phases(config, seed)}
    steps_per_epoch = len(data.train_loader(64, seed=seed))
    schedule = MiracleSchedule(model, config, steps_per_epoch, total, fits, torch.Generator().manual_seed(seed + 9))
    regularizers = method.regularizers(model)
    fit_kwargs = {**fit_kwargs, "log": log} if log is not None else fit_kwargs
    with posterior_sampling(model, local=config.local_reparameterization):
        if "variational+balance" in phases:
            phases["variational+balance"].run(model, data, regularizers=regularizers, on_step=schedule.variational_step,
                                      progress=False, **fit_kwargs)
        schedule.code_round()
        if "coding" in phases:
            phases["coding"].run(model, data, regularizers=regularizers, on_step=schedule.coding_step,
                                 progress=False, **fit_kwargs)
    blocks = schedule.finish()
    return _write(model, (desc, meta), data, config, budget_bytes, blocks, out)


def _description(arch: str, data: Dataset | BatchData) -> dict:
    """The file's model description. A zoo name must describe this model (the file tells readers to
    build it from the name and the data's shape), checked before training; with `BatchData` (no
    input shape to build from) the name must be the model's own."""
    if not isinstance(data, (Dataset, BatchData)):
        raise UserError(f"data is a {type(data).__name__}: pass an nncompress Dataset (nncompress.zoo.load_dataset) or "
                        "your own batches as nc.BatchData(train_batches, test_batches)")
    if isinstance(data, BatchData):
        if arch in MODELS:
            raise UserError(f"arch={arch!r} is a zoo name, but the data are your own batches (BatchData), which do not "
                            "give the input shape to build it from: pass the model's own name (it is read back with "
                            "decode_model(nnc, model=...))")
        return {"arch": arch}
    return {"arch": arch, "in_shape": list(data.in_shape), "num_classes": data.num_classes}


def _check_zoo_shapes(model: nn.Module, desc: dict) -> None:
    """A zoo name in `desc` must describe this model's tensors."""
    if desc["arch"] not in MODELS:
        return
    built = build_model(desc["arch"], tuple(desc["in_shape"]), desc["num_classes"]).state_dict()
    ours = {k: tuple(v.shape) for k, v in plain_state(model).items()}
    if {k: tuple(v.shape) for k, v in built.items()} != ours:
        raise UserError(f"arch={desc['arch']!r} names a zoo model whose tensors differ from this model's; pass the "
                        "model's own name (it is then read back with decode_model(nnc, model=...))")


def _write(model: nn.Module, head: tuple[dict, dict | None], data: Dataset | BatchData, config: MiracleConfig,
           budget: int, blocks: dict[str, int], out: str | os.PathLike | None) -> tuple[nn.Module, dict]:
    """Write the coded model (`head`: the file's model description and meta), check the budget and
    the exact round trip, measure the decoded model."""
    template = copy.deepcopy(model)  # an unparametrized twin to decode into (any model, zoo or not)
    squash_(template)
    round_biases_fp16_(model)
    model.eval()
    path = Path(out) if out else Path(tempfile.mkdtemp()) / "miracle.nnc"
    nnc = encode_model(model, *head, coding=config.coding)
    if len(serialize(nnc)) > budget:
        raise UserError(f"the coded file takes {len(serialize(nnc))} bytes, over the budget of {budget} "
                        f"(the sizing margin is {MARGIN} bytes): report this with the model")
    size = write_nnc(path, nnc)
    decoded = decode_model(read_nnc(path), model=template)
    probe = next(iter(data.test_loader()))
    with torch.no_grad():
        exact = bool(torch.equal(output_tensor(feed(decoded, probe)), output_tensor(feed(model, probe))))
    return decoded, {"file_bytes": size, "budget_bytes": budget, "blocks": blocks, "exact_roundtrip": exact,
                     "index_bits": sum(blocks.values()) * config.block_bits, "file": str(path),
                     "distill": config.distill.enabled, "local_reparameterization": config.local_reparameterization,
                     "accuracy": evaluate(decoded, data.test_loader()).get("accuracy"),
                     "compression": 4 * count_params(decoded) / size}
