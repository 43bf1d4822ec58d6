"""Input-channel permutation before N:M pruning (Pool & Yu, "Channel Permutations for N:M Sparsity",
NeurIPS 2021; Yoo's lecture, slide "Before Step 2, Permutation Can be Applied to Avoid Excessive
Pruning under 2:4").

Which weights share a group of M depends on the order of the input channels. Reordering a layer's
input channels (its weight's columns) and, identically, the output channels of the layer that
produces them (its weight rows, bias and any BatchNorm in between) leaves the network's function
unchanged, but lets 2:4 keep more weight magnitude. Objective (Pool & Yu eq. 1): the sum over
groups and rows of the N largest |w| in the group.

Search (`search_permutation`): greedy channel swaps between groups, always taking the swap with the
largest gain, until no swap gains or `max_swaps` is reached; gains of group pairs untouched by a
swap are cached. Every accepted swap strictly increases the kept magnitude, so the result is never
worse than the identity. (Pool & Yu add bounded exhaustive searches over a few groups and random
perturbations to escape local optima; this module does the greedy swap phase only.)

Where it applies (`find_producer`): the layer's input must come, through channel-wise modules only
(ReLU, dropout, pooling, BatchNorm, Flatten), from one Linear / Conv (groups = 1) whose output
feeds nothing else. The path is read from a `torch.fx` trace; residual adds, shared outputs and
untraceable models keep the identity (the report says why).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from .masks import nm_keep_mask, nm_matrix

CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Dropout1d,
               nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
CHANNELWISE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.dropout}


def channel_matrix(weight: torch.Tensor) -> torch.Tensor:
    """|w| as [rows, input channels]: a column per input feature (Linear) or input channel (conv)."""
    return nm_matrix(weight.detach().abs().double())


def kept_magnitude(weight: torch.Tensor, n: int, m: int, perm: torch.Tensor | None = None) -> float:
    """Sum of |w| that N:M pruning keeps, after ordering the input channels as `perm` (new channel j
    is old channel perm[j]; None: identity)."""
    a = channel_matrix(weight)
    if perm is not None:
        a = a[:, perm]
    return float((a * nm_keep_mask(a, n, m)).sum())


def _group_value(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Sum over rows of the top-n entries of each group; `groups` [..., R, M] -> [...]."""
    return groups.topk(n, dim=-1).values.sum((-1, -2))


def _leave_one_out(a: torch.Tensor, cols: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column c in `cols`: per row, the n-th largest |w| of c's group without c (the
    threshold a newcomer must beat), and the sum over rows of the top n of the group without c."""
    rows = a.shape[0]
    group_start = cols // m * m
    others = torch.stack([group_start + (cols % m + k) % m for k in range(1, m)], -1)  # [c, M-1]
    rest = a[:, others]  # [R, c, M-1]
    top = rest.topk(n, dim=-1).values
    return top[..., -1], top.sum(-1).sum(0) if rows else torch.zeros(len(cols), dtype=a.dtype)


def _swap_in(a: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """P[c1, c2] = sum over rows of max(0, a[:, c2] - threshold[:, c1]): what column c2 adds when it
    takes column c1's place (top-n of a set plus one newcomer = top-n of the set + max(0, x - t_n))."""
    rows, cols = threshold.shape[0], threshold.shape[1]
    chunk = max(1, (1 << 22) // max(rows * a.shape[1], 1))
    out = [torch.relu(a[:, None, :] - threshold[:, i:i + chunk, None]).sum(0) for i in range(0, cols, chunk)]
    return torch.cat(out) if out else torch.zeros(0, a.shape[1], dtype=a.dtype)


def search_permutation(weight: torch.Tensor, n: int = 2, m: int = 4, max_swaps: int | None = None) -> torch.Tensor:
    """An input-channel order (a permutation tensor: new channel j = old channel perm[j]) under
    which N:M pruning keeps at least as much |w| as the identity: greedy best-gain swaps of two
    channels of different groups (see the module doc).

    Swapping column c1 (group i) and c2 (group j) changes the kept magnitude by
    gain = T[c1] + P[c1, c2] + T[c2] + P[c2, c1] - V[i] - V[j], where V is a group's kept |w|,
    T[c] the kept |w| of c's group without c and P[c1, c2] what c2 adds in c1's place (`_swap_in`);
    after a swap only the two groups' rows of P and the two columns change."""
    a = channel_matrix(weight).clone()
    channels = a.shape[1]
    perm = torch.arange(channels)
    groups = channels // m
    if groups < 2:
        return perm
    max_swaps = 4 * channels if max_swaps is None else max_swaps
    group_of = torch.arange(channels) // m
    same_group = group_of[:, None] == group_of[None, :]
    value = _group_value(a.reshape(a.shape[0], groups, m).permute(1, 0, 2), n)
    threshold, rest = _leave_one_out(a, torch.arange(channels), n, m)
    swap_in = _swap_in(a, threshold)
    tolerance = 1e-12 * float(value.sum())
    for _ in range(max_swaps):
        base = rest - value[group_of]
        gain = base[:, None] + base[None, :] + swap_in + swap_in.t()
        gain.masked_fill_(same_group, -torch.inf)
        c1, c2 = divmod(int(gain.argmax()), channels)
        if not float(gain[c1, c2]) > tolerance:
            break
        a[:, [c1, c2]] = a[:, [c2, c1]]
        perm[[c1, c2]] = perm[[c2, c1]]
        changed = torch.cat([torch.arange(g * m, (g + 1) * m) for g in (c1 // m, c2 // m)])
        for g in (c1 // m, c2 // m):
            value[g] = _group_value(a[:, g * m:(g + 1) * m], n)
        threshold[:, changed], rest[changed] = _leave_one_out(a, changed, n, m)
        swap_in[changed] = _swap_in(a, threshold[:, changed])
        swap_in[:, [c1, c2]] = torch.relu(a[:, None, [c1, c2]] - threshold[:, :, None]).sum(0)
    return perm


@dataclass
class Producer:
    """Where a layer's input channels come from: the producing layer, the BatchNorms on the way and
    how many consecutive input features one channel covers (a Flatten after a conv: H x W)."""

    name: str
    norms: list[str] = field(default_factory=list)
    block: int = 1


def find_producers(model: nn.Module, consumers: list[str]) -> dict[str, Producer | str]:
    """For each consumer layer, its `Producer`, or a string saying why none applies."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as err:  # noqa: BLE001 - any tracing failure means: no permutation
        return {c: f"model is not traceable by torch.fx ({type(err).__name__})" for c in consumers}
    modules = dict(model.named_modules())
    by_target = {node.target: node for node in graph.nodes if node.op == "call_module"}
    found: dict[str, Producer | str] = {}
    for consumer in consumers:
        node = by_target.get(consumer)
        found[consumer] = ("not called as a module in the traced graph" if node is None
                           else _walk_back(node, modules, modules[consumer]))
    return found


def _walk_back(node: torch.fx.Node, modules: dict[str, nn.Module], consumer: nn.Module) -> Producer | str:
    norms: list[str] = []
    flattened = False
    current = node.args[0] if node.args else None
    while isinstance(current, torch.fx.Node):
        if len(current.users) != 1:
            return f"input channels also feed another node ({current.name})"
        if current.op == "call_module":
            module = modules[current.target]
            kind = parametrize.type_before_parametrizations(module)
            if kind in (nn.Linear, nn.Conv1d, nn.Conv2d):
                return _producer(current.target, module, consumer, norms, flattened)
            if isinstance(module, NORMS):
                norms.append(current.target)
            elif isinstance(module, nn.Flatten):
                flattened = True
            elif not isinstance(module, CHANNELWISE):
                return f"passes through {type(module).__name__} ({current.target})"
        elif current.op == "call_function" and current.target in CHANNELWISE_FUNCTIONS:
            pass
        elif current.op == "call_function" and current.target is torch.flatten:
            flattened = True
        elif current.op == "placeholder":
            break
        else:
            return f"passes through {current.op} {getattr(current.target, '__name__', current.target)}"
        current = current.args[0] if current.args else None
    return "its input is the model input"


def _producer(name: str, module: nn.Module, consumer: nn.Module, norms: list[str], flattened: bool) -> Producer | str:
    if getattr(module, "groups", 1) != 1:
        return f"producer {name} is a grouped convolution"
    out_channels = module.weight.shape[0]
    in_dim = consumer.weight.shape[1]
    if in_dim % out_channels:
        return f"producer {name} has {out_channels} outputs for {in_dim} inputs"
    block = in_dim // out_channels
    if block > 1 and not flattened:
        return f"producer {name} has {out_channels} outputs for {in_dim} inputs"
    return Producer(name, norms, block)


@torch.no_grad()
def permute_channels_(model: nn.Module, consumer: str, producer: Producer, perm: torch.Tensor) -> None:
    """Reorder `consumer`'s input channels as `perm` and `producer`'s outputs (weight rows, bias,
    BatchNorm parameters and running statistics) the same way: the outputs are unchanged."""
    modules = dict(model.named_modules())
    layer = modules[consumer]
    columns = (perm[:, None] * producer.block + torch.arange(producer.block)).flatten()
    layer.weight.copy_(layer.weight[:, columns])
    source = modules[producer.name]
    for tensor in (source.weight, source.bias):
        if tensor is not None:
            tensor.copy_(tensor[perm])
    for norm_name in producer.norms:
        norm = modules[norm_name]
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
            if tensor is not None:
                tensor.copy_(tensor[perm])


def _plain(module: nn.Module) -> bool:
    return not parametrize.is_parametrized(module) and not hasattr(module, "input_quantizer")


def permute_for_nm_(model: nn.Module, layers: list[str], n: int = 2, m: int = 4) -> dict[str, dict]:
    """Search and apply an input-channel permutation for each of `layers` (before N:M pruning);
    returns per layer the kept magnitude with the identity and with the permutation chosen (equal
    where none applies), the total |w| and, where the identity was kept for a structural reason,
    why."""
    modules = dict(model.named_modules())
    producers = find_producers(model, layers)
    report = {}
    for name in layers:
        weight = modules[name].weight
        base = kept_magnitude(weight, n, m)
        entry = {"identity": base, "permuted": base, "total": float(weight.detach().abs().double().sum())}
        producer = producers[name]
        if isinstance(producer, str):
            entry["reason"] = producer
        elif producer.block % m == 0:
            entry["reason"] = f"each group of {m} lies inside one channel's {producer.block} features"
        elif producer.block != 1:
            entry["reason"] = f"channels cover {producer.block} features each (not 1 or a multiple of {m})"
        elif not all(_plain(modules[x]) for x in (name, producer.name, *producer.norms)):
            entry["reason"] = "the layer or its producer already carries a transform"
        else:
            perm = search_permutation(weight, n, m)
            entry.update(permuted=kept_magnitude(weight, n, m, perm), producer=producer.name)
            if not torch.equal(perm, torch.arange(perm.numel())):
                permute_channels_(model, name, producer, perm)
        report[name] = entry
    return report
