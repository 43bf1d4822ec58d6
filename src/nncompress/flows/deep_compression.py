"""The `nncompress deep-compress` workflow (Han et al., ICLR 2016): prune -> retrain -> share weights
(k-means) -> fine-tune the codebooks -> Huffman-code into a .nnc file -> decode and measure.

Every figure is measured on the model decoded from the file written to disk, and the file size is
the real size (header, codebooks, biases and tables included).
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..analysis.metrics import count_params
from ..config import Context, Method
from ..encode.container import EncodedLayer, read_nnc, write_nnc
from ..encode.deep_compression import decode_model, encode_model, round_biases_fp16_, round_codebooks_fp16_
from ..quant.kmeans import KMeansQuant
from ..train import TrainConfig, evaluate, fit
from ..zoo import Dataset
from .prune import dense_model, prune_and_retrain


@dataclass(frozen=True, kw_only=True)
class DeepCompressionConfig:
    """The recipe: pruning (method + schedule), bits per layer kind, codebook fine-tuning."""

    prune: Method | None = None
    schedule: str = "iterative"
    rounds: int = 3
    finetune_epochs: int = 5
    lr_factor: float = 0.1
    bits: dict[str, int] = field(default_factory=lambda: {"conv": 8, "fc": 5})
    codebook_epochs: int = 3
    codebook_lr: float = 1e-3


def layer_row(layer: EncodedLayer) -> dict:
    """Han 2016 table 2 columns for one layer (bits per stored entry; rates vs 32-bit dense)."""
    numel = math.prod(layer.shape)
    k = len(layer.codebook)
    entries = layer.index.length
    kept = entries - layer.n_fillers
    weight_bits = math.ceil(math.log2(k + (1 if layer.n_fillers else 0)))
    codebook_bits = 32 * k
    return {"layer": layer.name, "weights": numel, "kept": kept / numel, "clusters": k,
            "weight_bits_pq": weight_bits, "weight_bits_pqh": layer.clusters.n_bits / max(entries, 1),
            "index_bits_pq": layer.index_bits, "index_bits_pqh": layer.index.n_bits / max(entries, 1),
            "fillers": layer.n_fillers,
            "rate_pq": (entries * (weight_bits + layer.index_bits) + codebook_bits) / (32 * numel),
            "rate_pqh": (layer.index.n_bits + layer.clusters.n_bits + codebook_bits) / (32 * numel)}


def fine_tune_codebooks(model: nn.Module, dataset: Dataset, config: DeepCompressionConfig, seed: int) -> None:
    """Train with the cluster indices fixed: autograd sums each cluster's gradients into its centroid."""
    if config.codebook_epochs:
        fit(model, dataset.train_loader(64, seed=seed + 2000),
            TrainConfig(epochs=config.codebook_epochs, lr=config.codebook_lr, weight_decay=0.0, seed=seed))


def share_and_encode(model: nn.Module, arch: str, dataset: Dataset, config: DeepCompressionConfig, *, seed: int = 0,
                     out: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Weight sharing + codebook fine-tuning + Huffman coding of an (already pruned) model, in place;
    returns (model decoded from the written file, figures)."""
    accuracy = lambda m: evaluate(m, dataset.test_loader())["accuracy"]  # noqa: E731
    KMeansQuant(layer_bits=dict(config.bits)).apply(model, Context())
    result: dict = {"bits": dict(config.bits), "clustered_accuracy": accuracy(model)}
    fine_tune_codebooks(model, dataset, config, seed)
    round_biases_fp16_(model)
    round_codebooks_fp16_(model)
    model.eval()
    result["simulated_accuracy"] = accuracy(model)
    meta = {"dataset": dataset.name, "bits": dict(config.bits), "seed": seed}
    nnc, stats = encode_model(model, {"arch": arch, "in_shape": list(dataset.in_shape),
                                      "num_classes": dataset.num_classes}, meta)
    path = Path(out) if out else Path(tempfile.mkdtemp()) / f"{arch}.nnc"
    result["file_bytes"] = write_nnc(path, nnc)
    decoded = decode_model(read_nnc(path))
    x = dataset.test_x[:256]
    with torch.no_grad():
        result["exact_roundtrip"] = bool(torch.equal(decoded(x), model(x)))
    result.update(compressed_accuracy=accuracy(decoded), file=str(path),
                  layers=[{**layer_row(layer), **stats[layer.name]} for layer in nnc.layers])
    return decoded, result


def deep_compress(spec: str, dataset: Dataset, config: DeepCompressionConfig, *, seed: int = 0,
                  out: str | os.PathLike | None = None) -> tuple[nn.Module, dict]:
    """Run the whole pipeline; returns (model decoded from the file, result dict)."""
    model, arch, base = dense_model(spec, dataset, seed)
    result: dict = {"model": arch, "dataset": dataset.name, "seed": seed,
                    "dense_accuracy": evaluate(model, dataset.test_loader())["accuracy"],
                    "dense_bytes": 4 * count_params(model)}
    if config.prune is not None:
        prune_and_retrain(model, config.prune, dataset, base, schedule=config.schedule, rounds=config.rounds,
                          finetune_epochs=config.finetune_epochs, lr_factor=config.lr_factor)
        result["pruned_accuracy"] = evaluate(model, dataset.test_loader())["accuracy"]
    decoded, shared = share_and_encode(model, arch, dataset, config, seed=seed, out=out)
    result.update(shared, compression=result["dense_bytes"] / shared["file_bytes"])
    return decoded, result
