"""Export models our torch.fx exporter cannot trace (Hugging Face transformers: several inputs,
integer token ids, attention masks, data-dependent Python) by splicing our int8 Linear layers into
the float graph that `torch.onnx.export` writes.

    float copy (weights squashed to the values the quantized model computes with, activation
    quantizers detached) --torch.onnx--> float ONNX graph --splice--> int8 graph

Every quantized Linear of the model is found in the float graph by its weight (the MatMul or Gemm
whose initializer holds exactly W^T / W) and replaced by what `layers.emit_layer` writes for it,
as in the fx exporter: int8 codes with per-channel scales, static uint8 inputs (QDQ or QOperator),
dynamic per-tensor (DynamicQuantizeLinear) or per-token codes + MatMulInteger, the bias inside.
The float bias Add that followed the MatMul goes. Everything else (embeddings, masks, LayerNorm,
softmax) is torch's own export of the float model. Other quantized layer types are refused by name.
"""
from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..analysis.hooks import eval_with_hooks
from ..parametrize import squash_, transforms
from ..quant.activation import detach_input_quantizer, input_quantizer
from ..validate import UserError
from .graph import OPSET, GraphBuilder, GridValues, Value
from .layers import emit_layer


class _Inputs(nn.Module):
    """`model(**dict(zip(names, args)))` with positional tensors, returning the first output tensor
    (Hugging Face: `last_hidden_state` / `logits`), as torch.onnx needs."""

    def __init__(self, model: nn.Module, names: list[str] | None):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        out = self.model(**dict(zip(self.names, args))) if self.names else self.model(*args)
        while not torch.is_tensor(out):
            out = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
        return out


def quantized_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The layers that carry a weight transform or an input quantizer; all must be Linear."""
    found = {}
    for name, module in model.named_modules():
        if not (transforms(module) or input_quantizer(module) is not None):
            continue
        if type_before_parametrizations(module) is not nn.Linear:
            raise UserError(f"layer {name!r} ({type_before_parametrizations(module).__name__}): a model with several "
                            "inputs exports through torch.onnx, where only quantized Linear layers are spliced in")
        found[name] = module
    return found


def _float_copy(model: nn.Module) -> nn.Module:
    """The model computing the same function without quantization ops: weights squashed to their
    (decoded) values, activation quantizers detached."""
    plain = copy.deepcopy(model).eval()
    for module in plain.modules():
        detach_input_quantizer(module)
    return squash_(plain)


def _torch_onnx(model: nn.Module, args: tuple, names: list[str]) -> Any:
    import onnx

    buffer = io.BytesIO()
    dynamic = {name: {0: "batch", **({1: "sequence"} if arg.dim() >= 2 and not arg.is_floating_point() else {})}
               for name, arg in zip(names, args)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, input_names=names, output_names=["output"], opset_version=OPSET,
                          dynamic_axes={**dynamic, "output": {0: "batch"}}, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


class Splicer(GridValues):
    """Replaces the float MatMul / Gemm of each quantized Linear in a torch.onnx graph."""

    def __init__(self, proto: Any, fmt: str, weight_range: str):
        super().__init__(GraphBuilder(name=proto.graph.name), fmt, weight_range)
        self.proto = proto
        graph = proto.graph
        self.g.used |= {i.name for i in graph.initializer} | {n.name for n in graph.node}
        self.g.used |= {o for n in graph.node for o in [*n.input, *n.output]}
        self.inits = {i.name: i for i in graph.initializer}
        # torch.onnx stores identical tensors once and hands the copies out through Identity nodes
        self.identities = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input}

    def _weight_of(self, node: Any) -> np.ndarray | None:
        from onnx import numpy_helper

        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in self.inits:
            return None
        w = numpy_helper.to_array(self.inits[node.input[1]])
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        return w if transposed else w.T

    def _bias_add(self, node: Any, consumers: dict[str, list]) -> Any | None:
        """The Add right after a MatMul that adds the layer's bias (an initializer)."""
        users = consumers.get(node.output[0], [])
        if node.op_type == "MatMul" and len(users) == 1 and users[0].op_type == "Add":
            other = [i for i in users[0].input if i != node.output[0]]
            source, seen = (other[0] if other else None), set()
            while source in self.identities and source not in seen:  # a deduplicated bias (e.g. equal biases)
                seen.add(source)
                source = self.identities[source]
            if source in self.inits:
                return users[0]
        return None

    def splice(self, layers: dict[str, nn.Module], ranks: dict[str, int]) -> Any:
        from onnx import helper

        graph = self.proto.graph
        by_weight = {}
        for name, layer in layers.items():
            key = layer.weight.detach().float().numpy().tobytes()
            if key in by_weight:
                raise UserError(f"layers {by_weight[key]!r} and {name!r} hold identical weights: the float graph cannot "
                                "tell their MatMuls apart")
            by_weight[key] = name
        consumers: dict[str, list] = {}
        for node in graph.node:
            for i in node.input:
                consumers.setdefault(i, []).append(node)
        nodes, skip, done = [], set(), set()
        for node in graph.node:
            if id(node) in skip:
                continue
            w = self._weight_of(node)
            name = None if w is None else by_weight.get(np.ascontiguousarray(w, dtype=np.float32).tobytes())
            if name is None:
                nodes.append(node)
                continue
            bias_add = self._bias_add(node, consumers) if layers[name].bias is not None else None
            if bias_add is None and node.op_type == "MatMul" and layers[name].bias is not None:
                raise UserError(f"layer {name!r}: no bias Add with a constant bias follows its MatMul ({node.name}) "
                                "in torch.onnx's graph; splicing would add the bias twice")
            start = len(self.g.nodes)
            y = emit_layer(self, layers[name], name, Value(float=node.input[0]), None, ranks[name])
            out = (bias_add or node).output[0]
            nodes += self.g.nodes[start:]
            nodes.append(helper.make_node("Identity", [self.as_float(y, name)], [out], name=self.g.unique(f"{name}/out")))
            if bias_add is not None:
                skip.add(id(bias_add))
            done.add(name)
        self.unused = sorted(set(layers) - done)  # e.g. a pooler when the output is last_hidden_state
        return self._assemble(nodes)

    def _assemble(self, nodes: list) -> Any:
        from onnx import helper

        graph = self.proto.graph
        used = {i for n in nodes for i in n.input}
        inits = [i for i in graph.initializer if i.name in used] + list(self.g.initializers)
        new = helper.make_graph(nodes, graph.name, list(graph.input), list(graph.output), inits)
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if self.g.ms_ops else [])
        model = helper.make_model(new, opset_imports=opsets, producer_name="nncompress")
        model.ir_version = min(model.ir_version, 9)
        return model


def _ranks(model: nn.Module, layers: dict[str, nn.Module], args: tuple, names: list[str] | None) -> dict[str, int]:
    """The input rank of each layer, recorded in one forward pass."""
    ranks: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            ranks.setdefault(name, args[0].dim())
        return hook

    with eval_with_hooks(model, {n: record(n) for n in layers}, pre=True), torch.no_grad():
        _Inputs(model, names)(*args)
    return ranks


def export_spliced(model: nn.Module, example: dict | tuple, fmt: str,
                   weight_range: str) -> tuple[Any, dict, list[str], list[str]]:
    """(ONNX model, per-layer description, input names, quantized layers the output does not use)
    for a model called with a dict of tensors (`model(**example)`) or a tuple (`model(*example)`);
    the output is the model's first output tensor."""
    names = list(example) if isinstance(example, dict) else [f"input_{i}" for i in range(len(example))]
    args = tuple(example.values()) if isinstance(example, dict) else tuple(example)
    if not all(torch.is_tensor(a) for a in args):
        raise UserError(f"export example: every input must be a tensor, got {[type(a).__name__ for a in args]}")
    model = model.eval()
    layers = quantized_linears(model)
    plain = _float_copy(model)
    keys = names if isinstance(example, dict) else None
    ranks = _ranks(plain, layers, args, keys)
    proto = _torch_onnx(_Inputs(plain, keys), args, names)
    splicer = Splicer(proto, fmt, weight_range)
    spliced = splicer.splice(layers, ranks)
    return spliced, splicer.layers, names, splicer.unused

