"""Regenerate the frozen 1.0 / 2.0 golden files with the writers of that time, loaded from git.

    .venv/bin/python tests/encode/golden/make_legacy.py

`legacy_v1.nnc` is written by the 1.0 encoder of commit cbe96f8 (JSON header, float32 codebooks),
`legacy_v2.nnc` by the 2.0 encoder of commit 3e023c2 (zlib header, float16 codebooks); both from
the same seeded, pruned (90 % per layer) and k-means-shared (fc1 / fc2: 4 bits, fc3: 5 bits)
LeNet-300-100 on 4x4 inputs. `legacy_expected.json` holds the sha256 of every decoded tensor
(float32, little-endian, C order) as the writer's own decoder produced it. These files are
history: the test checks that today's reader decodes them to the same tensors; never regenerate
them to make a failing test pass.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

import nncompress as nc
from nncompress.zoo import build_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
WRITERS = {"legacy_v1.nnc": "cbe96f8", "legacy_v2.nnc": "3e023c2"}
ARCH = {"arch": "lenet300", "in_shape": [1, 4, 4], "num_classes": 10}


def old_encode_package(commit: str) -> types.ModuleType:
    """nncompress/encode/{container,deep_compression,huffman,sparse}.py as of `commit`, importable."""
    name = f"nnc_encode_{commit}"
    package = types.ModuleType(name)
    package.__path__ = []  # type: ignore[attr-defined]
    sys.modules[name] = package
    folder = Path(tempfile.mkdtemp())
    for module in ("sparse", "huffman", "container", "deep_compression"):
        text = subprocess.run(["git", "show", f"{commit}:src/nncompress/encode/{module}.py"], cwd=REPO,
                              check=True, capture_output=True, text=True).stdout
        path = folder / f"{module}.py"
        path.write_text(text.replace("from ..", "from nncompress."))
        spec = importlib.util.spec_from_file_location(f"{name}.{module}", path)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
        setattr(package, module, loaded)
    return package


def tiny_model(old) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ARCH["arch"], tuple(ARCH["in_shape"]), ARCH["num_classes"]).eval()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="layer"))
    nc.quantize_(model, nc.KMeansQuant(bits=4, layer_bits={"fc3": 5}))
    old.deep_compression.round_biases_fp16_(model)
    if hasattr(old.deep_compression, "round_codebooks_fp16_"):
        old.deep_compression.round_codebooks_fp16_(model)
    return model


def tensor_digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor.detach().numpy(), dtype="<f4").tobytes()).hexdigest()


def main() -> None:
    expected = {}
    for file_name, commit in WRITERS.items():
        old = old_encode_package(commit)
        nnc, _ = old.deep_compression.encode_model(tiny_model(old), ARCH, {"golden": file_name})
        data = old.container.serialize(nnc)
        (HERE / file_name).write_bytes(data)
        decoded = old.deep_compression.decode_model(old.container.parse(data))
        expected[file_name] = {"writer_commit": commit, "bytes": len(data),
                               "tensors": {k: {"shape": list(v.shape), "sha256": tensor_digest(v)}
                                           for k, v in decoded.state_dict().items()}}
        print(f"{file_name}: {len(data)} bytes (writer {commit})")
    (HERE / "legacy_expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()
