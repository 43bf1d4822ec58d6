"""Energy per layer of a (compressed) model, from the 45 nm energy table.

The table is Horowitz, "Computing's energy problem (and what we can do about it)", IEEE ISSCC 2014,
as quoted in the lectures (seeds 000 "Goal and Benefits", 001 "Low Bit-Width Operations are Cheap",
003 "45nm CMOS process"), in pJ:

    8 bit int ADD 0.03    32 bit int ADD 0.1     16 bit float ADD 0.4    32 bit float ADD 0.9
    8 bit int MULT 0.2    32 bit int MULT 3.1    16 bit float MULT 1.1   32 bit float MULT 3.7
    32 bit register file 1    32 bit SRAM cache 5    32 bit DRAM memory 640

"Memory access is 3 orders of magnitude more than arithmetic" (seed 003): pruning and weight sharing
save energy mostly by letting the weights leave DRAM for on-chip SRAM. The model, per inference
(batch 1), is deliberately simple and every assumption is a field of `EnergyConfig`:

- compute: each MAC that runs costs one multiply and one add. With `skip_zeros` (a zero-skipping
  accelerator such as EIE) a layer runs MACs x density of them. The arithmetic is integer when the
  layer's input is integer-quantized: the multiply at sqrt(b_w b_a) bits (an array multiplier grows
  with b_w b_a), the accumulation at `acc_bits`; otherwise float at the activation width.
- widths the table does not list: a power law E(b) = E(b0) (b / b0)^k through the two nearest listed
  widths (outside the listed range, the nearest two's law is extended). It gives an int16 add of
  0.055 pJ (Horowitz's own figure is 0.05) and an int16 multiply of 0.79 pJ.
- memory: the weights are read once per inference at their stored size (storage bits / 32 accesses)
  from SRAM when all layers' weights fit in `sram_bytes`, else from DRAM. Each weight layer reads its
  input and writes its output activations at the activation width, from SRAM when they fit in what the
  weights leave free, else DRAM. Register-file traffic is not counted (the entry is kept in tables).
- BOPs = MACs x b_w x b_a (`analysis.metrics.bit_operations`).

Users may supply their own table (`load_table`, YAML or JSON with the fields of `EnergyTable`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from ..analysis.metrics import bit_operations, count_activations, count_macs, weight_layers
from ..parametrize import weight_bits as stored_weight_bits
from ..validate import UserError, check_positive, unknown_name_error

OPS = ("int_add", "int_mult", "float_add", "float_mult")
ACCESSES = ("register_file", "sram", "dram")
MAX_TABLE_BYTES = 1 << 20


@dataclass(frozen=True)
class EnergyTable:
    """Energy in pJ: per operation by bit width (`int_add[8]` = one 8-bit integer add), and per 32-bit
    access of the register file, SRAM and DRAM."""

    int_add: dict[int, float]
    int_mult: dict[int, float]
    float_add: dict[int, float]
    float_mult: dict[int, float]
    register_file: float
    sram: float
    dram: float
    source: str = ""

    def op(self, name: str, bits: float) -> float:
        """pJ of one `name` operation ("int_mult", ...) at `bits` (listed, or by the power law)."""
        return interpolate(getattr(self, name), bits)

    def access(self, memory: str, bits: float) -> float:
        """pJ to move `bits` bits from `memory` ("sram", "dram", "register_file"): bits / 32 accesses."""
        return getattr(self, memory) * bits / 32

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object, what: str = "energy table") -> EnergyTable:
        """A validated table: the four operations as {bits: pJ} with at least two widths each, the three
        memories as pJ per 32-bit access, all positive and finite; unknown keys are refused."""
        if not isinstance(data, Mapping):
            raise UserError(f"{what}: expected a mapping of {', '.join(OPS + ACCESSES)}, got {type(data).__name__}")
        known = (*OPS, *ACCESSES, "source")
        for key in data:
            if key not in known:
                raise unknown_name_error(f"{what} field", str(key), known)
        missing = [key for key in OPS + ACCESSES if key not in data]
        if missing:
            raise UserError(f"{what}: missing {', '.join(missing)}")
        ops = {name: _op_points(data[name], f"{what}: {name}") for name in OPS}
        memories = {name: _energy(data[name], f"{what}: {name}") for name in ACCESSES}
        source = data.get("source", "")
        if not isinstance(source, str):
            raise UserError(f"{what}: source must be a string, got {source!r}")
        return cls(**ops, **memories, source=source)


def _energy(value: object, field_name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{field_name} must be a finite number of pJ, got {value!r}")
    return check_positive(field_name, float(value))


def _op_points(value: object, field_name: str) -> dict[int, float]:
    if not isinstance(value, Mapping) or len(value) < 2:
        raise UserError(f"{field_name} must map at least two bit widths to pJ, e.g. {{8: 0.2, 32: 3.1}}; got {value!r}")
    points = {}
    for bits, pj in value.items():
        width = int(bits) if isinstance(bits, str) and bits.isdigit() else bits
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 128:
            raise UserError(f"{field_name}: bit width {bits!r} must be an integer in [1, 128]")
        points[width] = _energy(pj, f"{field_name}[{width}]")
    return dict(sorted(points.items()))


def interpolate(points: Mapping[int, float], bits: float) -> float:
    """E(bits) on the power law through the two listed widths nearest `bits` (exact when listed).

    >>> round(interpolate({8: 0.03, 32: 0.1}, 16), 4)
    0.0548
    """
    if bits in points:
        return points[bits]
    widths = sorted(points)
    below = [w for w in widths if w < bits]
    above = [w for w in widths if w > bits]
    lo, hi = (below[-1], above[0]) if below and above else (widths[-2], widths[-1]) if below else (widths[0], widths[1])
    exponent = math.log(points[hi] / points[lo]) / math.log(hi / lo)
    return points[lo] * (bits / lo) ** exponent


HOROWITZ_45NM = EnergyTable(
    int_add={8: 0.03, 32: 0.1}, int_mult={8: 0.2, 32: 3.1}, float_add={16: 0.4, 32: 0.9},
    float_mult={16: 1.1, 32: 3.7}, register_file=1.0, sram=5.0, dram=640.0,
    source="Horowitz, Computing's energy problem (and what we can do about it), IEEE ISSCC 2014 (45 nm)")


def load_table(path: str | os.PathLike) -> EnergyTable:
    """A user's energy table from a YAML or JSON file (same fields as `EnergyTable`), validated."""
    path = Path(path)
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise UserError(f"energy table {str(path)!r} is over {MAX_TABLE_BYTES} bytes")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"energy table {str(path)!r} is not valid YAML / JSON ({err})") from None
    return EnergyTable.from_dict(data, f"energy table {str(path)!r}")


@dataclass(frozen=True)
class EnergyConfig:
    """The hardware assumptions: on-chip SRAM size, zero skipping, accumulator width."""

    sram_bytes: int = 256 * 1024
    skip_zeros: bool = True
    acc_bits: int = 32


@dataclass(frozen=True)
class LayerWorkload:
    """What one weight layer costs per inference: dense MACs, weights (and non-zeros), the bits each
    weight value has (`weight_bits`) and the bits the layer occupies in memory (`storage_bits`:
    codes, indices, codebooks, bias), activation width and counts, and integer or float arithmetic."""

    name: str
    macs: int
    weights: int
    nonzero: int
    weight_bits: int
    storage_bits: int
    act_bits: int = 32
    in_acts: int = 0
    out_acts: int = 0
    integer: bool = False


@dataclass
class LayerEnergy:
    """One layer's estimate in pJ per inference (compute, weight memory, activation memory)."""

    name: str
    macs: int
    effective_macs: float
    bops: int
    weight_bits: int
    act_bits: int
    storage_bits: int
    arithmetic: str
    compute_pj: float
    weight_memory_pj: float
    act_memory_pj: float
    weights_in: str
    acts_in: str

    @property
    def memory_pj(self) -> float:
        return self.weight_memory_pj + self.act_memory_pj

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def as_dict(self) -> dict:
        return {**asdict(self), "memory_pj": self.memory_pj, "total_pj": self.total_pj}


@dataclass
class EnergyReport:
    """Per-layer estimates and their sums; `as_dict` is what `--json` writes."""

    layers: list[LayerEnergy]
    config: EnergyConfig
    table: EnergyTable
    totals: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"layers": [row.as_dict() for row in self.layers], "totals": dict(self.totals),
                "config": asdict(self.config), "table": self.table.as_dict()}


def mac_energy(table: EnergyTable, layer: LayerWorkload, acc_bits: int) -> tuple[float, str]:
    """pJ of one multiply-accumulate of `layer` and a label of the arithmetic ("int5x8", "fp32")."""
    if layer.integer:
        mult = table.op("int_mult", math.sqrt(layer.weight_bits * layer.act_bits))
        return mult + table.op("int_add", acc_bits), f"int{layer.weight_bits}x{layer.act_bits}"
    return table.op("float_mult", layer.act_bits) + table.op("float_add", layer.act_bits), f"fp{layer.act_bits}"


def estimate(workloads: list[LayerWorkload], table: EnergyTable = HOROWITZ_45NM,
             config: EnergyConfig = EnergyConfig()) -> EnergyReport:
    """Compute and memory energy per layer (see the module docstring for the model)."""
    weight_bytes = sum(w.storage_bits for w in workloads) / 8
    weights_on_chip = weight_bytes <= config.sram_bytes
    free_sram = config.sram_bytes - (weight_bytes if weights_on_chip else 0)
    rows = []
    for w in workloads:
        density = w.nonzero / w.weights if w.weights else 0.0
        effective = w.macs * density if config.skip_zeros else float(w.macs)
        per_mac, arithmetic = mac_energy(table, w, config.acc_bits)
        act_bits = (w.in_acts + w.out_acts) * w.act_bits
        acts_on_chip = act_bits / 8 <= free_sram
        weights_in, acts_in = ("sram" if weights_on_chip else "dram"), ("sram" if acts_on_chip else "dram")
        rows.append(LayerEnergy(
            w.name, w.macs, effective, bit_operations({w.name: w.macs}, w.weight_bits, w.act_bits), w.weight_bits,
            w.act_bits, w.storage_bits, arithmetic, effective * per_mac, table.access(weights_in, w.storage_bits),
            table.access(acts_in, act_bits), weights_in.upper(), acts_in.upper()))
    totals = {key: float(sum(getattr(r, key) for r in rows))
              for key in ("compute_pj", "weight_memory_pj", "act_memory_pj", "memory_pj", "total_pj")}
    totals.update(macs=sum(r.macs for r in rows), effective_macs=sum(r.effective_macs for r in rows),
                  bops=sum(r.bops for r in rows), storage_bytes=weight_bytes)
    return EnergyReport(rows, config, table, totals)


def storage_estimate(weights: int, nonzero: int, bits: int, bias: int = 0, index_bits: int = 4,
                     bias_bits: int = 32) -> int:
    """Bits of one layer stored dense (`weights` x `bits`) or, when smaller, sparse: each kept weight
    with a relative index of `index_bits` (the lectures' compressed sparse rows); plus the bias."""
    return min(weights * bits, nonzero * (bits + index_bits)) + bias * bias_bits


def _input_format(layer: nn.Module) -> tuple[int, bool] | None:
    """(bits, integer) of the layer's activation quantizer (`input_quantizer` child), if any."""
    quantizer = getattr(layer, "input_quantizer", None)
    if quantizer is None:
        return None
    spec, fmt = getattr(quantizer, "spec", None), getattr(quantizer, "fmt", None)
    if spec is not None and getattr(spec, "bits", None):
        return int(spec.bits), True
    if fmt is not None and getattr(fmt, "bits", None):
        return int(fmt.bits), False
    return None


def workloads_from_model(model: nn.Module, in_shape: tuple[int, ...], *, storage_bits: Mapping[str, int] | None = None,
                         weight_bits: Mapping[str, int] | None = None, act_bits: int = 32,
                         index_bits: int = 4) -> list[LayerWorkload]:
    """One `LayerWorkload` per Conv / Linear layer of `model` for one input of `in_shape`.

    Weight bits come from the layer's transforms (`parametrize.weight_bits`) unless `weight_bits`
    gives them (a model decoded from a file computes in float but was stored at fewer bits);
    `storage_bits` (e.g. the layer's real share of a .nnc file, in bits) overrides `storage_estimate`.
    A layer with an integer activation quantizer computes in integers at its bits."""
    macs = count_macs(model, in_shape)
    acts = count_activations(model, in_shape)
    rows = []
    for name, layer in weight_layers(model).items():
        w = layer.weight.detach()
        nonzero = int(torch.count_nonzero(w))
        bits = int((weight_bits or {}).get(name) or stored_weight_bits(layer))
        bias = layer.bias.numel() if layer.bias is not None else 0
        stored = (storage_bits or {}).get(name)
        if stored is None:
            stored = storage_estimate(w.numel(), nonzero, bits, bias, index_bits)
        a_bits, integer = _input_format(layer) or (act_bits, False)
        a_in, a_out = acts.get(name, (0, 0))
        rows.append(LayerWorkload(name, macs.get(name, 0), w.numel(), nonzero, bits, int(stored), a_bits, a_in, a_out,
                                  integer and bits <= 16))
    return rows


def model_energy(model: nn.Module, in_shape: tuple[int, ...], table: EnergyTable = HOROWITZ_45NM,
                 config: EnergyConfig = EnergyConfig(), **workload_options) -> EnergyReport:
    """`estimate(workloads_from_model(model, in_shape, ...))` in one call."""
    return estimate(workloads_from_model(model, in_shape, **workload_options), table, config)
