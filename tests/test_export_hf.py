"""ONNX export of a Hugging Face BertModel (issue 10): dict inputs with integer token ids and an
attention mask go through torch.onnx's float graph with our int8 Linear layers spliced in; ONNX
Runtime then computes what our quantized model computes."""
import copy

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")

import nncompress as nc  # noqa: E402
from nncompress.export.graph import ort_session  # noqa: E402
from nncompress.export.onnx import export_onnx  # noqa: E402
from nncompress.validate import UserError  # noqa: E402


def tiny_bert() -> torch.nn.Module:
    config = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, attn_implementation="eager")
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def batch(n: int = 3, length: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, length // 2:] = 0  # one padded sequence: the mask must reach the attention
    return {"input_ids": torch.randint(0, 500, (n, length), generator=g), "attention_mask": mask}


def run(result, example: dict) -> np.ndarray:
    session = ort_session(result.model, threads=1)
    return session.run(None, {k: v.numpy() for k, v in example.items()})[0]


@pytest.mark.parametrize("method", [nc.DynamicQuant(per_token=True), nc.DynamicQuant(per_token=False),
                                    nc.LinearQuant(weight_bits=8, act_bits=8)], ids=["token", "tensor", "static"])
def test_bert_with_masks_exports_and_matches_our_model(method):
    model = tiny_bert()
    calib = [batch(8, 12, seed) for seed in range(2)]
    quantized = nc.convert_(nc.quantize_(copy.deepcopy(model), method, data=calib))
    example = batch(3, 12, seed=5)
    result = export_onnx(quantized, example)
    assert result.inputs == ["input_ids", "attention_mask"]
    assert len(result.layers) == 2 * 6  # Q, K, V, attention output, FFN in / out in each of 2 layers
    ops = {n.op_type for n in result.model.graph.node}
    assert ("MatMulInteger" in ops) if method.name == "dynamic" else ("QuantizeLinear" in ops)
    with torch.no_grad():
        ours = quantized(**example).last_hidden_state.numpy()
        float_out = model(**example).last_hidden_state.numpy()
    got = run(result, example)
    to_ours, float_to_ours = np.abs(got - ours).max(), np.abs(float_out - ours).max()
    assert to_ours <= 1e-3 * np.abs(ours).max()  # float32 summation order only
    assert to_ours < float_to_ours / 5  # ONNX Runtime computes the int8 model, not the float one
    longer = batch(2, 20, seed=6)  # batch and sequence length are free
    with torch.no_grad():
        np.testing.assert_allclose(run(result, longer), quantized(**longer).last_hidden_state.numpy(),
                                   atol=1e-3 * np.abs(ours).max())


def test_a_quantized_layer_that_is_not_linear_is_named():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 36, 2))
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=None))
    with pytest.raises(UserError, match="layer '0' \\(Conv2d\\)"):
        export_onnx(model, (torch.randn(1, 1, 8, 8),))


def test_equal_biases_deduplicated_by_torch_onnx_are_added_once():
    """torch.onnx stores equal biases once and hands them out through Identity nodes: the float bias
    Add must still be recognised and dropped (the spliced layer adds the bias itself), or every such
    layer adds its bias twice."""
    model = tiny_bert()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.bias.fill_(0.5)
    quantized = nc.convert_(nc.quantize_(copy.deepcopy(model), nc.DynamicQuant(per_token=True),
                                         data=[batch(8, 12, seed) for seed in range(2)]))
    example = batch(3, 12, seed=5)
    with torch.no_grad():
        ours = quantized(**example).last_hidden_state.numpy()
    assert np.abs(run(export_onnx(quantized, example), example) - ours).max() <= 1e-3 * np.abs(ours).max()
