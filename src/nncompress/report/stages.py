"""What a report is made of: one `StageRecord` per step of a compression run (dense, pruned,
clustered, encoded...), each captured from the model at that point by `capture_stage`.

A recipe runner calls `capture_stage` after each stage and `nncompress.report.write_report` at the
end; every figure in the record is measured on the model it is given (sizes: the real file when the
stage wrote one, else the storage estimate of `hardware.energy.storage_estimate`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analysis.metrics import layer_stats, weight_layers
from ..encode.container import NncModel, read_nnc
from ..encode.model import decode_model
from ..hardware.energy import HOROWITZ_45NM, EnergyConfig, EnergyReport, EnergyTable, estimate, workloads_from_model

#: at most this many weights per layer are kept for the histograms (an even subsample, deterministic)
HISTOGRAM_SAMPLES = 200_000


@dataclass
class StageRecord:
    """One stage of a run: its name, test accuracy (None when not measured), size in bytes, the
    per-layer table (params, non-zeros, bits, stored bytes, MACs, BOPs, energy), the energy totals,
    and each layer's non-zero weight values (for the weight-distribution histograms)."""

    name: str
    accuracy: float | None
    size_bytes: int
    layers: list[dict]
    energy: dict[str, float]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    size_measured: bool = False  # True: `size_bytes` is a real file's size

    def as_dict(self) -> dict:
        """JSON-ready (the weight samples are left out)."""
        return {"name": self.name, "accuracy": self.accuracy, "size_bytes": self.size_bytes,
                "size_measured": self.size_measured, "layers": self.layers, "energy": self.energy}


def weight_samples(model: nn.Module, limit: int = HISTOGRAM_SAMPLES) -> dict[str, np.ndarray]:
    """Each Conv / Linear layer's non-zero weights as the model computes with them (after masks and
    quantizers), evenly subsampled to at most `limit` values."""
    samples = {}
    for name, layer in weight_layers(model).items():
        w = layer.weight.detach().float().flatten().cpu()
        w = w[w != 0].numpy()
        if len(w) > limit:
            w = w[:: math.ceil(len(w) / limit)]
        samples[name] = w
    return samples


def capture_stage(name: str, model: nn.Module, in_shape: tuple[int, ...], accuracy: float | None = None, *,
                  size_bytes: int | None = None, storage_bits: Mapping[str, int] | None = None,
                  weight_bits: Mapping[str, int] | None = None, table: EnergyTable = HOROWITZ_45NM,
                  config: EnergyConfig = EnergyConfig(), keep_weights: bool = True) -> StageRecord:
    """A `StageRecord` of `model` now. `size_bytes` is a file's real size (else the sum of the
    layers' storage estimates plus 32-bit other parameters); `storage_bits` / `weight_bits` per
    layer override what the model's transforms say (see `workloads_from_model`)."""
    workloads = workloads_from_model(model, in_shape, storage_bits=storage_bits, weight_bits=weight_bits)
    energy = estimate(workloads, table, config)
    rows = layer_rows(model, in_shape, energy)
    if size_bytes is None:
        layer_param_ids = {id(p) for m in weight_layers(model).values() for p in m.parameters()}
        others = sum(p.numel() for p in model.parameters() if id(p) not in layer_param_ids)
        size = math.ceil(sum(w.storage_bits for w in workloads) / 8) + 4 * others
    else:
        size = size_bytes
    return StageRecord(name, accuracy, int(size), rows, dict(energy.totals),
                       weight_samples(model) if keep_weights else {}, size_measured=size_bytes is not None)


def layer_rows(model: nn.Module, in_shape: tuple[int, ...], energy: EnergyReport) -> list[dict]:
    """The report's per-layer table: params, non-zeros, bits, stored bytes, MACs, BOPs, energy (pJ)."""
    by_name = {row.name: row for row in energy.layers}
    rows = []
    for stats in layer_stats(model, in_shape):
        e = by_name[stats.name]
        rows.append({"layer": stats.name, "kind": stats.kind, "params": stats.params, "weights": stats.weights,
                     "nonzero": stats.nonzero,
                     "weight_bits": e.weight_bits, "act_bits": e.act_bits, "bytes": e.storage_bits / 8,
                     "macs": stats.macs, "effective_macs": e.effective_macs, "bops": e.bops,
                     "arithmetic": e.arithmetic, "weights_in": e.weights_in, "compute_pj": e.compute_pj,
                     "memory_pj": e.memory_pj, "total_pj": e.total_pj})
    return rows


def nnc_storage(nnc: NncModel) -> tuple[dict[str, int], dict[str, int]]:
    """Per weight layer of a parsed .nnc file: (bits it occupies in the file: its weight and bias
    sections with their header shares, bits per stored weight value). A layer without a quantizer
    keeps the float width of its stored values."""
    storage: dict[str, int] = {}
    bits: dict[str, int] = {}
    for name, size in nnc.sizes.items():
        layer, _, tensor = name.rpartition(".")
        if tensor in ("weight", "bias") and layer:
            storage[layer] = storage.get(layer, 0) + 8 * size
    for stored in nnc.layers:
        layer, _, tensor = stored.name.rpartition(".")
        if tensor == "weight":
            final = stored.chain[-1]
            width = final.meta.get("bits")
            if width is None:
                main = max(final.tensors.values(), key=lambda t: t.numel())
                width = 8 * main.element_size() if main.is_floating_point() else None
            if width:
                bits[layer] = int(width)
    for layer, value in nnc.tensors.items():
        name, _, tensor = layer.rpartition(".")
        if tensor == "weight" and isinstance(value, torch.Tensor) and name not in bits:
            bits[name] = 8 * value.element_size()
    return storage, bits


def capture_file_stage(name: str, path: str | os.PathLike, accuracy: float | None = None, *,
                       model: nn.Module | None = None, **options) -> StageRecord:
    """A `StageRecord` of a written .nnc file: the model decoded from it (a zoo model, or `model`
    for your own module), each layer at its real stored size, the stage at the file's size."""
    nnc = read_nnc(path)
    decoded = decode_model(nnc, model)
    in_shape = tuple(int(d) for d in nnc.model["in_shape"])
    return capture_stage(name, decoded, in_shape, accuracy, **file_options(path, nnc), **options)


def file_options(path: str | os.PathLike, nnc: NncModel | None = None) -> dict:
    """`capture_stage`'s options for a model that a .nnc file holds: the file's size and each layer's
    bytes and bits as stored in it (`nnc`: the file, parsed already)."""
    storage, bits = nnc_storage(nnc if nnc is not None else read_nnc(path))
    return {"size_bytes": Path(path).stat().st_size, "storage_bits": storage, "weight_bits": bits}
