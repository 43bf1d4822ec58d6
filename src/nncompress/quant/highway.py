"""Precision highway: low-bit computation, high-precision skip connections (Park et al., "Precision
Highway for Ultra Low-Precision Quantization", arXiv:1812.09818; lecture "Mixed Precision Network
based on Precision Highway" in seeds 000: "3-bit matrix computation + 8-bit skip connections gives
the same accuracy as full precision").

In a residual block y = relu(F(x) + shortcut(x)) the quantization error of each block's convolutions
adds onto the residual stream; if the stream itself (the skip) is carried in the same low precision
the errors accumulate from block to block. The highway keeps the skip path at 8 bits while the
convolutions run at k bits. A fake-quantized model by default carries its skips in float (only layer
*inputs* are quantized), which is the "full" highway; `quantize_skips_` makes the skip precision
explicit: every `shortcut` (or `downsample`) submodule gets an LSQ input quantizer of `bits` bits (an
identity shortcut) or, for a projection shortcut (1x1 conv), the QAT method keeps that conv at `bits`
through `highway_layer_bits`. `bits` = 8 is the precision highway; `bits` = k (the convolutions'
bit-width) is the low-precision skip it is compared with.

The integer engine does not run a quantizer on an identity module; it carries every skip connection
wide (int32, `runtime/plan.py: Planner.feeds_add`), i.e. it runs the full highway the fake-quantized
model trains with. A model with k-bit skips is measured in fake quantization.
"""
from __future__ import annotations

from torch import nn

from ..validate import UserError, check_int_range
from .activation import attach_input_quantizer
from .lsq import LSQActQuantizer, initial_step, lsq_levels
from .qat import input_statistics

SKIP_NAMES = ("shortcut", "downsample")


def skip_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The skip paths of residual blocks: submodules named `shortcut` / `downsample`, by qualified name."""
    return {n: m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in SKIP_NAMES}


def highway_layer_bits(model: nn.Module, bits: int) -> dict[str, int]:
    """`layer_bits` entries keeping projection shortcuts (Conv / Linear inside a skip path) at `bits`."""
    out = {}
    for name, skip in skip_modules(model).items():
        for sub, module in skip.named_modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                out[f"{name}.{sub}" if sub else name] = bits
    return out


def quantize_skips_(model: nn.Module, bits: int, data) -> list[str]:
    """Quantize every identity skip path's values to `bits` bits (learned LSQ step, initialised on
    `data`); returns the skip names. Projection shortcuts are left to the QAT method's layer_bits."""
    check_int_range("skip bits", bits, 2, 16)
    identities = {n: m for n, m in skip_modules(model).items() if isinstance(m, nn.Identity)}
    if not skip_modules(model):
        raise UserError("the model has no residual skip path (no submodule named 'shortcut' or 'downsample')")
    stats = input_statistics(model, list(identities), data) if identities else {}
    for name, module in identities.items():
        signed = bool(stats[name]["min"] < 0)
        _, q_p = lsq_levels(bits, signed)
        attach_input_quantizer(module, LSQActQuantizer(bits, signed, initial_step(stats[name]["mean_abs"], q_p),
                                                       stats[name]["features"]), layer_name=name)
    return list(identities)


def skip_bits_report(model: nn.Module) -> dict[str, int | None]:
    """Bits of each skip path: its identity's quantizer, or its projection conv's input quantizer."""
    report = {}
    for name, skip in skip_modules(model).items():
        quantizer = next((getattr(m, "input_quantizer", None) for m in skip.modules()
                          if getattr(m, "input_quantizer", None) is not None), None)
        report[name] = quantizer.spec.bits if quantizer is not None else None
    return report

