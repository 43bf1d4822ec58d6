"""Core II acceptance: a Hugging Face BertModel (small config, no download) goes through W8A8 static
PTQ with dict batches and padding masks, SmoothQuant on the FFN plus LinearQuant on the rest,
convert_, save, and load into a fresh instance with outputs equal to before saving; the W8 file is
at most 0.3x the float32 file."""
import pytest
import torch

import nncompress as nc

transformers = pytest.importorskip("transformers")

FFN = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense"


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=512, max_position_embeddings=128, initializer_range=0.1)
    return transformers.BertModel(config).eval()


def padded_batch(seed, batch=8, length=24):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 2000, (batch, length), generator=g)
    lengths = torch.randint(length // 3, length + 1, (batch,), generator=g)
    mask = (torch.arange(length) < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}  # padding id 0 after each sentence


def hidden(model, batch):
    with torch.no_grad():
        return model(**batch).last_hidden_state


def recipe():
    return [nc.SmoothQuant(alpha=0.5, targets=nc.Select(types=("Linear",), include=(FFN,))),
            nc.LinearQuant(weight_bits=8, act_bits=8, targets=nc.Select(types=("Linear", "Embedding"), exclude=(FFN,)))]


def test_bert_w8a8_smoothquant_plus_linear_convert_save_load(tmp_path):
    model = bert()
    calib = [padded_batch(seed) for seed in range(4)]
    test = padded_batch(99)
    reference = hidden(model, test)
    float_path = nc.save_model(model, tmp_path / "float.safetensors")
    for method in recipe():
        nc.quantize_(model, method, data=calib)
    quantized = hidden(model, test)
    keep = test["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(quantized[keep], reference[keep], dim=-1)
    assert cosine.min() > 0.99, f"worst token cosine {cosine.min():.4f}"
    smoothed = [n for n, m in model.named_modules() if getattr(getattr(m, "input_quantizer", None), "smooth", None) is not None]
    assert len(smoothed) == 4 and all(".intermediate." in n or n.endswith(".output.dense") for n in smoothed)

    nc.convert_(model)
    assert torch.equal(hidden(model, test), quantized)
    path = nc.save_model(model, tmp_path / "w8.safetensors", recipe=recipe())
    assert path.stat().st_size <= 0.3 * float_path.stat().st_size

    restored, _ = nc.load_model(path, model=bert, example=padded_batch(5))
    assert torch.equal(hidden(restored, test), quantized)
