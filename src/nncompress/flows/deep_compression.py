"""The `nncompress deep-compress` workflow (Han et al., ICLR 2016): prune -> retrain -> share weights
(k-means) -> fine-tune the codebooks -> Huffman-code into a .nnc file -> decode and measure.

Every figure is measured on the model decoded from the file written to disk, and the per-layer
byte shares (each layer's sections plus its share of the compressed header) and the remaining
header + other tensors add up to the file size exactly.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..analysis.metrics import count_params
from ..api import apply_
from ..config import Method
from ..encode.codecs import MASK_CODINGS, relative_symbols
from ..encode.container import OVERHEAD, Coding, NncModel, StoredLayer, read_nnc, serialize, write_nnc
from ..encode.layout import HEADER_CODINGS
from ..encode.deep_compression import quantize_biases_, round_biases_fp16_, round_codebooks_fp16_
from ..encode.huffman import entropy_bits
from ..encode.model import decode_model, encode_model
from ..quant.kmeans import KMeansQuant
from ..train import TrainConfig, evaluate, fit
from ..validate import check_choice, check_int_range
from ..zoo import Dataset
from .prune import dense_model, prune_and_retrain

#: `DeepCompressionConfig.bits` keys that name a kind of layer, as layer patterns (`config.per_layer`).
LAYER_KINDS = {"conv": "type:Conv1d|Conv2d|Conv3d", "fc": "type:Linear"}


@dataclass(frozen=True, kw_only=True)
class DeepCompressionConfig:
    """The recipe: pruning (method + schedule), bits per layer kind ("conv", "fc") or layer pattern
    (a name, "re:<regex>", "type:<Class>"), codebook fine-tuning; `bias_bits`: biases stored as
    integer codes of that many bits (None: float16); `mask_coding`: "relative" (Deep Compression's
    relative indices, the paper's scheme) or "context" (also the context codec, where smaller:
    `encode/context_mask.py`, format 3.2); `header_coding`: "zlib" (3.0) or "compact" (3.3: the
    header compressed from the format's preset dictionary, `encode/header_dictionary.py`)."""

    prune: Method | None = None
    schedule: str = "iterative"
    rounds: int = 3
    finetune_epochs: int = 5
    lr_factor: float = 0.1
    bits: dict[str, int] = field(default_factory=lambda: {"conv": 8, "fc": 5})
    codebook_epochs: int = 3
    codebook_lr: float = 1e-3
    bias_bits: int | None = None
    mask_coding: str = "relative"
    header_coding: str = "zlib"

    def __post_init__(self) -> None:
        if self.bias_bits is not None:
            check_int_range("bias_bits", self.bias_bits, 2, 16)
        check_choice("mask_coding", self.mask_coding, MASK_CODINGS)
        check_choice("header_coding", self.header_coding, HEADER_CODINGS)

    @property
    def coding(self) -> Coding:
        return Coding(self.mask_coding, self.header_coding)


def layer_bits(bits: dict[str, int]) -> dict[str, int]:
    """{"conv": 8, "fc": 5, "fc3": 6} -> {"type:Conv1d|Conv2d|Conv3d": 8, "type:Linear": 5, "fc3": 6}."""
    return {LAYER_KINDS.get(key, key): value for key, value in bits.items()}


def _mask(layer: StoredLayer) -> tuple[torch.Tensor | None, dict]:
    """The chain's keep mask (its first bool tensor) and that tensor's storage entry."""
    for stage, storage in zip(layer.chain, layer.storage):
        for name, tensor in stage.tensors.items():
            if tensor.dtype == torch.bool:
                return tensor, storage.get(name, {})
    return None, {}


def _coded_bits(entry: dict) -> int:
    return entry["codec"].get("n_bits", 8 * entry.get("bytes", 0))


def _index_entropy(keep: torch.Tensor | None, relative: dict | None) -> float:
    """Shannon bound of the stored index stream: relative-index symbols, or the bitmap's bits."""
    if keep is None:
        return 0.0
    keep = keep.flatten().numpy()
    return entropy_bits(relative_symbols(keep, relative["index_bits"]) if relative else keep)


def layer_row(layer: StoredLayer) -> dict:
    """Han 2016 table 2 columns for one stored layer: bits per stored entry of the index stream
    (relative positions, fillers included; a mask stored as a bitmap has one entry per position)
    and of the weight stream (P+Q: fixed width; P+Q+H: as coded), and rates vs 32-bit dense
    weights. `bytes` is the layer's real share of the file (its sections + header share); rate
    P+Q+H = 8 bytes / (32 n). Rate P+Q counts the index and weight streams at fixed width plus the
    layer's other arrays (codebook, scales) as stored. Weight bits are per kept weight, also for a
    stage that stores one index per block of weights (MIRACLE: bits x blocks / weights). `stored_as`:
    the layer's chain of stored kinds (e.g. "mask + kmeans", "minimal_random_code")."""
    numel = math.prod(layer.shape)
    keep, keep_entry = _mask(layer)
    kept = int(keep.sum()) if keep is not None else numel
    relative = keep_entry["codec"] if keep_entry.get("codec", {}).get("name") == "relative" else None
    bitmap = keep_entry and not relative  # a dense mask is stored as one bit (or none) per position
    entries = relative["length"] if relative else numel if bitmap else kept
    final, final_storage = layer.chain[-1], layer.storage[-1]
    main = max((n for n in final.tensors if final_storage[n] is not keep_entry), key=lambda n: final.tensors[n].numel())
    main_entry = final_storage[main]
    values = final.tensors[main][keep] if "sparse" in main_entry else final.tensors[main].flatten()
    weight_bits = final.meta.get("bits") or main_entry["codec"].get("bits") or 8 * values.element_size()
    other_bytes = sum(e.get("bytes", 0) for s in layer.storage for n, e in s.items()
                      if e is not main_entry and e is not keep_entry)
    index_bits = relative["index_bits"] if relative else keep_entry["codec"].get("bits", 1) if bitmap else 0
    per_weight = len(values) / max(kept, 1)  # stored entries per kept weight: 1, or one index per block (MIRACLE)
    return {"layer": layer.name.removesuffix(".weight"), "stored_as": " + ".join(e.kind for e in layer.chain),
            "weights": numel, "kept": kept / numel,
            "weight_bits_pq": weight_bits * per_weight, "weight_bits_pqh": _coded_bits(main_entry) / max(kept, 1),
            "cluster_entropy": entropy_bits(values.numpy()),
            "index_bits_pq": index_bits, "index_bits_pqh": _coded_bits(keep_entry) / max(entries, 1) if keep_entry else 0.0,
            "index_entropy": _index_entropy(keep, relative),
            "fillers": entries - kept if relative else 0, "bytes": layer.nbytes,
            "rate_pq": (entries * index_bits + len(values) * weight_bits + 8 * other_bytes) / (32 * numel),
            "rate_pqh": 8 * layer.nbytes / (32 * numel)}


def overhead_row(nnc: NncModel) -> dict:
    """The bytes no layer row counts: preamble, the header's shared part, untransformed tensors."""
    return {"layer": "header + other tensors", "tensors": len(nnc.tensors),
            "bytes": nnc.sizes.get(OVERHEAD, 0) + sum(nnc.sizes.get(name, 0) for name in nnc.tensors)}


def fine_tune_codebooks(model: nn.Module, dataset: Dataset, config: DeepCompressionConfig, seed: int,
                        fit_kwargs: dict | None = None) -> None:
    """Train with the cluster indices fixed: autograd sums each cluster's gradients into its centroid.
    `fit_kwargs`: extra `train.fit` keywords (e.g. distillation's forward_fn / loss_fn)."""
    if config.codebook_epochs:
        fit(model, dataset.train_loader(64, seed=seed + 2000),
            TrainConfig(epochs=config.codebook_epochs, lr=config.codebook_lr, weight_decay=0.0, seed=seed),
            **(fit_kwargs or {}))


def _encoded(model: nn.Module, arch: str, dataset: Dataset, bits: dict[str, int], seed: int,
             bias_bits: int | None = None, coding: Coding = Coding()) -> NncModel:
    """The container of a shared (k-means) model: biases and codebooks rounded to float16 first,
    biases then quantized to `bias_bits` if given."""
    round_biases_fp16_(model)
    round_codebooks_fp16_(model)
    if bias_bits is not None:
        quantize_biases_(model, bias_bits)
    meta = {"dataset": dataset.name, "bits": dict(bits), "seed": seed, **({"bias_bits": bias_bits} if bias_bits else {})}
    return encode_model(model, {"arch": arch, "in_shape": list(dataset.in_shape), "num_classes": dataset.num_classes},
                        meta, coding)


def probe_file_bytes(model: nn.Module, arch: str, dataset: Dataset, bits: dict[str, int], seed: int = 0,
                     bias_bits: int | None = None, coding: Coding = Coding()) -> int:
    """Bytes of the file `share_and_encode` would write with `bits`, without its codebook fine-tuning
    (on a copy; seconds instead of epochs). The fine-tuning keeps the cluster indices and the masks,
    so the position and index streams code exactly the same; it moves the centroids, biases (and
    their codes with `bias_bits`) and BatchNorm, whose sections and the compressed header can change
    by a few bytes (tests/test_allocate.py measures it)."""
    probe = copy.deepcopy(model)
    apply_(probe, KMeansQuant(layer_bits=layer_bits(bits)))
    return len(serialize(_encoded(probe, arch, dataset, bits, seed, bias_bits, coding)))


def share_and_encode(model: nn.Module, arch: str, dataset: Dataset, config: DeepCompressionConfig, *, seed: int = 0,
                     out: str | os.PathLike | None = None, fit_kwargs: dict | None = None) -> tuple[nn.Module, dict]:
    """Weight sharing + codebook fine-tuning + Huffman coding of an (already pruned) model, in place;
    returns (model decoded from the written file, figures). `fit_kwargs` go to the codebook
    fine-tuning's `train.fit` (distillation)."""
    accuracy = lambda m: evaluate(m, dataset.test_loader())["accuracy"]  # noqa: E731
    apply_(model, KMeansQuant(layer_bits=layer_bits(config.bits)))
    result: dict = {"bits": dict(config.bits), "clustered_accuracy": accuracy(model)}
    fine_tune_codebooks(model, dataset, config, seed, fit_kwargs)
    model.eval()
    nnc = _encoded(model, arch, dataset, config.bits, seed, config.bias_bits, config.coding)
    result["simulated_accuracy"] = accuracy(model)
    path = Path(out) if out else Path(tempfile.mkdtemp()) / f"{arch}.nnc"
    result["file_bytes"] = write_nnc(path, nnc)
    stored = read_nnc(path)
    decoded = decode_model(stored)
    x = dataset.test_x[:256]
    with torch.no_grad():
        result["exact_roundtrip"] = bool(torch.equal(decoded(x), model(x)))
    result.update(compressed_accuracy=accuracy(decoded), file=str(path),
                  layers=[layer_row(layer) for layer in stored.layers], overhead=overhead_row(stored))
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
