"""Real bytes on disk after `convert_` (Core II acceptance): safetensors files written by
`nc.save_model`, compressed vs float32, each reloaded and checked for identical outputs.

Usage: python benchmarks/stored_size.py
Models: a Hugging Face BertModel built from a small config (no download; SmoothQuant on the FFN,
LinearQuant W8A8 on the rest, embeddings per row) and the zoo's LeNet-300-100 (untrained weights:
file sizes do not depend on training). Calibration: random padded token batches / random images.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import nncompress as nc
from common import header, table, write_results
from nncompress.zoo import build_model

FFN = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"


def bert():
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=128, initializer_range=0.1)
    return transformers.BertModel(config).eval()


def token_batch(seed: int, batch: int = 8, length: int = 24) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 2000, (batch, length), generator=g)
    mask = (torch.arange(length) < torch.randint(length // 3, length + 1, (batch, 1), generator=g)).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def lenet300():
    torch.manual_seed(0)
    return build_model("lenet300", (1, 28, 28), 10).eval()


def measure(name: str, factory, recipe, calib, probe, run, folder: Path) -> list[object]:
    """Float file vs converted file; reload into a fresh instance and compare outputs exactly."""
    model = factory()
    float_bytes = nc.save_model(model, folder / f"{name}-f32.safetensors").stat().st_size
    for method in recipe:
        nc.apply_(model, method, data=calib)
    nc.convert_(model)
    path = nc.save_model(model, folder / f"{name}.safetensors", recipe=recipe)
    restored, _ = nc.load_model(path, factory, example=calib[0])
    with torch.no_grad():
        exact = torch.equal(run(restored, probe), run(model, probe))
    size = path.stat().st_size
    return [name, f"{float_bytes:,}", f"{size:,}", f"{size / float_bytes:.3f}x", exact]


def main() -> None:
    torch.set_num_threads(2)
    hidden = lambda m, b: m(**b).last_hidden_state  # noqa: E731
    logits = lambda m, x: m(x)  # noqa: E731
    images = [torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    bert_recipe = [nc.SmoothQuant(targets=nc.Select(types=("Linear",), include=(FFN,))),
                   nc.LinearQuant(weight_bits=8, act_bits=8, targets=nc.Select(types=("Linear", "Embedding"), exclude=(FFN,)))]
    cases = [
        ("BertModel (hidden 128, 2 layers) SmoothQuant FFN + W8A8 rest", bert, bert_recipe,
         [token_batch(s) for s in range(4)], token_batch(99), hidden),
        ("lenet300 W8A8", lenet300, [nc.LinearQuant(weight_bits=8, act_bits=8)], images, images[1], logits),
        ("lenet300 W4A8", lenet300, [nc.LinearQuant(weight_bits=4, act_bits=8)], images, images[1], logits),
        ("lenet300 pruned 90% (float values)", lenet300, [nc.MagnitudePrune(sparsity=0.9)], images, images[1], logits),
        ("lenet300 pruned 90% + k-means 4 bit", lenet300, [nc.MagnitudePrune(sparsity=0.9), nc.KMeansQuant(bits=4)],
         images, images[1], logits),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(*case, Path(tmp)) for case in cases]
    text = header("Stored size after convert_: safetensors files from nc.save_model") + "\n"
    text += ("Each compressed model is converted (integer codes, bit-packed below 8 bits), saved with its recipe, "
             "and loaded into a fresh instance with another example batch; 'outputs equal' compares the reloaded "
             "model with the one saved (torch.equal). Sizes include the safetensors header and the recipe.\n\n")
    text += table(["model / recipe", "float32 bytes", "converted bytes", "ratio", "outputs equal"], rows)
    write_results("stored_size", text)
    print(text)


if __name__ == "__main__":
    main()
