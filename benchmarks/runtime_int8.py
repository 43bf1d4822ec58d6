"""int8 execution inside PyTorch vs float32 eager (issue 10): which kernel to build `to_int8_` on.

Usage: python benchmarks/runtime_int8.py [--threads 2 1] [--rounds 15]
Candidates for a 4096x4096 Linear (batch 1 and 64), every one float in -> float out, input
quantization included:
- oneDNN qlinear (`torch.ops.onednn.qlinear_pointwise`, what nncompress.runtime.int8_torch uses):
  static uint8 input grid, per-channel int8 weights, fp32 output;
- fbgemm static (`quantized::linear_with_input_q_dq_qweight_dq_output_fp32`, same grids);
- fbgemm dynamic (`quantized::linear_dynamic`, per-tensor activation range at run time, reduce_range);
- `torch._int_mm` (s8 x s8 -> s32) with the static grid (codes shifted by 128, corrected in the bias);
- `torch._int_mm` with dynamic per-token symmetric int8 activations.
Conv nets (LeNet-5 and ResNet-20 on 1x28x28, BatchNorm folded, random weights; batch 1 and 64):
`to_int8_` (oneDNN int8 conv / linear per layer) and torch.ao's FX x86 int8 model vs float32 eager.
Each row: candidate and float32 run in turns after warm-up (BENCHMARKING.md), each timing repeating
the call for at least 50 ms, median of the per-round speed-ups with min and max; 'error' is the largest |difference| to the exact integer
result (static) or to float32 (dynamic), relative to the largest |output|.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
import warnings

import torch
from torch import nn

from common import header, interleaved_ratio, table, write_results

MIN_SECONDS = 0.05  # each timing repeats a call until it spans this long (4 ms scheduler slices on a shared VM)


def compare(baseline, candidate, rounds: int) -> dict:
    """interleaved_ratio with enough calls per timing to span MIN_SECONDS."""
    start = time.perf_counter()
    baseline()
    inner = max(1, math.ceil(MIN_SECONDS / max(time.perf_counter() - start, 1e-6)))
    return interleaved_ratio(baseline, candidate, rounds=rounds, warmup=2, inner=inner)
import nncompress as nc
from nncompress.api import apply_
from nncompress.quant.convert import convert_
from nncompress.quant.fold import fold_batchnorm_
from nncompress.quant.ptq import LinearQuant
from nncompress.runtime.engine import IntegerEngine
from nncompress.runtime.int8_torch import to_int8_
from nncompress.runtime.layers import IntegerLayer
from nncompress.zoo import build_model

W8A8 = LinearQuant(weight_bits=8, act_bits=8, granularity="channel")


def converted(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    quant = copy.deepcopy(model).eval()
    fold_batchnorm_(quant)
    return convert_(apply_(quant, W8A8, data=[calib]))


def linear_candidates(layer: IntegerLayer, bias: torch.Tensor) -> dict:
    """name -> (float x -> float y) for each int8 kernel, all built from the same int8 codes."""
    grid, scale, zp = layer.grid, float(layer.grid.scale), layer.grid.zero_point
    weight_q = torch._make_per_channel_quantized_tensor(layer.weight.to(torch.int8), layer.weight_scale,
                                                        torch.zeros(layer.weight.shape[0], dtype=torch.int64), 0)
    torch.backends.quantized.engine = "fbgemm"
    fbgemm = torch.ops.quantized.linear_prepack(weight_q, bias)
    weight_t = layer.weight.to(torch.int8).t().contiguous()
    col_sums = layer.weight.sum(1)
    out_scale = (layer.weight_scale * float(grid.scale)).float()
    w_scale = layer.weight_scale.float()

    def int_mm_static(x):
        codes = torch.clamp(torch.round(x / grid.scale) + zp, 0, 255)
        acc = torch._int_mm((codes - 128).to(torch.int8), weight_t) + (128 - zp) * col_sums
        return acc * out_scale + bias

    def int_mm_dynamic(x):
        row_scale = x.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
        acc = torch._int_mm(torch.round(x / row_scale).to(torch.int8), weight_t)
        return acc * (row_scale * w_scale) + bias

    return {"fbgemm static (q-dq, fp32 out)":
            lambda x: torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(x, scale, zp, fbgemm),
            "fbgemm dynamic per-tensor": lambda x: torch.ops.quantized.linear_dynamic(x, fbgemm, True),
            "torch._int_mm static": int_mm_static, "torch._int_mm dynamic per-token": int_mm_dynamic}


def linear_rows(batch_sizes: list[int], rounds: int) -> list[list[object]]:
    torch.manual_seed(0)
    float_model = nn.Sequential(nn.Linear(4096, 4096)).eval()
    quant = converted(float_model, torch.randn(256, 4096))
    layer = IntegerLayer.from_module(quant[0], "0")
    bias = quant[0].bias.detach().clone()
    fast = to_int8_(copy.deepcopy(quant))
    dynamic = {per: nc.convert_(nc.quantize_(copy.deepcopy(float_model), nc.DynamicQuant(per_token=per == "token")))
               for per in ("token", "tensor")}
    candidates = {"oneDNN qlinear (to_int8_)": fast, **linear_candidates(layer, bias),
                  **{f"to_int8_ dynamic per {per} (oneDNN)": to_int8_(copy.deepcopy(q)) for per, q in dynamic.items()}}
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, 4096)
        codes = layer.grid.quantize(x)
        exact = layer.acc_info().dequantize(layer.accumulate(codes), torch.float64).float()
        with torch.no_grad():
            reference = float_model(x)
            for name, fn in candidates.items():
                stats = compare(lambda: float_model(x), lambda: fn(x), rounds)
                per = name.split("per ")[-1].split(" ")[0]
                target = (dynamic[per](x) if name.startswith("to_int8_ dynamic") else
                          reference if "dynamic" in name else exact)  # ours: against its own simulation
                error = float((fn(x) - target).abs().max() / target.abs().max())
                rows.append(["Linear 4096x4096", batch, name, stats["base_ms"], stats["cand_ms"],
                             f"{stats['speedup']:.2f}x [{stats['min']:.2f}, {stats['max']:.2f}]", f"{error:.1e}"])
                print(rows[-1], flush=True)
    return rows


def torch_ao(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib[:1],))
    with torch.no_grad():
        prepared(calib)
    return convert_fx(prepared)


def convnet_rows(batch_sizes: list[int], rounds: int) -> list[list[object]]:
    rows = []
    for arch in ("lenet5", "resnet20"):
        torch.manual_seed(0)
        float_model = build_model(arch, (1, 28, 28), 10).eval()
        fold_batchnorm_(float_model)
        calib = torch.randn(64, 1, 28, 28)
        quant = converted(float_model, calib)
        candidates = {"to_int8_ (oneDNN int8 per layer)": to_int8_(copy.deepcopy(quant)),
                      "torch.ao FX x86 int8": torch_ao(float_model, calib),
                      "IntegerEngine (int64 reference)": IntegerEngine.from_model(quant, calib[:1])}
        for batch in batch_sizes:
            x = torch.randn(batch, 1, 28, 28)
            with torch.no_grad():
                reference = quant(x)
                for name, fn in candidates.items():
                    n_rounds = 5 if "reference" in name else rounds
                    stats = compare(lambda: float_model(x), lambda: fn(x), n_rounds)
                    error = float((fn(x) - reference).abs().max() / reference.abs().max())
                    rows.append([arch, batch, name, stats["base_ms"], stats["cand_ms"],
                                 f"{stats['speedup']:.2f}x [{stats['min']:.2f}, {stats['max']:.2f}]", f"{error:.1e}"])
                    print(rows[-1], flush=True)
    return rows


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return ", ".join(f for f in wanted if f in flags) or "none of avx2 / avx512 / vnni"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[2, 1])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch.ao deprecation warnings on every call
    sections = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = linear_rows([1, 64], args.rounds) + convnet_rows([1, 64], args.rounds)
        columns = ["model", "batch", "candidate", "float32 ms", "candidate ms", "speed-up (median [min, max])", "error"]
        sections.append(f"\n## {threads} thread(s)\n\n" + table(columns, rows))
    torch.set_num_threads(args.threads[0])
    text = header("int8 execution inside PyTorch vs float32 eager") + "\n"
    text += (f"CPU flags: {cpu_flags()}. float32 baselines: the unquantized (BatchNorm-folded) model in eager mode. "
             "'error' relative to the largest |output|: against the exact integer result for static candidates "
             "(float32 rounding only when it is ~1e-7), against the converted model's output for the conv nets "
             "(float rounding can move a code by 1 LSB: ~1e-3), against float32 for dynamic quantization.\n")
    write_results("runtime_int8", text + "".join(sections))


if __name__ == "__main__":
    main()
