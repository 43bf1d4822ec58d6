"""Binary networks: BinaryConnect, BNN, BWN and XNOR-Net (lecture 003 "Binarization and
Ternarization"; lecture 002 "BinaryConnect", "XNOR-Net").

- BinaryConnect (Courbariaux et al., NIPS 2015): binary weights in the forward pass, full-precision
  accumulators in the update. Deterministic w_b = +1 if w >= 0 else -1; stochastic w_b = +1 with
  probability p = hard_sigmoid(w) = clip((w + 1) / 2, 0, 1). The gradient dC/dw_b updates the
  real-valued w (straight-through), which is clipped after each update: w_t = clip(w_{t-1} - eta dC/dw_b)
  (`clip_latent_weights_`, call it after every optimizer step). As in the authors' code, the binary
  values are +-H with the layer's Glorot constant H = sqrt(1.5 / (fan_in + fan_out)) and the clip is
  [-H, H] (H = 1 is the slides' form; a BatchNorm after every layer makes the two equivalent).
- BNN (Hubara et al., NIPS 2016): BinaryConnect weights *and* binary activations sign(x); the
  straight-through estimator passes the gradient where |x| <= 1 and cancels it where |x| > 1
  (g_r = g_q 1_{|r| <= 1}).
- BWN (Rastegari et al., ECCV 2016): W ~ alpha B with B* = sign(W), alpha* = ||W||_1 / n per output
  filter (the minimiser of ||W - alpha B||^2).
- XNOR-Net: BWN weights and binary inputs H = sign(I) with scale beta = ||I||_1 / n, so
  X^T W ~ beta alpha (H xnor B); block order BN -> binarize -> conv -> pool; the first and last layers
  stay in full precision. Simplification: the per-location scale map K of the paper is replaced by
  one beta per sample (K's mean over the image), which commutes with the convolution, so the binary
  kernel (`runtime/xnor.py`) computes sign(I) (*) sign(W) and scales the result exactly.

Binary activations need a zero-centred input (sign of a ReLU output is always +1), so the
activation binarizer holds the block's BatchNorm over the layer's input channels (BN -> binarize).
Binary weights are stored as 1 bit per weight (+ one float scale per filter) via `int_ranges`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import (CompositionError, Encoded, WeightTransform, attach, check_attachable, original,
                           transform_kind, transforms)
from ..prune.masks import check_weight
from ..registry import register
from ..validate import UserError, check_choice
from .activation import ActQuantizer, attach_input_quantizer, input_quantizer
from .attention import unfuse_attention_
from .binarize import glorot_h, hard_sigmoid, l1_scale, sign_pm1, sign_ste, stochastic_sign, straight_through
from .primitives import IntSpec

SCALINGS = ("none", "glorot", "l1")


@transform_kind("binary")
class BinaryWeight(WeightTransform):
    """w -> scale * b with b in {-1, +1}: deterministic sign(w) or stochastic with p =
    hard_sigmoid(w / H) (training only, a fresh seeded sample per training step); scale = the
    constant H (scaling "none") or alpha = ||W_o||_1 / n per output filter ("l1", H = 1).

    Stochastic sampling is seeded by (`seed`, `step`); `step` advances when a gradient flows back
    through the weight, so every training step draws a new sample while any forward pass without
    backward (evaluation, reload, deepcopy) is reproducible. In eval mode the stochastic variant
    uses the deterministic sign (BinaryConnect's test-time binary network).
    """

    role = "quantizer"
    storage_bits = 1

    def __init__(self, *, scaling: str = "l1", constant: float = 1.0, stochastic: bool = False,
                 cancel: bool = False, clip: float | None = None, seed: int = 0):
        super().__init__()
        self.scaling = check_choice("scaling", scaling, SCALINGS)
        self.stochastic, self.cancel, self.clip, self.seed = stochastic, cancel, clip, seed
        self.register_buffer("constant", torch.tensor(float(constant)))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64) if stochastic else None)

    def binary(self, w: torch.Tensor) -> torch.Tensor:
        """The {-1, +1} tensor this forward pass computes with (no gradient)."""
        w = w.detach() / self.constant
        if self.stochastic and self.training:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.step))
            return stochastic_sign(w, generator)
        return sign_pm1(w)

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        return l1_scale(w) if self.scaling == "l1" else self.constant

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.stochastic and self.training:
            b = straight_through(w / self.constant, self.binary(w))
            if b.requires_grad:
                b.register_hook(self._advance)
        else:
            b = sign_ste(w / self.constant, self.cancel)  # cancels where |w| > H
        return self.scale(w) * b

    def _advance(self, grad: torch.Tensor) -> None:
        self.step.add_(1)

    def encode(self, w: torch.Tensor) -> Encoded:
        """1-bit codes (1: +1, 0: -1) and the scale (per filter for "l1", else one constant)."""
        codes = (self.binary(w) > 0).to(torch.uint8)
        return Encoded(self.kind, {"codes": codes, "scale": self.scale(w.detach()).detach().clone().float()},
                       {"shape": list(w.shape), "bits": 1, "scaling": self.scaling, "int_ranges": {"codes": [0, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        codes = encoded.tensors["codes"].float()
        return encoded.tensors["scale"].float() * (2 * codes - 1)

    def extra_repr(self) -> str:
        kind = "stochastic" if self.stochastic else "deterministic"
        return f"{kind}, scaling={self.scaling}, clip={self.clip}"


@torch.no_grad()
def clip_latent_weights_(model: nn.Module) -> nn.Module:
    """BinaryConnect's update rule w_t = clip(w_{t-1} - eta dC/dw_b): clamp every binarized
    weight's real-valued accumulator to [-clip, clip]. Call after each optimizer step, e.g.
    `fit(model, data, config, on_step=lambda step: clip_latent_weights_(model))`.

        >>> layer = torch.nn.Linear(4, 2)
        >>> _ = attach(layer, BinaryWeight(scaling="none", clip=1.0))
        >>> with torch.no_grad(): _ = layer.parametrizations.weight.original.mul_(10)
        >>> _ = clip_latent_weights_(layer)
        >>> float(layer.parametrizations.weight.original.detach().abs().max())
        1.0
    """
    for module in model.modules():
        bounds = [t.clip for t in transforms(module) if isinstance(t, BinaryWeight) and t.clip is not None]
        if bounds:
            original(module).clamp_(-min(bounds), min(bounds))
    return model


def has_stochastic_weights(model: nn.Module) -> bool:
    """True when some layer trains with sampled binary weights but is evaluated with sign(w)."""
    return any(isinstance(t, BinaryWeight) and t.stochastic for m in model.modules() for t in transforms(m))


class BinaryActivation(ActQuantizer):
    """BN -> sign(x) on a layer's input (BNN, XNOR-Net); `scaled`: times beta = mean |x| per sample.

    The BatchNorm over the layer's input channels centres the input (the binarized block order
    BN -> binarize -> conv -> pool of XNOR-Net); the sign's gradient is cancelled where |x| > 1.
    """

    def __init__(self, channels: int, dims: int, *, scaled: bool):
        super().__init__(IntSpec(bits=1, signed=True, symmetric=True, restricted=False))
        self.scaled, self.dims = scaled, dims
        self.norm = (nn.BatchNorm1d if dims <= 1 else nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 0:  # Linear: channels last, any leading dims
            return self.norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
        return self.norm(x)

    def beta(self, x: torch.Tensor) -> torch.Tensor:
        """beta = ||x_n||_1 / n per sample n (XNOR-Net's input scale), shaped to broadcast."""
        if self.dims == 0:
            return x.abs().mean(-1, keepdim=True)
        return x.abs().mean(tuple(range(1, x.dim())), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalized(x)
        b = sign_ste(x, cancel=True)
        return self.beta(x) * b if self.scaled else b

    def extra_repr(self) -> str:
        return f"binary, BN -> sign{', x beta per sample' if self.scaled else ''}"


@torch.no_grad()
def binary_connect_weight(layer: nn.Module, scaling: str, **options: object) -> BinaryWeight:
    """A +-H BinaryWeight for `layer` whose accumulator is clipped to [-H, H] (now and after each step)."""
    h = glorot_h(original(layer)) if scaling == "glorot" else 1.0
    original(layer).clamp_(-h, h)
    return BinaryWeight(scaling="none", constant=h, clip=h, **options)


def layer_dims(layer: nn.Module) -> tuple[int, int]:
    """(input channels, spatial dims: 0 Linear, 1/2/3 ConvNd) of a Linear or Conv layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, 0
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer.in_channels, len(layer.kernel_size)
    raise UserError(f"{type(layer).__name__} is not a Linear or Conv layer")


def binary_targets(method: Method, model: nn.Module, keep_first_last: bool) -> dict[str, nn.Module]:
    """The targeted layers in model order, without the first and last when `keep_first_last`
    (XNOR-Net keeps them in full precision); an error when nothing is left."""
    layers = method.targets.layers(model)
    if keep_first_last:
        names = list(layers)
        layers = {n: layers[n] for n in names[1:-1]}
    if not layers:
        raise UserError(f"{type(method).__name__}: no layer left to binarize among {method.targets}"
                        f"{' once the first and last are kept (keep_first_last=True)' if keep_first_last else ''}")
    return layers


def check_targets(method: Method, layers: dict[str, nn.Module], activations: dict[str, nn.Module]) -> None:
    """Refuse before changing anything: every layer must take a weight quantizer (and an input one)."""
    label = type(method).__name__
    for name, layer in layers.items():
        check_attachable(layer, "quantizer", layer_name=name, new=label)
        check_weight(layer.weight, name, label)
    for name, layer in activations.items():
        if input_quantizer(layer) is not None:
            raise CompositionError(f"{name}: its input is already quantized ({input_quantizer(layer).extra_repr()}); "
                                   "call nc.remove_quantization_(model) first, or leave the layer out with "
                                   "targets=Select(exclude=...)")
        layer_dims(layer)


def apply_binary(method: Method, model: nn.Module, make_weight, *, keep_first_last: bool,
                 activations: str | None, make_act=None) -> dict[str, nn.Module]:
    """Attach `make_weight(name, layer)` to every target's weight and, when `activations` is
    "all" or "after_first", `make_act(name, layer)` to their inputs; returns the layers."""
    layers = binary_targets(method, model, keep_first_last)
    act_layers = dict(list(layers.items())[1:] if activations == "after_first" else layers) if activations else {}
    check_targets(method, layers, act_layers)
    if act_layers and any(isinstance(m, nn.MultiheadAttention) for m in model.modules()):
        unfuse_attention_(model)  # torch's fused attention would bypass input quantizers
        layers = binary_targets(method, model, keep_first_last)
        act_layers = dict(list(layers.items())[1:] if activations == "after_first" else layers)
        check_targets(method, layers, act_layers)
    for name, layer in layers.items():
        attach(layer, make_weight(name, layer), layer_name=name)
    for name, layer in act_layers.items():
        channels, dims = layer_dims(layer)
        attach_input_quantizer(layer, make_act(channels, dims), layer_name=name)
    return layers


@register("binary_connect")
@dataclass(frozen=True, kw_only=True)
class BinaryConnect(Method):
    """BinaryConnect: +-H weights (deterministic or stochastic), float accumulators clipped to [-H, H].

    Args:
        stochastic: sample w_b = +1 with p = hard_sigmoid(w / H) while training (sign at test time).
        scaling: "glorot" (H = sqrt(1.5 / (fan_in + fan_out)), the authors' code) or "none" (H = 1).
        seed: seed of the stochastic samples.
    Train with `on_step=lambda step: clip_latent_weights_(model)` and, when stochastic, call
    `quant.bn_reestimate.reestimate_batchnorm_(model, train_batches)` after training (the flows do both).
    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = BinaryConnect(scaling="none").apply(net, Context())
        >>> sorted(torch.unique(net[0].weight).tolist())
        [-1.0, 1.0]
    """

    stochastic: bool = False
    scaling: str = "glorot"
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("scaling", self.scaling, ("glorot", "none"))

    def weight(self, name: str, layer: nn.Module) -> BinaryWeight:
        return binary_connect_weight(layer, self.scaling, stochastic=self.stochastic, seed=self.seed)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, self.weight, keep_first_last=False, activations=None)
        ctx.record(self, layers=list(layers), stochastic=self.stochastic)
        return model


@register("bnn")
@dataclass(frozen=True, kw_only=True)
class BNN(Method):
    """Binarized Neural Network (Hubara et al. 2016): +-H weights and binary activations
    (BN -> sign), the STE cancelling gradients where |x| > 1 (weights: |w| > H); the network's input
    (the first targeted layer's) stays real-valued, as in the paper.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> _ = BNN().apply(net, Context())
        >>> sorted(torch.unique(net[2].input_quantizer(torch.randn(4, 6))).tolist())
        [-1.0, 1.0]
    """

    scaling: str = "glorot"

    def __post_init__(self) -> None:
        check_choice("scaling", self.scaling, ("glorot", "none"))

    def weight(self, name: str, layer: nn.Module) -> BinaryWeight:
        return binary_connect_weight(layer, self.scaling, cancel=True)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, self.weight, keep_first_last=False, activations="after_first",
                              make_act=lambda c, d: BinaryActivation(c, d, scaled=False))
        ctx.record(self, layers=list(layers))
        return model


@register("bwn")
@dataclass(frozen=True, kw_only=True)
class BWN(Method):
    """Binary-Weight-Network: W ~ alpha sign(W), alpha = ||W||_1 / n per output filter.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 1))
        >>> with torch.no_grad(): _ = net[0].weight.copy_(torch.tensor([[0.5, -1.5, 1.0, -1.0]]))
        >>> _ = BWN().apply(net, Context())
        >>> net[0].weight.tolist()
        [[1.0, -1.0, 1.0, -1.0]]
    """

    keep_first_last: bool = False

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, lambda n, l: BinaryWeight(scaling="l1"),
                              keep_first_last=self.keep_first_last, activations=None)
        ctx.record(self, layers=list(layers))
        return model


@register("xnor")
@dataclass(frozen=True, kw_only=True)
class XNORNet(Method):
    """XNOR-Net: BWN weights (alpha per filter) and binary inputs BN -> beta sign(x) (beta per
    sample); the first and last targeted layers stay in full precision (`keep_first_last`).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
        ...                           torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> _ = XNORNet().apply(net, Context())
        >>> [hasattr(m, "input_quantizer") for m in (net[0], net[2], net[4])]
        [False, True, False]
    """

    keep_first_last: bool = True

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, lambda n, l: BinaryWeight(scaling="l1"),
                              keep_first_last=self.keep_first_last, activations="all",
                              make_act=lambda c, d: BinaryActivation(c, d, scaled=True))
        ctx.record(self, layers=list(layers))
        return model


__all__ = ["BNN", "BWN", "BinaryActivation", "BinaryConnect", "BinaryWeight", "XNORNet",
           "clip_latent_weights_", "hard_sigmoid", "has_stochastic_weights", "l1_scale",
           "sign_pm1", "sign_ste", "stochastic_sign", "straight_through"]
