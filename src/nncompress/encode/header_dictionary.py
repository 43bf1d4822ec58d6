"""The preset dictionary of compact headers (.nnc 3.3; docs/format.md "Compact header").

zlib can start a stream from a preset dictionary (RFC 1950 sec. 2.2, FDICT): text the stream repeats
from the dictionary costs a back-reference (a few bits) instead of its letters. Most of a small
file's header is the same keys in every file (`"chain":[{"kind":"mask","meta":{"shape":...`,
`"codec":{"name":"huffman","min":0,...`), so with a dictionary that holds them a LeNet-5 header
shrinks from about 1.1 kB to under 0.5 kB (7% of a 10 kB file at 170x; tests/encode).

The dictionary is part of the format: `DICTIONARY` are the bytes of `header.dict` beside this module,
fixed by the spec through their Adler-32 (`DICTIONARY_ADLER32`, the DICTID of every compact header's
zlib stream). `build_dictionary` shows how they were made: the compact JSON headers of small
synthetic models (random weights, shapes unlike the zoo's) through the transforms and codecs the
writer uses most, the most common last (zlib reaches the end of a dictionary with the shortest
distances). tests/encode/test_compact_header.py checks that it still makes exactly these bytes.
"""
from __future__ import annotations

import zlib
from pathlib import Path

DICTIONARY_PATH = Path(__file__).with_name("header.dict")
DICTIONARY = DICTIONARY_PATH.read_bytes()
DICTIONARY_ADLER32 = zlib.adler32(DICTIONARY)


def _synthetic_headers() -> list[dict]:
    """Headers of three small synthetic models, least common chains first: int8 PTQ, Deep Compression
    with context masks and 8-bit bias codes, Deep Compression with relative masks and float16 biases."""
    import torch
    from torch import nn

    from ..config import Context, run_method
    from ..prune.unstructured import MagnitudePrune
    from ..quant.kmeans import KMeansQuant
    from ..quant.ptq import LinearQuant
    from .container import Coding, serialize_header
    from .deep_compression import quantize_biases_, round_biases_fp16_, round_codebooks_fp16_
    from .model import encode_model

    torch.manual_seed(0)
    ptq = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 7))
    run_method(ptq, LinearQuant(weight_bits=8, act_bits=None, granularity="channel"), Context())
    cnn = nn.Sequential(nn.Conv2d(2, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 6 * 6, 24),
                        nn.ReLU(), nn.Linear(24, 7))
    mlp = nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 7))
    for model, bias_bits in ((cnn, 8), (mlp, None)):
        run_method(model, MagnitudePrune(sparsity=0.9), Context())
        run_method(model, KMeansQuant(bits=3), Context())
        round_biases_fp16_(model)
        round_codebooks_fp16_(model)
        if bias_bits:
            quantize_biases_(model, bias_bits)
    desc = {"arch": "net", "in_shape": [1, 8, 8], "num_classes": 7}
    meta = {"dataset": "data", "bits": {"conv": 3, "fc": 3}, "seed": 0}
    return [serialize_header(encode_model(ptq, desc, meta)),
            serialize_header(encode_model(cnn, desc, {**meta, "bias_bits": 8}, Coding("context"))),
            serialize_header(encode_model(mlp, desc, meta))]


def build_dictionary() -> bytes:
    """The dictionary's bytes, made again (see the module doc): each synthetic header's compact JSON
    without its `sections` (their lengths and CRCs are noise to any other file), concatenated."""
    from .layout import compact_json

    return b"".join(compact_json({k: v for k, v in h.items() if k != "sections"}).encode() for h in _synthetic_headers())
