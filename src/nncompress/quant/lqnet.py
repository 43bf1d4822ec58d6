"""LQ-Nets: learned quantization with a K-bit basis (Zhang, Yang, Ye & Hua, ECCV 2018; lecture 003
"LQ-Nets").

A K-bit code b in {-1, +1}^K (weights) or {0, 1}^K (activations after a ReLU) stands for the level
v^T b of a learned basis v in R^K: Q(x, v) = v^T e_l for x in (t_l, t_{l+1}], the thresholds being
the midpoints of adjacent levels. The basis and the codes minimise ||B^T v - x||^2 by alternating
(the paper's Quantization Error Minimization, QEM):
    1. fix v, pick each x's nearest level (its code b);
    2. fix B, v = (B B^T)^-1 B x   (least squares).
Weights get one basis per output channel, activations one per layer. The basis is fitted with a few
QEM rounds when the method is applied (on calibration data for activations) and refined by one QEM
round after every training step with a moving average (v <- 0.9 v + 0.1 v_new, as in the paper);
the network trains through Q with the straight-through estimator. Stored form: K-bit codes
(`int_ranges`) + the basis.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.calibrate import observe_inputs
from ..config import Context, Method
from ..parametrize import Encoded, WeightTransform, transform_kind
from ..registry import register
from ..validate import UserError, check_int_range
from .activation import ActQuantizer
from .binary import apply_binary, straight_through
from .primitives import IntSpec

MOMENTUM = 0.9  # moving average of the basis during training
FIT_ROUNDS = 10  # QEM rounds when the method is applied
MAX_SAMPLES = 1 << 16  # activation values kept per layer for the initial fit


def bit_matrix(bits: int, signed: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(2^K, K): row i is code i's bit vector (bit k = (i >> k) & 1) as {-1, +1} or {0, 1}.

        >>> bit_matrix(2, True).tolist()
        [[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]]
    """
    codes = torch.arange(1 << bits).unsqueeze(1)
    b = ((codes >> torch.arange(bits)) & 1).to(dtype)
    return 2 * b - 1 if signed else b


def levels(basis: torch.Tensor, signed: bool) -> torch.Tensor:
    """Every code's level v^T b: (..., K) basis -> (..., 2^K) levels (index = code)."""
    return basis @ bit_matrix(basis.shape[-1], signed, basis.dtype).T


def nearest_codes(x: torch.Tensor, level_table: torch.Tensor) -> torch.Tensor:
    """Code of each row's nearest level: x (R, n), level_table (R, 2^K) -> (R, n) int64."""
    return (x.unsqueeze(-1) - level_table.unsqueeze(-2)).abs().argmin(-1)


def qem_step(x: torch.Tensor, basis: torch.Tensor, signed: bool) -> torch.Tensor:
    """One QEM round per row: codes for the current basis, then the least-squares basis
    v = (B B^T)^-1 B x (a row whose codes do not span K dimensions keeps its basis)."""
    codes = nearest_codes(x, levels(basis, signed))
    b = bit_matrix(basis.shape[-1], signed, x.dtype)[codes]  # (R, n, K)
    gram = b.transpose(1, 2) @ b  # (R, K, K)
    rhs = (b.transpose(1, 2) @ x.unsqueeze(-1)).squeeze(-1)
    solution, info = torch.linalg.solve_ex(gram, rhs)
    ok = (info == 0) & torch.isfinite(solution).all(-1)
    return torch.where(ok.unsqueeze(-1), solution, basis)


def initial_basis(x: torch.Tensor, bits: int, signed: bool, rounds: int = FIT_ROUNDS) -> torch.Tensor:
    """Basis per row of x (R, n): v_k = 2^k s (uniform levels spanning about 1.5 mean|x| for
    signed codes, 2 mean|x| for unsigned), then `rounds` QEM rounds."""
    spread = x.abs().mean(-1, keepdim=True).clamp(min=1e-8)
    s = spread * (1.5 if signed else 2.0) / ((1 << bits) - 1)
    basis = s * (2.0 ** torch.arange(bits, dtype=x.dtype))
    for _ in range(rounds):
        basis = qem_step(x, basis, signed)
    return basis


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)


@transform_kind("lq")
class LQWeight(WeightTransform):
    """w -> v_o^T b per output channel o (K-bit signed codes), straight-through gradient to w; the
    basis `basis` (out, K) is refined by one QEM round after each backward pass (moving average)."""

    def __init__(self, basis: torch.Tensor):
        super().__init__()
        self.register_buffer("basis", basis.detach().clone().float())

    @classmethod
    def fit(cls, w: torch.Tensor, bits: int) -> LQWeight:
        return cls(initial_basis(_rows(w.detach().float()), bits, signed=True))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.basis.shape[-1]

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        return nearest_codes(_rows(w.detach()), levels(self.basis, True)).reshape(w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        value = lq_values(self.codes(w), self.basis, True)
        out = straight_through(w, value)
        if out.requires_grad and self.training:
            out.register_hook(lambda grad, w=w.detach(): self._refine(w))
        return out

    @torch.no_grad()
    def _refine(self, w: torch.Tensor) -> None:
        self.basis.mul_(MOMENTUM).add_((1 - MOMENTUM) * qem_step(_rows(w), self.basis, True))

    def encode(self, w: torch.Tensor) -> Encoded:
        bits = self.basis.shape[-1]
        codes = self.codes(w).to(torch.int16 if bits > 7 else torch.uint8)
        return Encoded(self.kind, {"codes": codes, "basis": self.basis.clone()},
                       {"shape": list(w.shape), "bits": bits, "int_ranges": {"codes": [0, (1 << bits) - 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return lq_values(encoded.tensors["codes"].long(), encoded.tensors["basis"].float(), True)

    def extra_repr(self) -> str:
        return f"bits={self.basis.shape[-1]}, basis per output channel"


def lq_values(codes: torch.Tensor, basis: torch.Tensor, signed: bool) -> torch.Tensor:
    """The level of each code: row o of `codes` (dim 0) uses basis row o (or the single basis)."""
    table = levels(basis, signed)
    if table.dim() == 1:
        return table[codes]
    return table.gather(1, _rows(codes.long())).reshape(codes.shape)


class LQActivation(ActQuantizer):
    """Layer-wise K-bit activation quantizer x -> v^T b, b in {0, 1}^K ({-1, +1}^K when the
    calibration inputs were signed, the `signed` buffer); gradient passes inside [min, max] level."""

    def __init__(self, bits: int):
        super().__init__(IntSpec(bits=bits, signed=False, symmetric=False))
        self.register_buffer("basis", torch.zeros(bits))
        self.register_buffer("signed", torch.tensor(False))

    @torch.no_grad()
    def calibrate(self, samples: torch.Tensor) -> None:
        self.signed.fill_(bool((samples < 0).any()))
        self.basis.copy_(initial_basis(samples.reshape(1, -1).float(), len(self.basis), bool(self.signed))[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signed = bool(self.signed)
        table = levels(self.basis, signed)
        flat = x.detach().reshape(1, -1)
        value = table[nearest_codes(flat, table.unsqueeze(0))].reshape(x.shape)
        out = straight_through(torch.clamp(x, float(table.min()), float(table.max())), value)
        if out.requires_grad and self.training:
            out.register_hook(lambda grad, x=flat: self._refine(x))
        return out

    @torch.no_grad()
    def _refine(self, x: torch.Tensor) -> None:
        if x.shape[-1] > MAX_SAMPLES:
            x = x[:, torch.randperm(x.shape[-1], generator=torch.Generator().manual_seed(0))[:MAX_SAMPLES]]
        new = qem_step(x, self.basis.unsqueeze(0), bool(self.signed))[0]
        self.basis.mul_(MOMENTUM).add_((1 - MOMENTUM) * new)

    def extra_repr(self) -> str:
        return f"LQ bits={len(self.basis)}, {'signed' if bool(self.signed) else 'unsigned'}, basis={self.basis.tolist()}"


class _Samples:
    """Collects up to MAX_SAMPLES input values of one layer (an observer for `observe_inputs`)."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        if self.count < MAX_SAMPLES:
            flat = x.detach().flatten().float()[: MAX_SAMPLES - self.count]
            self.values.append(flat)
            self.count += flat.numel()


@register("lqnet")
@dataclass(frozen=True, kw_only=True)
class LQNet(Method):
    """LQ-Nets: K-bit weights with a learned basis per output channel and, with `act_bits`, K-bit
    activations with a learned basis per layer (calibrated on `data`); the first layer's input
    (the image) is not quantized.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 8))
        >>> _ = LQNet(weight_bits=2).apply(net, Context())
        >>> len(torch.unique(net[0].weight[0]))  # 2^2 levels per row
        4
    """

    weight_bits: int = 2
    act_bits: int | None = None
    keep_first_last: bool = False

    def __post_init__(self) -> None:
        check_int_range("weight_bits", self.weight_bits, 1, 8)
        if self.act_bits is not None:
            check_int_range("act_bits", self.act_bits, 1, 8)

    def check_context(self, ctx: Context) -> None:
        if self.act_bits is not None and ctx.data is None:
            raise UserError("LQNet with act_bits needs calibration data to fit the activation basis: pass data=... "
                            "(or --dataset on the CLI)")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        acts = "after_first" if self.act_bits is not None else None
        layers = apply_binary(self, model, lambda n, l: LQWeight.fit(l.weight, self.weight_bits),
                              keep_first_last=self.keep_first_last, activations=acts,
                              make_act=lambda c, d: LQActivation(self.act_bits))
        quantizers = {n: l.input_quantizer for n, l in layers.items() if isinstance(getattr(l, "input_quantizer", None), LQActivation)}
        if quantizers:
            self._calibrate(model, quantizers, ctx)
        ctx.record(self, layers=list(layers), weight_bits=self.weight_bits, act_bits=self.act_bits)
        return model

    @staticmethod
    def _calibrate(model: nn.Module, quantizers: dict[str, LQActivation], ctx: Context) -> None:
        """Fit each activation basis on its layer's float inputs (quantizers off meanwhile, in order)."""
        for name, quantizer in quantizers.items():  # earlier layers already quantize their inputs
            layer = model.get_submodule(name)
            layer.input_quantizer = nn.Identity()  # the hook stays; it now passes the float input
            samples = observe_inputs(model, {name: _Samples()}, ctx.data)[name]
            layer.input_quantizer = quantizer
            if not samples.values:
                raise UserError(f"LQNet: layer {name!r} saw no input in the calibration data")
            quantizer.calibrate(torch.cat(samples.values))
