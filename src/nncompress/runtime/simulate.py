"""The fake-quantized model with the integer engine's rounding: the oracle check (Jacob et al. 2018).

The plain simulation (the converted model's own forward) rounds S_X S_W acc / S_Y in float32 inside
the next layer's StaticQuantizer; the engine multiplies acc by M0 2^-31 2^-n in fixed point
(gemmlowp rounds twice: at 2^-31 of the product, then at the shift; on mnist-10k that double
rounding causes all of the 1.8e-4 / 4.3e-4 differing codes of LeNet-5 / ResNet-20,
benchmarks/results/runtime_exactness.md). So integer-for-integer equality needs the simulation to
round the way the engine does.
`simulate` runs the model's traced graph in float (pools, ReLUs, flatten: the model's own modules)
and, at exactly the points where the engine rounds, replaces the float rounding by the engine's:
- after a layer that the engine requantizes: acc = round(y / (S_X S_W)) is recovered from the float
  output y, requantized with the engine's `Requant`, and passed on dequantized, S_Y (q_Y - Z_Y);
- residual add and average pool: the engine's `Add` / `AvgPool` rounding of the integers recovered
  from the float inputs (the pool's window sums from the model's own pool module, run in float64);
- everywhere else the float values are the model's own (they lie on the grid, so the next
  StaticQuantizer reproduces the codes exactly).
What remains different from the engine is all the integer arithmetic: matrix multiplies with the
zero-point terms and the folded bias, padding with Z_X, strides, groups, pooling windows, ReLU as a
clamp, flatten. `Simulation.float_rounding` counts, at each rounding point, how often the plain
float rounding of the same value gives another code (the 1-LSB cases). Nothing in the model changes.

`dtype` says how a layer's float output y is computed:
- torch.float64 (default): torch's float64 linear / convolution (the layer's own `_conv_forward`:
  its stride, padding, groups) of S_X (q_X - Z_X) with S_W q_W and bias S_W S_X q_b: the real-valued
  function the fake-quantized layer stands for, accurate to ~1e-9 accumulator steps, so recovering
  acc is exact for any layer width;
- torch.float32: the model's own layer as it runs (StaticQuantizer pre-hook, stored-weight decode,
  float32 convolution); recovering acc stays exact while the float32 error is below half an
  accumulator step (`max_recovery_error` reports the largest distance: 0.12 on the digits models,
  0.35 on LeNet-5 for mnist-10k, whose 800-input fc1 nears the limit), and `float_rounding` then
  measures the model's real float32 rounding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..analysis.hooks import eval_with_hooks
from .ops import Add, AvgPool, LayerStep, QuantizeInput
from .qvalue import Grid, QInfo

if TYPE_CHECKING:
    from .plan import Program


@dataclass
class CodeDiff:
    """How two integer tensors differ: elements, how many differ, the largest difference."""

    elements: int = 0
    differing: int = 0
    max_abs: int = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        diff = (a.to(torch.int64) - b.to(torch.int64)).abs()
        self.elements += diff.numel()
        self.differing += int((diff != 0).sum())
        self.max_abs = max(self.max_abs, int(diff.max()) if diff.numel() else 0)

    @property
    def rate(self) -> float:
        return self.differing / self.elements if self.elements else 0.0


@dataclass
class Simulation:
    """`output` (float), every node's integers (keys as `IntegerEngine.run_codes`), the largest
    float -> integer recovery error and, per rounding point, the plain float rounding's differences."""

    output: Any = None
    codes: dict[str, torch.Tensor] = field(default_factory=dict)
    max_recovery_error: float = 0.0
    float_rounding: dict[str, CodeDiff] = field(default_factory=dict)


class _FixedPointInterpreter(torch.fx.Interpreter):
    def __init__(self, program: Program, result: Simulation, dtype: torch.dtype):
        super().__init__(program.graph_module)
        self.program, self.result, self.dtype = program, result, dtype

    def recover(self, value: torch.Tensor, info: QInfo) -> torch.Tensor:
        codes, error = info.recover(value)
        self.result.max_recovery_error = max(self.result.max_recovery_error, error)
        return codes

    def compare_float_rounding(self, name: str, exact: torch.Tensor, value: torch.Tensor, grid: Grid, lo: int) -> None:
        plain = torch.clamp(grid.quantize(value), min=lo)
        self.result.float_rounding.setdefault(name, CodeDiff()).add(plain, exact)

    def run_node(self, n: torch.fx.Node) -> Any:
        step = self.program.steps[n.name]
        if isinstance(step, LayerStep):
            return self.run_layer(n, step)
        value = super().run_node(n)
        if isinstance(step, QuantizeInput):
            codes = step.run(value)
            value = step.info.dequantize(codes, self.dtype)
        elif isinstance(step, (Add, AvgPool)):
            codes = self.rounded(n, step, value)
            if step.info.grid is not None:
                lo = step.lo if isinstance(step, Add) else step.info.grid.q_min
                self.compare_float_rounding(n.name, codes, value, step.info.grid, lo)
            value = step.info.dequantize(codes, self.dtype if step.info.kind == "codes" else torch.float64)
        elif torch.is_tensor(value) and step.info is not None:
            codes = self.recover(value, step.info)
        else:
            return value
        self.result.codes[n.name] = codes
        return value

    def rounded(self, n: torch.fx.Node, step: Add | AvgPool, value: torch.Tensor) -> torch.Tensor:
        """The engine's rounding of an add / average pool, on the integers recovered from floats."""
        if isinstance(step, Add):
            a, b = (self.recover(self.env[arg], self.program.steps[arg.name].info) for arg in n.args)
            return step.run(a, b)
        source = self.program.steps[n.args[0].name].info  # the pool again, in float64 on exact inputs:
        exact = source.dequantize(self.recover(self.env[n.args[0]], source), torch.float64)
        mean = self.call_module(n.target, (exact,), {}) if n.op == "call_module" else n.target(exact, *n.args[1:])
        sums = self.recover(mean * step.count, source) + (step.count - 1) * source.zero_point
        return step.run_sums(sums)

    def run_layer(self, n: torch.fx.Node, step: LayerStep) -> torch.Tensor:
        x = self.env[n.args[0]]
        if step.pre is not None:
            x = step.layer.grid.info().dequantize(step.pre(self.recover(x, self.program.steps[n.args[0].name].info)))
        codes_in = step.layer.grid.quantize(x)
        self.result.codes[f"{n.name}:in"] = codes_in
        if self.dtype == torch.float64:
            y = self.exact_layer(self.fetch_attr(n.target), step, codes_in)
        else:
            y = self.call_module(n.target, (x,), {})  # the model's own layer: StaticQuantizer hook, stored weights
        acc = self.recover(y, step.layer.acc_info())
        self.result.codes[f"{n.name}:acc"] = acc
        if step.post is None:
            self.result.codes[n.name] = acc
            return y
        codes = step.post(acc)
        self.compare_float_rounding(n.name, codes, y, step.info.grid, step.post.lo)
        self.result.codes[n.name] = codes
        return step.info.dequantize(codes, self.dtype)

    @staticmethod
    def exact_layer(module: nn.Module, step: LayerStep, codes: torch.Tensor) -> torch.Tensor:
        """The layer's real-valued output in float64: torch's linear / convolution of S_X (q_X - Z_X)."""
        weight, bias = step.layer.real_parameters()
        x = step.layer.grid.info().dequantize(codes, torch.float64)
        if step.layer.conv is None:
            return F.linear(x, weight, bias)
        return module._conv_forward(x, weight, bias)


@torch.no_grad()
def simulate(program: Program, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> Simulation:
    """Run the fake-quantized model of `program` on `x` with the engine's rounding (module docstring)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype} must be torch.float32 or torch.float64")
    result = Simulation()
    result.output = _FixedPointInterpreter(program, result, dtype).run(x)
    return result


@torch.no_grad()
def model_layer_codes(model: nn.Module, program: Program, x: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor]]:
    """The plain simulation: `model(x)` and the codes each integer layer's own StaticQuantizer
    produced, keyed "<node>:in" like `run_codes`."""
    codes: dict[str, torch.Tensor] = {}

    per_layer: dict[str, list[tuple[str, Grid]]] = {}
    for node_name, layer_name in program.layers.items():
        per_layer.setdefault(layer_name, []).append((f"{node_name}:in", program.steps[node_name].layer.grid))

    def recorder(targets: list[tuple[str, Grid]]):
        def hook(module: nn.Module, args: tuple) -> None:
            for key, grid in targets:  # runs after the quantizer's own hook: on-grid values
                codes[key] = grid.quantize(args[0])
        return hook

    with eval_with_hooks(model, {name: recorder(t) for name, t in per_layer.items()}, pre=True):
        output = model(x)
    return output, codes


def compare_codes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, CodeDiff]:
    """Per shared key, how the integer tensors of `a` and `b` differ."""
    out = {}
    for key in a.keys() & b.keys():
        out[key] = CodeDiff()
        out[key].add(a[key], b[key])
    return out
