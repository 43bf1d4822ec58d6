"""SplitAttention reproduces nn.MultiheadAttention, so PTQ works on torch's own transformer layers."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.metrics import sqnr_db
from nncompress.quant.attention import SplitAttention, unfuse_attention_
from nncompress.quant.activation import input_quantizer


def _mha(**kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, **kwargs)
    with torch.no_grad():  # torch initialises the in-projection bias to 0: make it count
        if mha.in_proj_bias is not None:
            mha.in_proj_bias.normal_()
    return mha.eval()


@pytest.mark.parametrize("kwargs", [{}, {"batch_first": True}, {"kdim": 8, "vdim": 12}, {"bias": False}])
def test_split_attention_equals_multihead_attention(kwargs):
    mha = _mha(**kwargs)
    split = SplitAttention.from_fused(mha)
    torch.manual_seed(1)
    def batch(length: int, dim: int) -> torch.Tensor:  # 3 sequences
        return torch.randn(3, length, dim) if kwargs.get("batch_first") else torch.randn(length, 3, dim)

    q, k, v = batch(5, 16), batch(7, kwargs.get("kdim", 16)), batch(7, kwargs.get("vdim", 16))
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[0, -2:] = True
    mask = torch.randn(5, 7)
    for extra in ({}, {"key_padding_mask": padding}, {"attn_mask": mask}, {"average_attn_weights": False}):
        out, weights = split(q, k, v, **extra)
        ref_out, ref_weights = mha(q, k, v, **extra)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(weights, ref_weights, atol=1e-6, rtol=1e-5)


def test_causal_and_unbatched_inputs_match():
    mha = _mha()
    split = SplitAttention.from_fused(mha)
    x = torch.randn(6, 16)  # unbatched (L, E)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(split(x, x, x, attn_mask=causal)[0], mha(x, x, x, attn_mask=causal)[0], atol=1e-5, rtol=1e-5)
    out, weights = split(x, x, x, is_causal=True, need_weights=True)
    assert weights.shape == (6, 6) and torch.all(weights.triu(1) == 0)
    assert split(x, x, x, need_weights=False)[1] is None


def test_unsupported_options_name_themselves():
    with pytest.raises(ValueError, match="add_bias_kv"):
        SplitAttention.from_fused(nn.MultiheadAttention(16, 4, add_bias_kv=True))
    with pytest.raises(ValueError, match="not divisible"):
        SplitAttention(10, 4)


def _encoder() -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=True),
                         nn.Flatten(), nn.Linear(16 * 5, 3)).eval()


def test_unfusing_a_transformer_encoder_keeps_its_function():
    model = _encoder()
    x = torch.randn(4, 5, 8)
    before = model(x)
    assert unfuse_attention_(model) == ["1.layers.0.self_attn", "1.layers.1.self_attn"]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    padding = torch.zeros(4, 5, dtype=torch.bool)
    padding[:, -1] = True
    fused = _encoder()  # torch's nested-tensor fast path (which would read the fused weights)
    h = model[0](x)
    torch.testing.assert_close(model[1](h, src_key_padding_mask=padding)[:, :-1],
                               fused[1](h, src_key_padding_mask=padding)[:, :-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [nc.LinearQuant(weight_bits=8, act_bits=8),
                                    nc.DynamicQuant(weight_bits=8, act_bits=8, per_token=True),
                                    nc.SmoothQuant(weight_bits=8, act_bits=8)])
def test_ptq_quantizes_every_projection_of_torch_transformer_layers(method):
    model = _encoder()
    torch.manual_seed(1)
    x = torch.randn(64, 5, 8)
    reference = model(x)
    nc.quantize_(model, method, data=[(x, torch.zeros(64, dtype=torch.long))])
    wrapped = [n for n, m in model.named_modules() if input_quantizer(m) is not None]
    per_layer = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "linear1", "linear2"}
    assert {f"1.layers.{i}.{p}" for i in (0, 1) for p in per_layer} <= set(wrapped)
    assert sqnr_db(reference, model(x)) > 25
