"""Deep Compression encoding of a model (Han et al., ICLR 2016): pruned + weight-shared layers
become relative sparse indices and cluster indices, both Huffman-coded, in a `.nnc` container.

Per layer the index width is chosen to minimise the coded size (fillers counted), since a fixed
width wastes fillers on sparse layers. `decode_model` rebuilds a plain `nn.Module` whose outputs
equal those of the encoded (simulated) model exactly.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..analysis.metrics import weight_layers
from ..parametrize import find_transform, plain_state
from ..quant.kmeans import SharedWeights
from ..zoo import build_model
from .container import EncodedLayer, NncFormatError, NncModel
from .huffman import entropy_bits, huffman_decode, huffman_encode
from .sparse import RelativeIndices, decode_relative, encode_relative

INDEX_BIT_CHOICES = range(2, 13)
TABLE_BITS_PER_SYMBOL = 10  # a Huffman table entry costs about 9 bits of the zlib-compressed header


def _streams(indices: torch.Tensor, k: int, index_bits: int) -> tuple[RelativeIndices, np.ndarray]:
    """Relative positions of the stored weights and their cluster symbols (fillers -> symbol k)."""
    symbols_plus_one = (indices.flatten() + 1).numpy()  # 0 = pruned, c + 1 = cluster c
    rel = encode_relative(symbols_plus_one, index_bits)
    clusters = np.where(rel.values > 0, rel.values - 1, k)
    return rel, clusters


def encode_layer(name: str, shared: SharedWeights) -> tuple[EncodedLayer, dict]:
    """Encode one weight-shared layer with the index width that minimises its coded bits, the
    Huffman tables stored in the header included (wide widths have many distinct distances)."""
    k = shared.codebook.numel()
    best = None
    for bits in INDEX_BIT_CHOICES:
        rel, clusters = _streams(shared.indices, k, bits)
        index, cluster_stream = huffman_encode(rel.distances), huffman_encode(clusters)
        total = index.n_bits + cluster_stream.n_bits + TABLE_BITS_PER_SYMBOL * len(index.symbols)
        if best is None or total < best[0]:
            best = (total, bits, rel, index, cluster_stream, clusters)
    _, bits, rel, index, cluster_stream, clusters = best  # type: ignore[misc]
    layer = EncodedLayer(name, tuple(shared.indices.shape), bits, rel.fillers,
                         _storage_codebook(shared.codebook.detach().numpy()), index, cluster_stream)
    stats = {"index_entropy": entropy_bits(rel.distances), "cluster_entropy": entropy_bits(clusters)}
    return layer, stats


def _storage_codebook(codebook: np.ndarray) -> np.ndarray:
    """float16 when that is lossless (see `round_codebooks_fp16_`), else float32: decoding stays exact."""
    codebook = codebook.astype(np.float32)
    half = codebook.astype(np.float16)
    return half if np.array_equal(half.astype(np.float32), codebook) else codebook


def decode_layer(layer: EncodedLayer) -> torch.Tensor:
    """Dense float32 weight of an encoded layer."""
    k = len(layer.codebook)
    distances = huffman_decode(layer.index)
    clusters = huffman_decode(layer.clusters)
    if len(distances) != len(clusters):
        raise NncFormatError(f"layer {layer.name!r}: {len(distances)} index entries but {len(clusters)} cluster entries")
    if clusters.size and (clusters.min() < 0 or clusters.max() > k):
        raise NncFormatError(f"layer {layer.name!r}: cluster symbol outside the {k}-entry codebook")
    numel = int(np.prod(layer.shape))
    values = np.where(clusters < k, layer.codebook[np.minimum(clusters, k - 1)], 0).astype(np.float32)
    try:
        flat = decode_relative(RelativeIndices(distances, values, layer.index_bits, numel, layer.n_fillers))
    except ValueError as err:
        raise NncFormatError(f"layer {layer.name!r}: {err}") from err
    return torch.from_numpy(flat).view(layer.shape)


@torch.no_grad()
def round_biases_fp16_(model: nn.Module) -> None:
    """Round Conv / Linear biases to float16, the precision the .nnc file stores them in."""
    for layer in weight_layers(model).values():
        if layer.bias is not None:
            layer.bias.copy_(layer.bias.half().float())


@torch.no_grad()
def round_codebooks_fp16_(model: nn.Module) -> None:
    """Round shared-weight codebooks to float16 values, so the .nnc file stores them in 2 bytes each."""
    for layer in weight_layers(model).values():
        shared = find_transform(layer, SharedWeights)
        if shared is not None:
            shared.codebook.copy_(shared.codebook.half().float())


def encode_model(model: nn.Module, arch: dict, meta: dict | None = None) -> tuple[NncModel, dict[str, dict]]:
    """Encode every weight-shared layer; other tensors are stored raw (layer biases as float16)."""
    layers, stats, encoded_weights = [], {}, set()
    for name, layer in weight_layers(model).items():
        shared = find_transform(layer, SharedWeights)
        if shared is not None:
            encoded, stats[name] = encode_layer(name, shared)
            layers.append(encoded)
            encoded_weights.add(f"{name}.weight")
    bias_names = {f"{n}.bias" for n, m in weight_layers(model).items() if m.bias is not None}
    tensors = {}
    for key, value in plain_state(model).items():
        if key in encoded_weights:
            continue
        array = value.detach().cpu().numpy()
        tensors[key] = array.astype(np.float16) if key in bias_names else array.astype(np.float32)
    return NncModel(arch, layers, tensors, meta or {}), stats


def decode_model(nnc: NncModel) -> nn.Module:
    """Rebuild the zoo model named in the file and load every decoded tensor into it."""
    try:
        model = build_model(nnc.model["arch"], tuple(nnc.model["in_shape"]), int(nnc.model["num_classes"]))
    except (KeyError, TypeError) as err:
        raise NncFormatError(f"model description {nnc.model!r} is incomplete: {err}") from err
    state = {layer.name + ".weight": decode_layer(layer) for layer in nnc.layers}
    state.update({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in nnc.tensors.items()})
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise NncFormatError(f"the tensors do not fit a {nnc.model['arch']}: {err}") from err
    return model.eval()
