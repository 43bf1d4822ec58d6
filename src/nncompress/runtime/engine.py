"""The integer-only reference engine (Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018; lecture "Linear quantization").

`IntegerEngine.from_model(model, example_input)` reads a converted (`nc.convert_`), statically
quantized model (BatchNorm folded, `nc.LinearQuant(weight_bits=8, act_bits=8)`): each Linear / Conv
layer's input quantizer (S_X, Z_X) and stored int8 weight (S_W per channel, Z_W = 0) and int32
bias (S_b = S_W S_X). Between the input quantization and the final dequantization every tensor is
an integer tensor: uint8-range codes q with r = S (q - Z), or int32 accumulators
    acc = sum q_W q_X + (q_b - Z_X sum q_W),     q_Y = Z_Y + M0 2^-31 2^-n acc,   M = S_W S_X / S_Y
with gemmlowp's fixed-point multiply (requant.py). Values are held in int64 tensors (exact on any
device); accumulators are checked to fit int32.

The engine is the oracle of the fake-quantized model: `simulate(x)` runs the model's own float
computation with the engine's rounding (simulate.py) and its integers equal `run_codes(x)`.
Example:
    >>> import torch, nncompress as nc
    >>> from nncompress.runtime.engine import IntegerEngine
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> _ = nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8), data=[torch.randn(64, 4)])
    >>> _ = nc.convert_(net.eval())
    >>> engine = IntegerEngine.from_model(net, torch.randn(2, 4))
    >>> x = torch.randn(5, 4)
    >>> bool((engine(x) - net(x)).abs().max() < 0.05), engine.run_codes(x)["_0:acc"].dtype
    (True, torch.int64)
"""
from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import nn

from .ops import LayerStep
from .plan import Planner, Program
from .simulate import Simulation, simulate


class IntegerEngine(nn.Module):
    """Runs a quantized model in integer arithmetic; `forward` returns float logits.

    An `nn.Module` (without parameters) so that `nc.evaluate(engine, loader)` works.
    """

    def __init__(self, program: Program):
        super().__init__()
        self.program = program

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, example_input: torch.Tensor) -> IntegerEngine:
        """Trace `model` (put in eval mode) and plan its integer steps; `example_input` gives shapes."""
        model.eval()
        return cls(Planner(model, example_input).build())

    @property
    def layers(self) -> dict[str, str]:
        """Node name -> layer name of each integer Linear / Conv layer."""
        return self.program.layers

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> Any:
        return self._execute(x, None)

    @torch.no_grad()
    def run_codes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's integer output, by fx node name; for a layer node also "<node>:in" (its
        input codes on its own grid) and "<node>:acc" (the int32 accumulator)."""
        record: dict[str, torch.Tensor] = {}
        self._execute(x, record)
        return record

    def simulate(self, x: torch.Tensor, dtype: torch.dtype = torch.float64) -> Simulation:
        """The fake-quantized model with the engine's rounding (see simulate.py); its `codes` equal
        `run_codes(x)`."""
        return simulate(self.program, x, dtype)

    def _execute(self, x: torch.Tensor, record: dict[str, torch.Tensor] | None) -> Any:
        if tuple(x.shape[1:]) != self.program.input_shape:
            raise ValueError(f"the engine was planned for inputs of shape (N, {self.program.input_shape}), "
                             f"got {tuple(x.shape)}")
        env: dict[str, Any] = {}
        steps = self.program.steps
        for node in self.program.graph_module.graph.nodes:
            step = steps[node.name]
            if node.op == "output":
                return torch.fx.node.map_arg(node.args[0], lambda n: steps[n.name].info.dequantize(env[n.name]))
            args = (x,) if node.op == "placeholder" else torch.fx.node.map_arg(node.args, lambda n: env[n.name])
            kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n.name])
            if record is not None and isinstance(step, LayerStep):
                record[f"{node.name}:in"], record[f"{node.name}:acc"], value = step.trace(*args)
            else:
                value = step.run(*args, **kwargs)
            env[node.name] = value
            if record is not None and torch.is_tensor(value):
                record[node.name] = value
        raise RuntimeError("the traced graph has no output node")  # pragma: no cover
