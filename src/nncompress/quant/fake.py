"""Fake quantization of weights and biases (simulated integers in float), as parametrizations.

`FakeQuant` is the weight transform: the model computes with S (q - Z) and trains through the
straight-through estimator; `encode` gives the integer codes and qparams (kind "linear"), and
`decode` rebuilds exactly what `forward` computes. `BiasQuant` puts a bias on the int32 grid of the
integer matrix multiply, S_b = S_W S_X and Z_b = 0 (Jacob et al., CVPR 2018, eq. 8; lecture
"Linear quantization: fully-connected layer").
"""
from __future__ import annotations

import torch

from ..parametrize import Encoded, WeightTransform, transform_kind
from .granularity import Granularity, PerGroup, granularity_from_meta, granularity_to_meta
from .primitives import IntSpec, choose_qparams, dequantize, fake_quantize, int_dtype, quantize, round_ste

INT32_RANGE = (-(2**31), 2**31 - 1)


def tensor_range(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-granularity (r_min, r_max), shaped to broadcast against x (grouped view for PerGroup)."""
    if isinstance(granularity, PerGroup):
        g = granularity.group(x)
        return g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    dims = granularity.reduce_dims(x)
    return x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)


def _grouped(x: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    return granularity.group(x) if isinstance(granularity, PerGroup) else x


def _ungrouped(g: torch.Tensor, like: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    return granularity.ungroup(g, like) if isinstance(granularity, PerGroup) else g


@transform_kind("linear")
class FakeQuant(WeightTransform):
    """w -> S (clamp(round(w / S) + Z) - Z) with buffers `scale` and `zero_point`."""

    def __init__(self, spec: IntSpec, granularity: Granularity, scale: torch.Tensor, zero_point: torch.Tensor):
        super().__init__()
        self.spec, self.granularity = spec, granularity
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zero_point", zero_point.detach().clone().float())

    @classmethod
    def fit(cls, w: torch.Tensor, spec: IntSpec, granularity: Granularity,
            r_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> FakeQuant:
        """Qparams from `r_range` (default: the min / max of `w` at this granularity)."""
        r_min, r_max = r_range if r_range is not None else tensor_range(w.detach(), granularity)
        return cls(spec, granularity, *choose_qparams(r_min, r_max, spec))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.spec.bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q_min, q_max = self.spec.q_range
        g = self.granularity
        return _ungrouped(fake_quantize(_grouped(w, g), self.scale, self.zero_point, q_min, q_max), w, g)

    def encode(self, w: torch.Tensor) -> Encoded:
        q_min, q_max = self.spec.q_range
        codes = quantize(_grouped(w.detach(), self.granularity), self.scale, self.zero_point, q_min, q_max)
        codes = _ungrouped(codes, w, self.granularity).to(int_dtype(self.spec.bits, self.spec.signed))
        meta = {"shape": list(w.shape), "bits": self.spec.bits, "signed": self.spec.signed,
                "q_range": [q_min, q_max], "granularity": granularity_to_meta(self.granularity),
                "int_ranges": {"codes": [q_min, q_max]}}
        return Encoded(self.kind, {"codes": codes, "scale": self.scale.clone(),
                                   "zero_point": self.zero_point.to(torch.int32)}, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        granularity = granularity_from_meta(encoded.meta["granularity"])
        codes = encoded.tensors["codes"].float()
        scale, zero_point = encoded.tensors["scale"].float(), encoded.tensors["zero_point"].float()
        return _ungrouped(dequantize(_grouped(codes, granularity), scale, zero_point), codes, granularity)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, granularity={self.granularity}"


@transform_kind("int32_bias")
class BiasQuant(WeightTransform):
    """b -> clamp(round(b / S_b), int32) S_b with S_b = S_W S_X per output channel (a buffer), so
    the bias adds exactly onto the int32 accumulator; the gradient passes straight through."""

    storage_bits = 32

    def __init__(self, bias_scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", bias_scale.detach().clone().float())

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return torch.clamp(round_ste(b / self.scale), *INT32_RANGE) * self.scale

    def encode(self, b: torch.Tensor) -> Encoded:
        codes = torch.clamp(torch.round(b.detach() / self.scale), *INT32_RANGE).to(torch.int32)
        return Encoded(self.kind, {"codes": codes, "scale": self.scale.clone()}, {"shape": list(b.shape), "bits": 32})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["codes"].float() * encoded.tensors["scale"].float()

    def extra_repr(self) -> str:
        return "int32, S_b = S_W S_X"
