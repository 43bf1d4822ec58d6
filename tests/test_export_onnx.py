"""ONNX export: QDQ / QOperator round trips through ONNX Runtime equal the quantized model (Linear,
Conv, depthwise Conv, residual add, attention, per-token dynamic), pruned and k-means weights, and
unsupported ops fail naming the op and the layer."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import nncompress as nc  # noqa: E402
from nncompress.export.onnx import export_onnx  # noqa: E402
from nncompress.export.graph import ort_session, u8s8_saturates  # noqa: E402
from nncompress.export.layers import _int8_grid  # noqa: E402
from nncompress.validate import UserError  # noqa: E402


def run_ort(result, x: torch.Tensor, optimize: bool = True) -> np.ndarray:
    return ort_session(result.model, threads=1, optimize=optimize).run(None, {"input": x.numpy()})[0]


def w8a8(net: nn.Module, calib: list[torch.Tensor]) -> nn.Module:
    nc.fold_batchnorm_(net.eval())
    nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8), data=calib)
    return nc.convert_(net)


def initializer(result, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer if t.name == name)


class ResidualNet(nn.Module):
    """Conv -> depthwise Conv -> residual add -> max pool -> global average pool -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.pool, self.gap = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.relu(self.pointwise(torch.relu(self.depthwise(h))) + h)
        return self.fc(torch.flatten(self.gap(self.pool(h)), 1))


def test_linear_qdq_round_trip_is_the_model_with_int8_codes_per_channel():
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5))
    w8a8(net, [torch.randn(64, 16)])
    result = export_onnx(net, torch.randn(2, 16), weight_range="full")
    onnx.checker.check_model(result.model, full_check=True)
    x = torch.randn(7, 16)  # another batch size than the example
    with torch.no_grad():
        ref = net(x).numpy()
    np.testing.assert_allclose(run_ort(result, x), ref, atol=1e-5 * np.abs(ref).max())
    codes = initializer(result, "0.weight_q")
    stored = net[0].parametrizations.weight[0].encoded(net[0].parametrizations.weight.original)
    assert codes.dtype == np.int8 and np.array_equal(codes, stored.tensors["codes"].numpy())
    dq = next(n for n in result.model.graph.node if n.op_type == "DequantizeLinear" and "0.weight_q" in n.input)
    assert onnx.helper.get_attribute_value(dq.attribute[0]) == 0 and initializer(result, "0.weight_scale").shape == (32,)
    assert initializer(result, "0.bias_q").dtype == np.int32


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_conv_depthwise_residual_round_trip(fmt):
    calib = [torch.randn(16, 3, 8, 8)]
    net = w8a8(ResidualNet(), calib)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        ref = net(x).numpy()
    exact = export_onnx(net, x[:2], format=fmt, weight_range="full")  # Q/DQ only where the model quantizes
    np.testing.assert_allclose(run_ort(exact, x), ref, atol=1e-5 * np.abs(ref).max())
    fast = export_onnx(net, x[:2], format=fmt, weight_range="full", calibration=calib)
    assert fast.extra_grids and "calibrated" in " ".join(fast.notes)
    step = max(float(net.fc.input_quantizer.scale), 1e-6) * float(net.fc.weight.abs().sum(1).max())
    assert np.abs(run_ort(fast, x) - ref).max() <= step  # one quantization step of the last layer's input
    if fmt == "qdq":
        ops = {n.op_type for n in exact.model.graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops and "QLinearConv" not in ops
    else:
        assert "QLinearConv" in {n.op_type for n in exact.model.graph.node}


def test_attention_and_per_token_dynamic_round_trip():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.fc = nn.MultiheadAttention(32, 4, batch_first=True), nn.Linear(32, 6)
            self.norm = nn.LayerNorm(32)

        def forward(self, x):
            return self.fc(self.norm(x + self.attn(x, x, x, need_weights=False)[0]))[:, 0]

    base = Encoder().eval()
    nc.unfuse_attention_(base)
    x = torch.randn(3, 9, 32)
    static = nc.convert_(nc.quantize_(copy.deepcopy(base), nc.LinearQuant(weight_bits=8, act_bits=8),
                                      data=[torch.randn(16, 9, 32)]))
    dynamic = nc.convert_(nc.quantize_(copy.deepcopy(base), nc.DynamicQuant(per_token=True)))
    for net, fmt in ((static, "qdq"), (dynamic, "qdq"), (dynamic, "qoperator")):
        result = export_onnx(net, x[:1], format=fmt, weight_range="full")
        with torch.no_grad():
            ref = net(x).numpy()
        np.testing.assert_allclose(run_ort(result, x), ref, atol=1e-4 * np.abs(ref).max())
    assert "MatMulInteger" in {n.op_type for n in result.model.graph.node}


def test_pruned_kmeans_and_reduced_weights():
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.5, scope="global"))
    w8a8(net, [torch.randn(32, 32)])
    result = export_onnx(net, torch.randn(2, 32), weight_range="full")
    codes = initializer(result, "0.weight_q")
    assert (codes == 0).mean() >= 0.45 and np.array_equal(codes == 0, (net[0].weight == 0).numpy())
    reduced = export_onnx(net, torch.randn(2, 32), weight_range="reduce")
    assert np.abs(initializer(reduced, "0.weight_q")).max() <= 63
    shared = nn.Sequential(nn.Linear(16, 8))
    nc.quantize_(shared, nc.KMeansQuant(bits=3))
    result = export_onnx(shared, torch.randn(2, 16))
    assert result.layers["0"]["weight"].startswith("float (k-means")
    x = torch.randn(4, 16)
    with torch.no_grad():
        np.testing.assert_allclose(run_ort(result, x), shared(x).numpy(), atol=1e-5)
    on_grid = (torch.randint(-127, 128, (4, 6)).float() * 0.5).numpy()
    on_grid[:, 0] = 127 * 0.5
    assert _int8_grid(on_grid) is not None and _int8_grid(on_grid + 0.1) is None


def test_unsupported_op_names_op_and_layer():
    class Block(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    net = nn.Sequential(nn.Linear(4, 4), Block())
    with pytest.raises(UserError, match=r"cumsum.*layer '1'"):
        export_onnx(net, torch.randn(2, 4))
    with pytest.raises(UserError, match=r"Upsample.*layer 'up'"):
        export_onnx(nn.Sequential(__import__("collections").OrderedDict(up=nn.Upsample(scale_factor=2))),
                    torch.randn(1, 1, 4, 4))
    with pytest.raises(UserError, match="format"):
        export_onnx(net, torch.randn(2, 4), format="tflite")


def test_weight_range_probe_and_auto_note():
    assert isinstance(u8s8_saturates(), bool)
    net = w8a8(nn.Sequential(nn.Linear(8, 4)), [torch.randn(8, 8)])
    result = export_onnx(net, torch.randn(2, 8))
    assert result.weight_range in ("full", "reduce") and "weight_range=" in result.notes[0]
    plain = export_onnx(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))  # float weights: nothing to say
    assert not any("weight_range=" in note for note in plain.notes)


def test_matches_integer_engine_within_one_step():
    engine_mod = pytest.importorskip("nncompress.runtime.engine")
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 10))
    calib = [torch.randn(32, 1, 8, 8)]
    w8a8(net, calib)
    x = torch.randn(16, 1, 8, 8)
    try:
        engine = engine_mod.IntegerEngine.from_model(net, x[:2])
        expected = engine(x).numpy()
    except Exception as err:  # the engine is built beside this exporter; skip while it cannot run this net
        pytest.skip(f"integer engine unavailable: {err}")
    got = run_ort(export_onnx(net, x[:2], weight_range="full"), x)
    last = net[4]
    step = float(last.input_quantizer.scale) * float(last.weight.abs().sum(1).max())
    assert np.abs(got - expected).max() <= step


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
@pytest.mark.parametrize("channels", [1, 3])
def test_an_image_stem_is_padded_to_four_channels_exactly(fmt, channels, monkeypatch, tmp_path):
    """ONNX Runtime's fast int8 conv needs input channels in multiples of 4: a 1- or 3-channel stem
    goes out with its codes padded by the zero point and zero weight columns, and the outputs equal
    the unpadded export's bit for bit; no node is left without a reader."""
    from nncompress.export import layers

    torch.manual_seed(channels)
    net = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(16 * 36, 4))
    calib = [torch.randn(32, channels, 6, 6)]
    w8a8(net, calib)
    x = torch.randn(9, channels, 6, 6)
    padded = export_onnx(net, x[:2], format=fmt, weight_range="full", calibration=calib)
    onnx.checker.check_model(padded.model, full_check=True)
    pads = [n for n in padded.model.graph.node if n.op_type == "Pad"]
    assert len(pads) == 1 and "padded" in padded.layers["0"]["input"]
    assert initializer(padded, "0.weight_q").shape == (16, 4, 3, 3)
    monkeypatch.setattr(layers, "ORT_CONV_MIN_OUTPUTS", 10 ** 6)
    plain = export_onnx(net, x[:2], format=fmt, weight_range="full", calibration=calib)
    assert not any(n.op_type == "Pad" for n in plain.model.graph.node)
    assert np.array_equal(run_ort(padded, x), run_ort(plain, x))
    read = {i for n in padded.model.graph.node for i in n.input} | {o.name for o in padded.model.graph.output}
    assert all(o in read for n in padded.model.graph.node for o in n.output)
    optimized = tmp_path / "optimized.onnx"
    ort_session(padded.model, 1, True, str(optimized))  # ONNX Runtime still fuses both convs into QLinearConv
    assert [n.op_type for n in onnx.load(str(optimized)).graph.node].count("QLinearConv") == 2


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_a_signed_input_grid_stem_runs_in_onnx_runtime(fmt):
    """LSQ calibrates a signed (int8) grid on normalized images: the stem is not padded (ORT would run
    a padded int8 stem as a float Conv), and a QLinearConv whose output grid has another type (uint8
    after the ReLU) goes out as DequantizeLinear + float Conv, which ORT loads (int8 -> uint8
    QLinearConv has no kernel there)."""
    from nncompress.quant.lsq import LSQ

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    nc.apply_(net, LSQ(weight_bits=8, act_bits=8, granularity="channel"), data=[torch.randn(32, 3, 16, 16)])
    nc.convert_(net)
    x = torch.randn(8, 3, 16, 16)
    result = export_onnx(net, x[:2], format=fmt, weight_range="full")
    assert not any(n.op_type == "Pad" for n in result.model.graph.node)
    with torch.no_grad():
        ref = net(x).numpy()
    last = net[6]
    step = float(last.input_quantizer.scale) * float(last.weight.abs().sum(1).max())
    assert np.abs(run_ort(result, x) - ref).max() <= step


def test_export_onnx_is_a_top_level_name():
    from nncompress.export import onnx as onnx_export

    assert nc.export_onnx is onnx_export.export_onnx
    with pytest.raises(AttributeError, match="no attribute 'export_onxx'"):
        nc.export_onxx
