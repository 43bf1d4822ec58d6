"""Deep Compression on mnist-10k (Han et al., ICLR 2016, table 1 and the per-layer table 2).

Usage: python benchmarks/deep_compression.py [--seeds 3] [--val]
Runs the stages of recipes/deep-compression-{lenet300,lenet5}.yaml. Per seed: train the dense model,
prune it (the settings of benchmarks/pruning.py), then for each
bit configuration share weights, fine-tune the codebooks, Huffman-code into a .nnc file, decode the
file and evaluate the decoded model. Compression = fp32 parameter bytes / .nnc file bytes (the
real format 3.0 file: header, Huffman tables, codebooks and float16 biases included); the per-layer
bytes (each layer's sections + its share of the header) plus the header + biases row add up to the
file size. Also times k-means on 10M weights against scikit-learn.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import MNIST_DIR, header, median_min_max, table, write_results
from nncompress.quant.kmeans import kmeans_1d
from nncompress.recipes import Recipe, load_recipe
from nncompress.recipes.runner import execute, prepare
from nncompress.recipes.schema import edited, stage_index
from nncompress.zoo import load_dataset

#: (label, bits). The first is the paper's setting; the rest go further (chosen on --val).
BITS = [("conv 8 / fc 5 (paper)", {"conv": 8, "fc": 5}), ("conv 8 / fc 4", {"conv": 8, "fc": 4}),
        ("conv 4 / fc 2", {"conv": 4, "fc": 2}), ("conv 5 / fc 3", {"conv": 5, "fc": 3})]


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
DC_RECIPES = {"lenet300": "deep-compression-lenet300.yaml", "lenet5": "deep-compression-lenet5.yaml"}
KIND_PATTERNS = {"conv": "type:Conv1d|Conv2d|Conv3d", "fc": "type:Linear"}


def bits_variant(base: Recipe, quantize: int, bits: dict[str, int]) -> Recipe:
    """The recipe with the quantize stage's layer_bits set from {"conv": c, "fc": f} (only the kinds
    the shipped recipe names: LeNet-300-100 has no conv layer)."""
    shipped = base.stages[quantize].method_fields()["layer_bits"]
    layer_bits = {pattern: bits[kind] for kind, pattern in KIND_PATTERNS.items() if pattern in shipped}
    return edited(base, {("stages", quantize, "quantize", "layer_bits"): layer_bits})


def run_seed(arch: str, data, seed: int) -> list[dict]:
    """The shipped recipe's stages: train and prune once, then quantize -> encode -> evaluate for each
    bit configuration on a copy of the pruned run (recipes.runner.execute: the stages `nncompress run`
    runs, so recipes/deep-compression-*.yaml give the seed-0 rows)."""
    base = load_recipe(RECIPES / DC_RECIPES[arch])
    quantize = stage_index(base, "quantize")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        run = prepare(base, data, folder, seed)
        for index in range(quantize):
            execute(base, run, index)
        dense_acc, pruned_acc = run.dense_accuracy, run.accuracy()
        for i, (label, bits) in enumerate(BITS):
            variant = bits_variant(base, quantize, bits)
            branch = dataclasses.replace(run, model=copy.deepcopy(run.model), methods=list(run.methods),
                                         phases=list(run.phases), out=Path(folder) / f"bits{i}")
            stages = [execute(variant, branch, index) for index in range(quantize, len(variant.stages))]
            encoded = next(s for s in stages if s["stage"] == "encode")
            r = {**encoded, "label": label, "seed": seed, "dense_accuracy": dense_acc, "pruned_accuracy": pruned_acc,
                 "compressed_accuracy": encoded["test_accuracy"]}
            assert r["exact_roundtrip"], "decoded model differs from the simulated one"
            assert sum(row["bytes"] for row in r["layers"]) + r["overhead"]["bytes"] == r["file_bytes"]
            print(f"{arch} seed {seed} {label}: dense {dense_acc:.4f} pruned {pruned_acc:.4f} "
                  f"decoded {r['compressed_accuracy']:.4f} {r['file_bytes']} B {r['compression']:.1f}x", flush=True)
            results.append(r)
    return results


def summary_rows(arch: str, runs: list[list[dict]]) -> list[list[object]]:
    rows = []
    for i, (label, _) in enumerate(BITS):
        per_seed = [seed_runs[i] for seed_runs in runs]
        gaps = [100 * (r["compressed_accuracy"] - r["dense_accuracy"]) for r in per_seed]
        rows.append([arch, label, f"{100 * statistics.mean(r['dense_accuracy'] for r in per_seed):.2f}",
                     f"{100 * statistics.mean(r['compressed_accuracy'] for r in per_seed):.2f}",
                     f"**{statistics.mean(gaps):+.2f}**", f"{min(gaps):+.2f}",
                     f"{statistics.mean(r['file_bytes'] for r in per_seed):,.0f}",
                     f"**{statistics.mean(r['compression'] for r in per_seed):.1f}x**"])
    return rows


def layer_rows(arch: str, result: dict) -> list[list[object]]:
    rows = [[arch, r["layer"], f"{r['weights']:,}", f"{100 * r['kept']:.1f}%", f"{r['weight_bits_pq']:.3g}",
             f"{r['weight_bits_pqh']:.2f}", f"{r['cluster_entropy']:.2f}", r["index_bits_pq"],
             f"{r['index_bits_pqh']:.2f}", f"{r['index_entropy']:.2f}", f"{100 * r['rate_pq']:.2f}%",
             f"{100 * r['rate_pqh']:.2f}%", f"{r['bytes']:,}"] for r in result["layers"]]
    other = result["overhead"]
    rows.append([arch, f"{other['layer']} ({other['tensors']})"] + [""] * 10 + [f"{other['bytes']:,}"])
    rows.append([arch, "**file**"] + [""] * 10 + [f"**{result['file_bytes']:,}**"])
    return rows


def kmeans_speed() -> list[list[object]]:
    x = np.random.default_rng(0).normal(size=10_000_000).astype(np.float32)
    kmeans_1d(x, 32)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        kmeans_1d(x, 32)
        times.append(time.perf_counter() - start)
    med, lo, hi = median_min_max(times)
    rows = [["nncompress kmeans_1d (sort + prefix sums)", "10,000,000", 32, f"{med:.3f}", f"{lo:.3f}-{hi:.3f}"]]
    from sklearn.cluster import KMeans
    start = time.perf_counter()
    KMeans(32, init=np.linspace(x.min(), x.max(), 32).reshape(-1, 1), n_init=1, max_iter=100).fit(x.reshape(-1, 1))
    rows.append(["scikit-learn KMeans (same linear init, 1 run)", "10,000,000", 32, f"{time.perf_counter() - start:.3f}", "-"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--val", action="store_true", help="evaluate on the last 1,000 training images")
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    if args.val:
        data = data.with_validation(1000)
    summary, layers = [], []
    for arch in args.models:
        runs = [run_seed(arch, data, seed) for seed in range(args.seeds)]
        summary += summary_rows(arch, runs)
        layers += layer_rows(arch, runs[0][0])
    split = "validation (last 1,000 training images)" if args.val else "test (2,000 images)"
    text = header(f"Deep Compression on mnist-10k, {split}, mean over {args.seeds} seeds") + "\n"
    text += ("Pruning as in pruning.md; k-means with linear init; codebooks fine-tuned 3 epochs (SGD, lr 1e-3); "
             "accuracy of the model decoded from the .nnc file (bit-exact with the simulated model).\n\n")
    text += table(["model", "bits", "dense acc %", "decoded acc %", "mean gap (points)", "worst seed",
                   "file bytes", "compression"], summary)
    text += ("\n### Per layer (seed 0, paper bits), as in Han et al. 2016 table 2\n\nBits are per stored entry "
             "(fillers included); H = Huffman; entropy = Shannon bound of the same stream. Rate P+Q: the index and "
             "weight streams at fixed width plus the codebook as stored; rate P+Q+H and bytes: the layer's real "
             "share of the file (its sections + its share of the compressed header), so the bytes column adds up "
             "to the file.\n\n")
    text += table(["model", "layer", "weights", "kept (P)", "weight bits P+Q", "P+Q+H", "entropy", "index bits P+Q",
                   "P+Q+H", "entropy", "rate P+Q", "rate P+Q+H", "bytes"], layers)
    if not args.val:
        text += "\n### Clustering speed (median of 5, 2 threads)\n\n" + table(
            ["implementation", "weights", "clusters", "seconds", "range"], kmeans_speed())
    write_results("deep_compression_val" if args.val else "deep_compression", text)


if __name__ == "__main__":
    main()
