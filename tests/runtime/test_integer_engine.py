"""The integer-only engine (Jacob et al., CVPR 2018) against the fake-quantized model it runs."""
import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nncompress as nc
from nncompress.runtime.engine import IntegerEngine
from nncompress.runtime.int8_torch import Int8Conv2d, Int8Linear, to_int8_
from nncompress.runtime.qvalue import UnsupportedModelError
from nncompress.runtime.simulate import compare_codes, model_layer_codes
from nncompress.zoo import build_model

W8A8 = nc.LinearQuant(weight_bits=8, act_bits=8, granularity="channel")
EPOCHS = {"lenet5": 3, "resnet20": 2, "mobilenetv2_small": 1}
_TRAINED: dict = {}


def quantized(model: nn.Module, calib: torch.Tensor) -> nn.Module:
    """BN folded, static W8A8 with per-channel weights and int32 biases, converted."""
    model.eval()
    nc.fold_batchnorm_(model)
    nc.quantize_(model, W8A8, data=[calib])
    return nc.convert_(model)


@dataclasses.dataclass
class Trained:
    """A converted model, its engine and their runs on the digits test set (computed once)."""

    model: nn.Module
    engine: IntegerEngine
    x: torch.Tensor
    y: torch.Tensor

    @property
    def codes(self):
        if "codes" not in self.__dict__:
            self.__dict__["codes"] = self.engine.run_codes(self.x)
        return self.__dict__["codes"]

    def simulation(self, dtype):
        key = f"sim-{dtype}"
        if key not in self.__dict__:
            self.__dict__[key] = self.engine.simulate(self.x, dtype)
        return self.__dict__[key]

    @property
    def logits(self):  # the engine's float output: the last layer's accumulator, dequantized
        last = list(self.engine.layers)[-1]
        return self.engine.program.steps[last].info.dequantize(self.codes[last])


@pytest.fixture
def trained(digits):
    """Trained once per session on digits (1,437 / 360 images of 8x8), then W8A8 and converted."""
    def get(arch: str) -> Trained:
        if arch not in _TRAINED:
            torch.manual_seed(0)
            model = build_model(arch, digits.in_shape, digits.num_classes)
            nc.fit(model, digits.train_loader(64), nc.TrainConfig(epochs=EPOCHS[arch], lr=0.05), progress=False,
                   log=lambda _: None)
            model = quantized(model, digits.train_x[:256])
            engine = IntegerEngine.from_model(model, digits.test_x[:2])
            _TRAINED[arch] = Trained(model, engine, digits.test_x, digits.test_y)
        return _TRAINED[arch]
    return get


def assert_same_codes(engine_codes: dict, sim_codes: dict) -> None:
    assert engine_codes.keys() == sim_codes.keys()
    differing = {k: d.differing for k, d in compare_codes(engine_codes, sim_codes).items() if d.differing}
    assert not differing, differing


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "mobilenetv2_small"])
def test_engine_equals_the_simulation_with_the_same_rounding(trained, arch):
    """The oracle property: every layer's integers (input codes, int32 accumulators, outputs) equal."""
    run = trained(arch)
    assert all(not v.is_floating_point() for v in run.codes.values())
    exact = run.simulation(torch.float64)  # float64 layers: the real-valued function of the fake-quantized model
    assert exact.max_recovery_error < 1e-6
    assert_same_codes(run.codes, exact.codes)
    own = run.simulation(torch.float32)  # the model's own float32 layers (quantizer hooks, stored weights)
    assert own.max_recovery_error < 0.25
    assert_same_codes(run.codes, own.codes)
    assert set(run.engine.layers.values()) <= set(dict(run.model.named_modules()))
    torch.testing.assert_close(run.logits, own.output, rtol=0, atol=1e-5)
    torch.testing.assert_close(run.engine(run.x[:7]), run.logits[:7], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_plain_float_rounding_differs_by_one_lsb_rarely(trained, arch):
    """The float32 simulation rounds S_X S_W acc / S_Y in float; gemmlowp's M0 2^-n product rounds at
    2^-31 of the product first. Same inputs, only the rounding differs: at most 1 LSB, rarely
    (measured 4.5e-4 on LeNet-5, 3.6e-4 on ResNet-20)."""
    diffs = trained(arch).simulation(torch.float32).float_rounding.values()
    assert max(d.max_abs for d in diffs) <= 1
    rate = sum(d.differing for d in diffs) / sum(d.elements for d in diffs)
    assert 0 < rate < 1.5e-3


@pytest.mark.parametrize("arch, max_lsb", [("lenet5", 1), ("resnet20", 4)])
def test_engine_accuracy_matches_the_fake_quantized_model(trained, arch, max_lsb):
    """Whole-network comparison with the plain simulation (model(x)): the same accuracy within 2
    images. LeNet-5's layer inputs differ by at most 1 LSB; ResNet-20's by a few, where 1-LSB
    rounding differences carry through the residual stream. The engine keeps skip connections
    wide, as the model keeps them float (measured 3 LSB; 11 when the skip carried the next layer's
    8-bit codes)."""
    run = trained(arch)
    logits, model_codes = model_layer_codes(run.model, run.engine.program, run.x)
    diffs = compare_codes(model_codes, run.codes)
    assert diffs.keys() == {f"{node}:in" for node in run.engine.layers}
    assert max(d.max_abs for d in diffs.values()) <= max_lsb
    engine_hits = int((run.logits.argmax(1) == run.y).sum())
    model_hits = int((logits.argmax(1) == run.y).sum())
    assert abs(engine_hits - model_hits) <= 2
    assert engine_hits / len(run.y) > 0.85
    assert torch.equal(run.logits.argmax(1), run.simulation(torch.float64).output.argmax(1))
    head_hits = int((run.logits[:50].argmax(1) == run.y[:50]).sum())
    assert nc.evaluate(run.engine, [(run.x[:50], run.y[:50])])["accuracy"] == pytest.approx(head_hits / 50)


def test_skip_connections_stay_wide_and_only_the_layers_reading_them_round(trained):
    """The precision highway in integers: every value that reaches a residual add as its identity
    (the stem's output, each block's sum before an identity block) stays a wide int32 accumulator,
    and the layers reading it requantize it onto their own grids. A sum read only by layers (the
    block before a downsampling block, whose shortcut is a 1x1 conv) is written as codes."""
    from nncompress.runtime.ops import Add, LayerStep

    steps = trained("resnet20").engine.program.steps
    kinds = {name: step.info.kind for name, step in steps.items() if isinstance(step, (Add, LayerStep))}
    adds = [name for name, step in steps.items() if isinstance(step, Add)]
    assert [kinds[a] for a in adds] == ["acc", "acc", "codes", "acc", "acc", "codes", "acc", "acc", "acc"]
    assert kinds["_0_0"] == "acc"  # the stem feeds block 1's add
    assert all(kinds[f"_{b}_conv1_0"] == "codes" and kinds[f"_{b}_conv2_0"] == "acc" for b in range(1, 10))
    assert kinds["_4_shortcut_0"] == kinds["_7_shortcut_0"] == "acc"


class Branchy(nn.Module):
    """Depthwise + dilated + strided convs, a residual add of two accumulators, max pool with
    ceil_mode, 'same' padding with groups, an average pool of an accumulator, flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2)
        self.skip = nn.Conv2d(4, 8, 1, stride=2)
        self.pool = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.grouped = nn.Conv2d(8, 12, 3, padding="same", groups=4, bias=False)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        y = self.conv(F.relu(self.dw(x))) + self.skip(x)
        y = self.grouped(self.pool(torch.relu(y)))
        return self.fc(torch.flatten(self.avg(y), 1))


def branchy():
    torch.manual_seed(0)
    calib = torch.randn(64, 4, 12, 12) + 0.5
    return quantized(Branchy(), calib), torch.randn(16, 4, 12, 12) + 0.5


def test_groups_stride_dilation_padding_pools_and_flatten_are_exact():
    model, x = branchy()
    engine = IntegerEngine.from_model(model, x[:1])
    assert engine.program.steps["dw"].layer.grid.zero_point > 0  # the zero padding pads codes with Z_X != 0
    assert_same_codes(engine.run_codes(x), engine.simulate(x).codes)
    assert_same_codes(engine.run_codes(x[:3]), engine.simulate(x[:3], torch.float32).codes)
    torch.testing.assert_close(engine(x), model(x), rtol=0, atol=0.05)


def test_padding_with_zero_instead_of_the_zero_point_is_caught():
    """Negative control: pad the depthwise conv's codes with 0 (the real value -S Z) and the oracle
    sees different accumulators, on the border pixels only."""
    model, x = branchy()
    engine = IntegerEngine.from_model(model, x[:1])
    step = engine.program.steps["dw"]
    reference = engine.run_codes(x)["dw:acc"]
    step.layer = dataclasses.replace(step.layer, grid=dataclasses.replace(step.layer.grid, zero_point=0))
    wrong = engine.run_codes(x)["dw:acc"] != reference
    assert wrong[..., 1:-1, 1:-1].sum() == 0 and wrong.sum() > 0


def test_linear_on_token_sequences_and_batch_size():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    model = quantized(net, torch.randn(128, 7, 6))
    engine = IntegerEngine.from_model(model, torch.randn(1, 7, 6))
    x = torch.randn(9, 7, 6)
    assert_same_codes(engine.run_codes(x), engine.simulate(x).codes)
    assert engine(x).shape == (9, 7, 3)
    with pytest.raises(ValueError, match="planned for inputs of shape"):
        engine(torch.randn(2, 5, 6))


def test_unsupported_models_raise_errors_naming_the_operation():
    torch.manual_seed(0)
    calib = torch.randn(32, 8)
    model = quantized(nn.Sequential(nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 2)), calib)
    with pytest.raises(UnsupportedModelError, match=r"module Sigmoid \('1'\) at node '_1'"):
        IntegerEngine.from_model(model, calib[:1])
    dynamic = nn.Sequential(nn.Linear(8, 4))
    nc.quantize_(dynamic, nc.DynamicQuant(weight_bits=8, act_bits=8))
    with pytest.raises(UnsupportedModelError, match="layer '0'.*static input quantizer.*DynamicQuantizer"):
        IntegerEngine.from_model(nc.convert_(dynamic), calib[:1])
    with pytest.raises(UnsupportedModelError, match="reaches no statically quantized layer"):
        IntegerEngine.from_model(nn.Sequential(nn.ReLU()), calib[:1])
    weights_only = nn.Sequential(nn.Linear(8, 4))
    nc.quantize_(weights_only, nc.LinearQuant(weight_bits=8, act_bits=None))
    with pytest.raises(UnsupportedModelError, match="static input quantizer"):
        IntegerEngine.from_model(weights_only, calib[:1])


def int8_copy(model: nn.Module) -> nn.Module:
    try:
        return to_int8_(copy.deepcopy(model))
    except UnsupportedModelError as error:  # a CPU whose int8 kernel saturates (no VNNI): refused, not wrong
        if "not exact on this CPU" in str(error):
            pytest.skip(str(error))
        raise


def test_int8_layers_compute_the_fake_quantized_layers():
    """to_int8_: oneDNN int8 kernels per layer, float between layers: the plain simulation's function
    up to float32 rounding (which can move a later code by 1 LSB)."""
    model, x = branchy()
    fast = int8_copy(model)
    assert isinstance(fast.dw, Int8Conv2d) and isinstance(fast.fc, Int8Linear)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-3 * float(expected.abs().max()))
        y = model.dw(x)  # one layer alone: the same inputs, so only float32 rounding differs
        torch.testing.assert_close(fast.dw(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))


def test_int8_resnet20_predicts_like_the_model(trained):
    run = trained("resnet20")
    fast = int8_copy(run.model)
    with torch.no_grad():
        agree = (fast(run.x).argmax(1) == run.model(run.x).argmax(1)).sum()
    assert int(agree) >= len(run.x) - 1
    wide_inputs = nn.Sequential(nn.Linear(8, 4))
    nc.quantize_(wide_inputs, nc.DynamicQuant(weight_bits=8, act_bits=12))
    with pytest.raises(UnsupportedModelError, match="layer '0': int8 kernels need dynamic inputs of at most 8 bits"):
        to_int8_(wide_inputs)


@pytest.mark.parametrize("kernel", ["int_mm", "onednn"])
@pytest.mark.parametrize("per_token, act_bits", [(True, 8), (False, 8), (True, 4)])
def test_int8_dynamic_linears_compute_the_fake_quantized_layers(per_token, act_bits, kernel):
    """Dynamic inputs (per token / per tensor, the transformer recipe; 4-bit codes too) run on an int8
    GEMM (either kernel): a 3-D input, per-row scales applied after the int32 dot product, the
    zero-point term per row."""
    from nncompress.runtime.int8_torch import Int8DynamicLinear
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    nc.convert_(nc.quantize_(model, nc.DynamicQuant(per_token=per_token, act_bits=act_bits)))
    fast = copy.deepcopy(model)
    fast[0], fast[2] = (Int8DynamicLinear(model[i], str(i), kernel=kernel) for i in (0, 2))
    assert fast[0].kernel == kernel and fast[0].shift == (0 if kernel == "int_mm" else -2 ** (act_bits - 1))
    x = torch.randn(3, 7, 16)
    x[0, 0] *= 30  # one outlier token: per-token scales differ a lot between rows
    with torch.no_grad():
        y = model[0](x)
        torch.testing.assert_close(fast[0](x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=0, atol=1e-3 * float(expected.abs().max()))


def test_fused_dynamic_linears_stay_within_one_input_step():
    """to_int8_(exact=False): per-tensor dynamic Linears run fbgemm's fused kernel (torch's quantize_dynamic
    kernel) with our codes and per-channel scales; its own rounding may move an input code by one step,
    so every output stays within S_x sum_k |w_ck| of the fake-quantized layer; per-token layers stay exact."""
    from nncompress.runtime.int8_torch import FusedDynamicLinear, Int8DynamicLinear
    torch.manual_seed(0)
    per_tensor = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(48, 32), nn.GELU(), nn.Linear(32, 4)),
                                          nc.DynamicQuant(per_token=False)))
    per_token = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(48, 32)), nc.DynamicQuant(per_token=True)))
    try:
        fast = to_int8_(copy.deepcopy(per_tensor), exact=False)
    except UnsupportedModelError as error:
        pytest.skip(str(error))
    assert isinstance(fast[0], FusedDynamicLinear) and isinstance(fast[2], FusedDynamicLinear)
    assert isinstance(to_int8_(copy.deepcopy(per_token), exact=False)[0], Int8DynamicLinear)
    layer, moved = per_tensor[0], 0
    row_l1 = (layer.weight.detach().abs().sum(1))
    with torch.no_grad():
        for trial in range(50):
            x = torch.randn(5, 48) * (1 + trial) + trial / 10
            x[:, 0] *= 20
            y, got = layer(x), fast[0](x)
            step = float(layer.input_quantizer.qparams(x)[0])
            assert bool(((got - y).abs() <= step * row_l1 * 1.001 + 1e-6).all())
            moved += int(not torch.allclose(got, y, rtol=0, atol=1e-5 * float(y.abs().max())))
        torch.testing.assert_close(copy.deepcopy(fast)(x), fast(x))  # the prepacked weights survive a copy
        one = x[0]  # a 1-D input too (its own per-tensor range)
        assert bool(((fast[0](one) - layer(one)).abs() <= float(layer.input_quantizer.qparams(one)[0]) * row_l1 * 1.001
                     + 1e-6).all())
    assert moved <= 10  # mostly identical: the same grid, only rare rounding differences


def test_a_saturating_fused_kernel_is_refused():
    """The construction check compares the kernel exactly with fbgemm's own quantization on full-range
    inputs: a kernel that saturates pair sums in int16 (AVX2 without VNNI) at transformer width is refused."""
    from nncompress.runtime.int8_torch import FusedDynamicLinear

    class Saturating(FusedDynamicLinear):
        def forward(self, x):
            s_x, z_x = torch._choose_qparams_per_tensor(x, False)
            q_x = torch.quantize_per_tensor(x, s_x, z_x, torch.quint8).int_repr().float()
            pairs = (q_x.view(len(x), -1, 2).unsqueeze(1) * self.codes.view(1, len(self.codes), -1, 2)).sum(-1)
            acc = pairs.clamp(-32768, 32767).sum(-1) - z_x * self.codes.sum(1)
            return s_x * self.scale * acc + self.bias

    torch.manual_seed(0)
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(768, 16)), nc.DynamicQuant(per_token=False)))
    codes, scale = _weight_codes_of(model[0])
    Saturating.codes, Saturating.scale, Saturating.bias = codes.float(), scale.float(), model[0].bias.detach()
    with pytest.raises(UnsupportedModelError, match="layer '0': fbgemm's fused dynamic kernel is not exact"):
        Saturating(model[0], "0")


def _weight_codes_of(layer):
    from nncompress.runtime.layers import _weight_codes
    return _weight_codes(layer, "layer")


def test_save_model_refuses_int8_kernels(tmp_path):
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(8, 4)), nc.DynamicQuant(per_token=True)))
    fast = int8_copy(model)
    with pytest.raises(nc.UserError, match="layer '0' runs an int8 kernel.*save the converted model before"):
        nc.save_model(fast, tmp_path / "m.safetensors", recipe=[nc.DynamicQuant(per_token=True)])
    assert not (tmp_path / "m.safetensors").exists()


def test_unsigned_dynamic_codes_are_shifted_into_int8_and_bad_inputs_name_the_layer():
    """uint8 input codes (q in [0, 255]) reach the int8 GEMM as q - 128, the shift undone by the
    column-sum term, exactly; a non-finite input is a clear error naming the layer, as in the simulation."""
    from nncompress.quant.activation import DynamicQuantizer
    from nncompress.quant.primitives import IntSpec
    from nncompress.validate import UserError
    torch.manual_seed(0)
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(24, 8)), nc.DynamicQuant(per_token=True)))
    model[0].input_quantizer = DynamicQuantizer(IntSpec(bits=8, signed=False, symmetric=False), "token")
    from nncompress.runtime.int8_torch import Int8DynamicLinear
    fast = copy.deepcopy(model)
    fast[0] = Int8DynamicLinear(model[0], "0", kernel="int_mm")
    assert fast[0].shift == 128  # q_min 0: codes move down by 128
    x = torch.randn(6, 24) + 3  # all positive rows: the zero point sits at the bottom of the range
    x[1] *= 50
    with torch.no_grad():
        y = model(x)
        torch.testing.assert_close(fast(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
        x[2, 3] = float("nan")
        with pytest.raises(UserError, match="layer '0': its input contains non-finite values"):
            fast(x)


def test_the_faster_kernel_is_measured_per_weight():
    """Auto kernel choice: both candidates are timed on this machine; a bad name is a clear error."""
    from nncompress.runtime.int8_torch import DYNAMIC_KERNELS, Int8DynamicLinear
    from nncompress.validate import UserError
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(64, 64)), nc.DynamicQuant(per_token=True)))
    assert to_int8_(copy.deepcopy(model))[0].kernel in DYNAMIC_KERNELS
    with pytest.raises(UserError, match="kernel='fbgemm' must be 'auto' or one of"):
        Int8DynamicLinear(model[0], "0", kernel="fbgemm")
