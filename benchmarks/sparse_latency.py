"""Dense vs torch-CSR latency for pruned Linear layers (y = x W^T), interleaved in one process.

Usage: python benchmarks/sparse_latency.py [--threads 2]
Rows: a 4096x4096 layer at 90/95/99% sparsity, and the layers of LeNet-300-100 pruned with the
settings of benchmarks/pruning.py, at batch 1 and 64. Speed-up = dense time / sparse time.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from common import MNIST_DIR, header, interleaved_ratio, table, write_results
from nncompress.api import count_nonzero_weights  # noqa: F401
from nncompress.runtime.sparse import SparseLinear


def random_pruned_linear(n: int, sparsity: float) -> nn.Linear:
    layer = nn.Linear(n, n)
    with torch.no_grad():
        keep = torch.rand(n, n) >= sparsity
        layer.weight.mul_(keep)
    return layer


def lenet300_layers() -> dict[str, nn.Linear]:
    from pruning import SETTINGS
    from nncompress.flows.prune import prune_model
    from nncompress.methods import method_from_dict
    from nncompress.zoo import load_dataset

    s = SETTINGS["lenet300"]
    model, _ = prune_model("lenet300", load_dataset("mnist-10k", MNIST_DIR), method_from_dict(s["method"]),
                           schedule=s["schedule"], rounds=s["rounds"], finetune_epochs=1, lr_factor=s["lr_factor"])
    return {f"LeNet-300 {name}": m for name, m in model.named_children() if isinstance(m, nn.Linear)}


def measure(name: str, layer: nn.Linear, batch: int) -> list[object]:
    sparse = SparseLinear.from_dense(layer)
    x = torch.randn(batch, layer.in_features)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), layer(x), rtol=1e-4, atol=1e-4)
        inner = 200 if layer.in_features < 1000 else (20 if batch == 1 else 5)
        r = interleaved_ratio(lambda: layer(x), lambda: sparse(x), rounds=15, inner=inner)
    density = float(torch.count_nonzero(layer.weight)) / layer.weight.numel()
    return [name, "x".join(map(str, layer.weight.shape)), f"{100 * (1 - density):.1f}%", batch,
            f"{r['base_ms']:.3f}", f"{r['cand_ms']:.3f}", f"**{r['speedup']:.2f}x**", f"{r['min']:.2f}-{r['max']:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    layers = {f"4096x4096 @ {int(s * 100)}%": random_pruned_linear(4096, s) for s in (0.9, 0.95, 0.99)}
    layers.update(lenet300_layers())
    torch.set_num_threads(args.threads)
    rows = [measure(name, layer, batch) for name, layer in layers.items() for batch in (1, 64)]
    text = header(f"Dense vs sparse (torch CSR) Linear latency, {args.threads} threads") + "\n"
    text += ("Median of 15 interleaved rounds; speed-up = dense / sparse, with the min-max of the per-round "
             "ratios. Outputs are checked equal (1e-4) before timing.\n\n")
    text += table(["layer", "shape", "sparsity", "batch", "dense ms", "CSR ms", "speed-up", "range"], rows)
    write_results(f"sparse_latency_{args.threads}t", text)


if __name__ == "__main__":
    main()
