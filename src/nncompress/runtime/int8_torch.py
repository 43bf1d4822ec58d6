"""Fast int8 execution inside PyTorch for converted models, on oneDNN's x86 int8 kernels (the ones
torch.compile's x86 quantization lowers to: `torch.ops.onednn.qlinear_pointwise` / `qconv2d_pointwise`).

`to_int8_(model)` replaces each converted, statically quantized Linear / Conv2d by an `Int8Linear` /
`Int8Conv2d`: the float input is quantized on the layer's own static grid (exactly the
StaticQuantizer's rounding, clamp(round(x / S_X) + Z_X)), the stored int8 codes are prepacked once,
and the kernel accumulates u8 x s8 products in int32 and writes float32 S_X S_W acc + b (zero padding
pads the codes with Z_X). So every layer computes the fake-quantized layer's function (the plain
simulation) up to float32 rounding, and everything between layers (ReLU, pools, residual adds) runs
as before. A Linear with dynamic inputs (per tensor or per token: the transformer recipe) becomes an
`Int8DynamicLinear` (this GEMM or `torch._int_mm`, whichever is faster for the weight's shape),
its per-row scales applied after the int32 dot product, the quantization and the rescaling each in
one C call (`int8_rows`: per-token int8 in PyTorch went from 1.4-1.6x to 2.2-2.5x float32 on a
BERT-style encoder, benchmarks/results/runtime.md);
with `to_int8_(model, exact=False)` a per-tensor dynamic Linear runs fbgemm's fused dynamic kernel
instead (`FusedDynamicLinear`: torch's quantize_dynamic speed, within one input step of the simulation).
Unlike the reference `IntegerEngine` the activations between layers stay float: this is the fast
path, the engine is the bit-exact oracle.

Each layer checks at construction that the kernel is exact on this CPU (random full-range codes
against the int64 accumulator): without VNNI, x86 int8 kernels may saturate u8 x s8 pair sums in
int16 (see BENCHMARKING.md); such a CPU gets an UnsupportedModelError instead of wrong outputs.
Measured against float32 eager on one thread of an AVX-512 VNNI VM (benchmarks/results/runtime_int8.md):
a 4096x4096 Linear 3.0x at batch 1 and 5.7x at batch 64; LeNet-5 0.99x / 3.2x and ResNet-20
0.74x / 1.6x at batch 1 / 64 (activations cross to float between layers; torch.ao's FX int8 model,
which keeps uint8 activations and fuses ReLU / add, is faster on conv nets but is another function).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..quant.activation import DynamicQuantizer, input_quantizer
from ..quant.primitives import qparams_of_finite_range
from ..validate import UserError
from . import int8_rows
from .layers import IntegerLayer, _weight_codes
from .qvalue import Grid, UnsupportedModelError

TOLERANCE = 1e-5  # relative to the largest |output|: float32 rounding only


def _quantize_u8(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """clamp(round(x / S) + Z) as uint8: the StaticQuantizer's float32 operations in its order, in
    place on one temporary (10x faster than fresh tensors per step on large activations)."""
    return x.div(grid.scale).round_().add_(grid.zero_point).clamp_(grid.q_min, grid.q_max).to(torch.uint8)


class _Int8Layer(nn.Module):
    """Shared part: the input grid, per-channel weight scales (float32), float bias and the check."""

    int8_kernel = True  # inference only: prepacked opaque weights (see api.save_model)

    def __init__(self, layer: IntegerLayer, bias: torch.Tensor | None):
        super().__init__()
        if (layer.grid.q_min, layer.grid.q_max) != (0, 255) or int(layer.weight.abs().max()) > 127:
            raise UnsupportedModelError(f"layer {layer.name!r}: the int8 kernels need uint8 inputs and int8 weights")
        self.grid = layer.grid
        self.register_buffer("weight_scale", layer.weight_scale.float())
        self.register_buffer("weight_zero_point", torch.zeros(layer.weight.shape[0], dtype=torch.int64))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def check_exact(self, layer: IntegerLayer, shape: tuple[int, ...]) -> None:
        """Compare the kernel with the exact int64 accumulator on random full-range codes."""
        gen = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 256, shape, generator=gen)
        info = layer.acc_info()
        q_b = layer.bias + layer.grid.zero_point * layer.weight.flatten(1).sum(1)  # undo the zero-point folding
        exact = info.dequantize(layer.accumulate(codes) - q_b.view(info.scale.shape), torch.float64)
        got = self.kernel(codes.to(torch.uint8), with_bias=False).double()
        error = float((got - exact).abs().max() / exact.abs().max().clamp_min(1e-30))
        if not error <= TOLERANCE:  # NaN fails too
            raise UnsupportedModelError(f"layer {layer.name!r}: oneDNN's int8 kernel is not exact on this CPU "
                                        f"(relative error {error:.1e}, int16 saturation without VNNI?); use the "
                                        "float model")

    def kernel(self, codes: torch.Tensor, with_bias: bool = True) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(_quantize_u8(x, self.grid))


class Int8Linear(_Int8Layer):
    """y = S_X S_W (q_W (q_X - Z_X)) + b with oneDNN's int8 GEMM; inputs of any leading shape."""

    def __init__(self, layer: IntegerLayer, bias: torch.Tensor | None):
        super().__init__(layer, bias)
        self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(layer.weight.to(torch.int8), None))
        self.check_exact(layer, (8, layer.weight.shape[1]))

    def kernel(self, codes: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        rows = codes.reshape(-1, codes.shape[-1])
        bias = self.bias if with_bias else None
        out = torch.ops.onednn.qlinear_pointwise(rows, float(self.grid.scale), self.grid.zero_point, self.packed,
                                                 self.weight_scale, self.weight_zero_point, bias, 1.0, 0,
                                                 torch.float32, "none", [], "")
        return out.reshape(*codes.shape[:-1], out.shape[-1])


class Int8Conv2d(_Int8Layer):
    """Conv2d with oneDNN's int8 convolution (zero padding = code Z_X), float32 output."""

    def __init__(self, layer: IntegerLayer, bias: torch.Tensor | None, module: nn.Conv2d):
        super().__init__(layer, bias)
        pads = layer.conv["pads"]  # F.pad order (w_left, w_right, h_top, h_bottom)
        if pads[0] != pads[1] or pads[2] != pads[3]:
            raise UnsupportedModelError(f"layer {layer.name!r}: asymmetric padding")
        self.stride, self.dilation = list(module.stride), list(module.dilation)
        self.padding, self.groups = [pads[2], pads[0]], module.groups
        packed = torch.ops.onednn.qconv_prepack(layer.weight.to(torch.int8), self.weight_scale, float(self.grid.scale),
                                                self.grid.zero_point, self.stride, self.padding, self.dilation,
                                                self.groups, None)
        self.register_buffer("packed", packed)
        self.check_exact(layer, (2, module.in_channels, 9, 9))

    def kernel(self, codes: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        return torch.ops.onednn.qconv2d_pointwise(codes, float(self.grid.scale), self.grid.zero_point, self.packed,
                                                  self.weight_scale, self.weight_zero_point,
                                                  self.bias if with_bias else None, self.stride, self.padding,
                                                  self.dilation, self.groups, 1.0, 0, torch.float32, "none", [], None)


DYNAMIC_KERNELS = ("int_mm", "onednn")


def _faster_kernel(codes: torch.Tensor, rows: int = 16) -> str:
    """The faster int8 GEMM for this weight on this CPU, by a quick interleaved measurement at `rows`
    input rows. Measured here (one thread): `torch._int_mm` wins on small weights (6-9x at 64x64,
    1.2-1.6x at 384x1536: less overhead per call), oneDNN's prepacked qlinear on large ones (2x at
    2048x2048, 4x at 4096x4096 for one row). Both accumulate exactly in int32, so the choice changes
    the speed, never the outputs."""
    from .kernel_select import interleaved_ms

    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (rows, codes.shape[1]), dtype=torch.int8, generator=gen)
    weight_t, packed = codes.t().contiguous(), torch.ops.onednn.qlinear_prepack(codes, None)
    ones, zeros, a_u8 = torch.ones(codes.shape[0]), torch.zeros(codes.shape[0], dtype=torch.int64), a.view(torch.uint8)
    int_mm_ms, onednn_ms = interleaved_ms(
        lambda: torch._int_mm(a, weight_t),
        lambda: torch.ops.onednn.qlinear_pointwise(a_u8, 1.0, 0, packed, ones, zeros, None, 1.0, 0, torch.float32,
                                                   "none", [], ""), rounds=3)
    return "int_mm" if int_mm_ms <= onednn_ms else "onednn"


class Int8DynamicLinear(nn.Module):
    """A Linear whose input is quantized at run time (DynamicQuantizer, up to 8 bits, per tensor or per
    token), on torch's int8 x int8 -> int32 GEMM (`torch._int_mm`). The codes are the quantizer's
    own, q = clamp(round(x / S) + Z) with (S, Z) from each input's range, moved into int8 by a
    constant shift c (q - c in [-128, 127]); so per row

        y = S_x S_W (acc + (c - Z_x) sum_k q_W) + b,   acc = sum_k (q - c) q_W  (int32, exact)

    which is the fake-quantized layer's function (per-token scales apply after the int32 dot product
    because the reduction runs over the row; the zero-point term is one rank-1 update). The range, scale and zero point are computed with the
    simulation's own operations (`qparams_of_finite_range`), after one finiteness check of the
    range instead of two of the whole tensor. Checked against the layer at construction."""

    int8_kernel = True  # inference only (see api.save_model)

    def __init__(self, module: nn.Module, name: str, kernel: str = "auto"):
        super().__init__()
        codes, scale = _weight_codes(module, name)
        quantizer = input_quantizer(module)
        q_min, q_max = quantizer.spec.q_range
        if q_max - q_min > 255 or quantizer.per not in ("tensor", "token") or int(codes.abs().max()) > 127:
            raise UnsupportedModelError(f"layer {name!r}: int8 kernels need dynamic inputs of at most 8 bits per "
                                        f"tensor or per token and int8 weights (got {quantizer.extra_repr()})")
        if kernel not in ("auto", *DYNAMIC_KERNELS):
            raise UserError(f"kernel={kernel!r} must be 'auto' or one of {list(DYNAMIC_KERNELS)}")
        self.quantizer, self.name = quantizer, name
        # the C kernel (_int8_rows.c) quantizes and rescales in one call each; symmetric grids keep the torch path
        self.use_native = int8_rows.available() and not quantizer.spec.symmetric
        codes8 = codes.to(torch.int8)
        self.kernel = kernel if kernel != "auto" else _faster_kernel(codes8)
        self.per_token, self.q_range = quantizer.per == "token", (q_min, q_max)
        self.code_dtype = torch.int8 if self.kernel == "int_mm" else torch.uint8  # the GEMM's input type
        if self.kernel == "int_mm":
            self.shift = 0 if -128 <= q_min and q_max <= 127 else q_min + 128  # q - shift fits in int8
            self.register_buffer("weight_t", codes8.t().contiguous())
        else:
            self.shift = q_min  # q - q_min in [0, 255]: oneDNN's uint8 x int8 GEMM
            self.register_buffer("packed", torch.ops.onednn.qlinear_prepack(codes8, None))
            self.register_buffer("weight_zero_point", torch.zeros(codes.shape[0], dtype=torch.int64))
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("colsum_scaled", codes.sum(1).float() * scale.float())  # S_W sum_k q_W per output
        bias = getattr(module, "bias", None)
        self.register_buffer("bias_or_zero", torch.zeros(codes.shape[0], dtype=torch.float32) if bias is None
                             else bias.detach().float().clone())
        # [S_W colsum; b] (2 x out): the per-token zero-point term and the bias as one rank-2 update
        self.register_buffer("colsum_and_bias", torch.stack([self.colsum_scaled, self.bias_or_zero]))
        self._check(module, name)

    def _check(self, module: nn.Module, name: str) -> None:
        """Same outputs as the fake-quantized layer on inputs with outliers (full-range codes)."""
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(8, module.in_features, generator=gen, dtype=torch.float32)
        x[:, 0] *= 40
        with torch.no_grad():
            ref, got = module(x), self(x)
        error = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        if not error <= TOLERANCE:  # NaN fails too
            raise UnsupportedModelError(f"layer {name!r}: torch's int8 GEMM is not exact on this CPU "
                                        f"(relative error {error:.1e}); use the float model")

    def _qparams(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The DynamicQuantizer's (S, Z) for `rows`: per row (token) or one pair (tensor)."""
        if self.quantizer.per == "token":  # amin + amax: torch.aminmax along a dim is ~20x slower on this CPU
            r_min, r_max = rows.amin(1, keepdim=True), rows.amax(1, keepdim=True)
        else:
            r_min, r_max = torch.aminmax(rows)
        if not bool(torch.isfinite(torch.maximum(r_max, -r_min)).all()):  # NaN propagates through maximum
            raise UserError(f"layer {self.name!r}: its input contains non-finite values; quantization needs finite "
                            "inputs")
        return qparams_of_finite_range(r_min, r_max, self.quantizer.spec)

    def _scaled_accumulate(self, shifted: torch.Tensor) -> torch.Tensor:
        """S_W sum_k (q - c) q_W as float32, on the chosen kernel (int32 accumulation either way;
        oneDNN applies the per-channel S_W in its epilogue)."""
        if self.kernel == "int_mm":
            return torch._int_mm(shifted.to(torch.int8), self.weight_t).float().mul_(self.weight_scale)
        return torch.ops.onednn.qlinear_pointwise(shifted.to(torch.uint8), 1.0, 0, self.packed, self.weight_scale,
                                                  self.weight_zero_point, None, 1.0, 0, torch.float32, "none", [], "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantizer.smooth is not None:
            x = x / self.quantizer.smooth
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] == 0:  # no tokens: no range to quantize with
            y = rows.new_zeros((0, len(self.weight_scale)))
        elif self._native_fits(rows):
            y = self._native_forward(rows.contiguous())
        else:
            y = self._torch_forward(rows)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _native_fits(self, rows: torch.Tensor) -> bool:
        """The C kernel reads float32 CPU memory: the input and this layer's vectors (a `.half()` /
        `.double()` / `.cuda()` model, or vectors replaced by assignment, take the torch path).
        Checked on every call: buffers can change without `_apply` (load_state_dict(assign=True))."""
        if not (self.use_native and rows.dtype == torch.float32 and rows.device.type == "cpu"):
            return False
        return all(v.dtype == torch.float32 and v.device.type == "cpu" and v.is_contiguous()
                   for v in (self.weight_scale, self.colsum_scaled, self.bias_or_zero))

    def _native_forward(self, rows: torch.Tensor) -> torch.Tensor:
        """The same function with the range, the quantization and the epilogue in one C call each
        (int8_rows) around the int8 GEMM."""
        found = int8_rows.quantize_rows(rows, self.per_token, self.q_range, self.shift, self.code_dtype)
        if isinstance(found, int):
            where = f" (token {found})" if self.per_token else ""
            raise UserError(f"layer {self.name!r}: its input contains non-finite values{where}; quantization needs "
                            "finite inputs")
        codes, row_scale, row_term = found
        if self.kernel == "int_mm":
            return int8_rows.dequantize_rows(torch._int_mm(codes, self.weight_t), row_scale, row_term,
                                             self.weight_scale, self.colsum_scaled, self.bias_or_zero)
        scaled = torch.ops.onednn.qlinear_pointwise(codes, 1.0, 0, self.packed, self.weight_scale,
                                                    self.weight_zero_point, None, 1.0, 0, torch.float32, "none", [],
                                                    "")
        return int8_rows.rescale_rows_(scaled.contiguous(), row_scale, row_term, self.colsum_scaled, self.bias_or_zero)

    def _torch_forward(self, rows: torch.Tensor) -> torch.Tensor:
        scale, zero_point = self._qparams(rows)
        q_min, q_max = self.quantizer.spec.q_range
        # q - c = clamp(round(x / S) + Z - c, q_min - c, q_max - c): the shift folded into Z and the bounds
        shifted = rows.div(scale).round_().add_(zero_point - self.shift).clamp_(q_min - self.shift, q_max - self.shift)
        y = self._scaled_accumulate(shifted).mul_(scale)  # S_x S_W acc
        if scale.dim() == 0:  # per tensor: + S_x (c - Z) S_W colsum + b, one row vector
            return y.add_(scale * (self.shift - zero_point) * self.colsum_scaled + self.bias_or_zero)
        # per token: + [S_x (c - Z), 1] @ [S_W colsum; b], one rank-2 update in one pass
        left = torch.cat([scale * (self.shift - zero_point), torch.ones_like(scale)], dim=1)
        return y.addmm_(left, self.colsum_and_bias)


class FusedDynamicLinear(nn.Module):
    """A per-tensor dynamic int8 Linear on fbgemm's fused kernel (`quantized::linear_dynamic`, what
    torch's own `quantize_dynamic` runs): min / max, quantization, the int8 GEMM and the float
    output in one C++ call, with our int8 codes and per-channel weight scales prepacked.

    The input codes are fbgemm's, not the simulation's: the same affine 8-bit grid over [min(x, 0),
    max(x, 0)], but fbgemm picks the zero point from min or max and multiplies by 1/S where the
    simulation divides by S, so an input code can move by one step (4% of random 16x384 inputs move
    at least one). Each output thus stays within one input step of the fake-quantized layer,
    |dy_c| <= S_x sum_k |w_ck|. At construction the kernel is checked exactly against a float64 model
    of fbgemm's own quantization (its qparams and codes, then S_x S_W (acc - Z_x colsum) + b) on
    full-range inputs: a CPU whose kernel saturates in int16 (no VNNI) is refused, not approximated.
    `to_int8_(model, exact=False)` uses it for the speed; `exact=True` keeps `Int8DynamicLinear`."""

    int8_kernel = True  # inference only: save the converted model, not this one (see api.save_model)

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        codes, scale = _weight_codes(module, name)
        quantizer = input_quantizer(module)
        q_min, q_max = quantizer.spec.q_range
        if q_max - q_min != 255 or quantizer.spec.symmetric or quantizer.per != "tensor" \
                or quantizer.smooth is not None or int(codes.abs().max()) > 127:
            raise UnsupportedModelError(f"layer {name!r}: the fused dynamic kernel needs affine 8-bit dynamic inputs "
                                        f"per tensor without smoothing and int8 weights (got {quantizer.extra_repr()})")
        with warnings.catch_warnings():  # torch marks quantized tensors deprecated; fbgemm still packs from them
            warnings.simplefilter("ignore")
            weight = torch._make_per_channel_quantized_tensor(codes.to(torch.int8), scale.double(),
                                                              torch.zeros(len(scale), dtype=torch.int64), 0)
        bias = getattr(module, "bias", None)
        self.packed = torch.ops.quantized.linear_prepack(weight, None if bias is None else bias.detach().float())
        self.in_features = codes.shape[1]
        self._check(codes, scale, None if bias is None else bias.detach().double(), name)

    def _check(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, name: str) -> None:
        gen = torch.Generator().manual_seed(0)
        outlier = torch.randn(8, codes.shape[1], generator=gen)
        outlier[:, 0] *= 40
        for x in (outlier, torch.rand(8, codes.shape[1], generator=gen), torch.ones(2, codes.shape[1])):
            s_x, z_x = torch._choose_qparams_per_tensor(x, False)
            q_x = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8).int_repr().long()
            exact = s_x * scale * ((q_x - z_x) @ codes.T).double() + (0 if bias is None else bias)
            error = float((self(x).double() - exact).abs().max() / exact.abs().max().clamp_min(1e-30))
            if not error <= TOLERANCE:
                raise UnsupportedModelError(f"layer {name!r}: fbgemm's fused dynamic kernel is not exact on this CPU "
                                            f"(relative error {error:.1e}, int16 saturation without VNNI?); use "
                                            "exact=True")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        out = torch.ops.quantized.linear_dynamic(rows, self.packed, False)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def int8_layer(module: nn.Module, name: str = "", exact: bool = True) -> nn.Module:
    """The int8 replacement of one converted Linear / Conv2d: static inputs (Linear, Conv2d) or dynamic
    inputs per tensor / per token (Linear); `exact=False` lets per-tensor dynamic Linears use fbgemm's
    fused kernel (within one input step, see FusedDynamicLinear)."""
    kind = type_before_parametrizations(module)
    quantizer = input_quantizer(module)
    if isinstance(quantizer, DynamicQuantizer):
        if not issubclass(kind, nn.Linear):
            raise UnsupportedModelError(f"layer {name!r} ({kind.__name__}): dynamic int8 inputs run on Linear only")
        if not exact and quantizer.per == "tensor" and quantizer.smooth is None:
            return FusedDynamicLinear(module, name)
        return Int8DynamicLinear(module, name)
    layer = IntegerLayer.from_module(module, name)
    bias = module.bias if getattr(module, "bias", None) is not None else None
    if issubclass(kind, nn.Linear):
        return Int8Linear(layer, bias)
    if issubclass(kind, nn.Conv2d):
        return Int8Conv2d(layer, bias, module)
    raise UnsupportedModelError(f"layer {name!r} ({kind.__name__}): only Linear and Conv2d have int8 kernels here")


@torch.no_grad()
def to_int8_(model: nn.Module, exact: bool = True) -> nn.Module:
    """Replace every converted, quantized Linear / Conv2d of `model` by its int8 layer
    (in place, eval mode; the model keeps working as an nn.Module); returns `model`.

    exact=True: every layer computes the fake-quantized layer's function up to float32 rounding.
    exact=False: per-tensor dynamic Linears (transformers) run fbgemm's fused kernel, as fast as
    torch's quantize_dynamic, each output within one input quantization step of the simulation.

    Raises UnsupportedModelError naming the layer when one cannot run in int8 (not W8A8 with static
    inputs or dynamic ones per tensor / per token, or a CPU whose int8 kernel is not exact)."""
    model.eval()
    targets = {name: module for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, nn.Conv2d)) and hasattr(module, "input_quantizer")}
    replacements = {name: int8_layer(module, name, exact) for name, module in targets.items()}  # all checked first
    for name, replacement in replacements.items():
        model.set_submodule(name, replacement)
    return model
