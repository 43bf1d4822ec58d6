"""Compressed models in ONNX Runtime: accuracy equals ours (issue 10 acceptance).

Usage: python benchmarks/export_accuracy.py [--seed 0] [--threads 2]

Each compressed model is made by the same flow as the CLI (`nncompress deep-compress`,
`nncompress prune` + W8A8 static quantization), exported with `export_onnx` and run in ONNX Runtime
on the 2,000 mnist-10k test images; PyTorch and ONNX Runtime see the same images.
- Deep Compression (`.nnc`): the file is decoded and exported as it is (`--quantize none`): the
  shared values are written exactly (as float32, or as int8 codes when every shared value of a layer
  sits on one int8 grid).
- Pruned + int8: magnitude pruning with the recommended schedule, then W8A8 (per-channel int8 weights,
  static uint8 activations calibrated on 512 training images), converted and exported as QDQ; the
  pruned zeros stay zeros in the int8 initializers.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.encode.container import read_nnc
from nncompress.encode.model import decode_model
from nncompress.export.bench import compare_on_data, quantize_for_export
from nncompress.export.graph import ort_session
from nncompress.export.onnx import export_onnx
from nncompress.flows.deep_compression import DeepCompressionConfig, deep_compress
from nncompress.flows.prune import calibration_batches, prune_model
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.zoo import load_dataset

TMP = Path(tempfile.mkdtemp(prefix="nnc_export_acc_"))
COLUMNS = ["model", "compression", "file", "PyTorch acc %", "ORT acc %", "top-1 agreement", "max |diff| / max |out|",
           "ONNX weights"]


def check_row(label: str, how: str, net: torch.nn.Module, data, onnx_path: Path, threads: int, calib=None) -> list:
    """Export `net`, run both on the test split, and return one table row."""
    example = data.test_x[:1]
    result = export_onnx(net, example, onnx_path, calibration=calib)
    batches = [(x, y) for x, y in data.test_loader(500)]
    c = compare_on_data(net.eval(), ort_session(str(onnx_path), threads=threads), batches)
    weights = sorted({info["weight"].split(",")[0] for info in result.layers.values()})
    return [label, how, f"{onnx_path.stat().st_size:,} B ONNX", f"{100 * c['torch_accuracy']:.2f}",
            f"{100 * c['ort_accuracy']:.2f}", f"{100 * c['top1_agreement']:.2f}%", f"{c['max_rel_diff']:.1e}",
            "; ".join(weights)]


def deep_compressed(arch: str, data, seed: int, threads: int) -> list:
    nnc_path = TMP / f"{arch}.nnc"
    config = DeepCompressionConfig(prune=MagnitudePrune(sparsity=0.92, scope="global"))
    _, r = deep_compress(arch, data, config, seed=seed, out=nnc_path)
    net = decode_model(read_nnc(nnc_path))
    row = check_row(arch, f"Deep Compression (.nnc {nnc_path.stat().st_size:,} B, {r['compression']:.1f}x)", net, data,
                    TMP / f"{arch}_dc.onnx", threads)
    return row


def pruned_int8(arch: str, data, seed: int, threads: int) -> list:
    model, r = prune_model(arch, data, MagnitudePrune(sparsity=0.9, scope="global"), seed=seed)
    calib = [x for x, _ in calibration_batches(data)]
    net = quantize_for_export(model, "static", calib)
    return check_row(arch, f"pruned {100 * (1 - r['nonzero_weights'] / r['total_weights']):.0f}% + W8A8 static", net,
                     data, TMP / f"{arch}_p8.onnx", threads, calib=calib)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist-10k", str(MNIST_DIR))
    rows = []
    for arch in ("lenet300", "lenet5"):
        rows.append(deep_compressed(arch, data, args.seed, args.threads))
        rows.append(pruned_int8(arch, data, args.seed, args.threads))
        print(table(COLUMNS, rows[-2:]), flush=True)
    text = header("Compressed models in ONNX Runtime: same accuracy as in PyTorch")
    text += (f"\nSeed {args.seed}; torch and ONNX Runtime threads pinned to {args.threads}; load average "
             f"{os.getloadavg()[0]:.2f} at the end. 2,000 mnist-10k test images; both runtimes see the same batches. "
             "Compression flows as the CLI runs them (recommended pruning schedule per model; Deep Compression: "
             "92% global magnitude pruning, conv 8 / fc 5 bits, codebook fine-tuning).\n\n")
    text += table(COLUMNS, rows)
    write_results("export_accuracy", text)


if __name__ == "__main__":
    main()
