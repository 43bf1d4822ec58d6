"""The XNOR + popcount kernel (runtime/xnor.py, _xnor.c): packing (sizes not divisible by 64),
bit-exact binary GEMM against the float reference on every ISA path this CPU has, convolutions with
zero padding, and an XNOR-Net / BNN model on the kernel against its simulation."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncompress.config import Context
from nncompress.quant.binary import BNN, XNORNet, sign_pm1
from nncompress.quant.convert import convert_
from nncompress.runtime import xnor

STATUS = xnor.kernel_status()
pytestmark = pytest.mark.skipif("library" not in STATUS,
                                reason=f"the XNOR kernel did not build: {STATUS.get('reason')}")
ISAS = {"avx512-vpopcntdq": ["avx512", "avx2", "scalar"], "avx2": ["avx2", "scalar"]}.get(STATUS.get("best_isa"), ["scalar"])


@pytest.mark.parametrize("k", [1, 7, 63, 64, 65, 127, 128, 200])
def test_packing_matches_the_reference_for_sizes_not_divisible_by_64(k):
    torch.manual_seed(k)
    x = torch.randn(5, k)
    x[0, 0] = 0.0  # sign(0) = +1
    packed = xnor.pack(x)
    assert packed.shape == (5, xnor.words_for(k))
    assert torch.equal(packed, xnor.pack_reference(x))
    tail = k % 64
    if tail:  # unused bits of the last word stay zero
        assert int(packed[:, -1].bitwise_right_shift(tail).bitwise_and((1 << (64 - tail)) - 1).abs().max()) == 0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (5, 7, 63), (4, 4, 64), (9, 13, 65), (33, 6, 511), (3, 70, 1000)])
def test_gemm_is_bit_exact_against_the_float_reference(isa, m, n, k, monkeypatch):
    monkeypatch.setenv("NNCOMPRESS_XNOR_ISA", isa)
    torch.manual_seed(m * 1000 + k)
    a, b = torch.randn(m, k), torch.randn(n, k)
    expected = (sign_pm1(a) @ sign_pm1(b).T).to(torch.int32)
    for threads in (1, 2, 3):
        assert torch.equal(xnor.xnor_gemm(xnor.pack(a), xnor.pack(b), k, threads), expected)


def test_gemm_checks_its_operands():
    with pytest.raises(ValueError, match="do not hold k=65"):
        xnor.xnor_gemm(xnor.pack(torch.randn(2, 64)), xnor.pack(torch.randn(2, 64)), 65)


def _binarized_convnet(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU(),
                        nn.Conv2d(16, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 2 * 2, 20), nn.ReLU(),
                        nn.Linear(20, 5))
    method.apply(net, Context())
    net.train()
    for _ in range(3):  # move the BatchNorms' running statistics away from the identity
        net(torch.randn(16, 1, 8, 8))
    return net.eval()


def test_conv_with_zero_padding_is_exact_on_the_kernel():
    net = _binarized_convnet(BNN(scaling="none"))  # unscaled: every layer output is an integer dot product
    x = torch.randn(4, 8, 8, 8)
    conv = net[2]
    expected = F.conv2d(sign_pm1(conv.input_quantizer.normalized(x)), conv.weight, conv.bias, stride=2, padding=1)
    twin = xnor.XnorConv2d(conv, sign_pm1(conv.weight), torch.ones(16), conv.bias, conv.input_quantizer)
    assert torch.equal(twin(x), expected)


@pytest.mark.parametrize("method", [XNORNet(), BNN()], ids=["xnor", "bnn"])
def test_binarized_model_runs_on_the_kernel_like_its_simulation(method):
    net = _binarized_convnet(method)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        simulated = net(x)
        convert_(net)  # stored 1-bit codes also work
        replaced = xnor.to_xnor_kernel_(net)
        on_kernel = net(x)
    assert replaced == (["2", "4", "7"] if isinstance(method, XNORNet) else ["2", "4", "7", "9"])
    assert isinstance(net[2], xnor.XnorConv2d) and isinstance(net[7], xnor.XnorLinear)
    assert torch.allclose(on_kernel, simulated, rtol=1e-4, atol=1e-4)
    assert torch.equal(on_kernel.argmax(1), simulated.argmax(1))


def test_xnor_net_lenet5_runs_on_the_kernel_like_its_simulation():
    """Issue 14's end-to-end check on the zoo's LeNet-5 (conv2 and fc1 on the kernel; conv1 and fc2
    stay float); the trained model's accuracy is in benchmarks/results/xnor_kernel.md."""
    from nncompress.zoo import build_model

    torch.manual_seed(0)
    net = build_model("lenet5", (1, 28, 28), 10)
    XNORNet().apply(net, Context())
    net.train()
    with torch.no_grad():
        for _ in range(3):  # BatchNorm running statistics away from the identity
            net(torch.rand(32, 1, 28, 28))
    net.eval()
    x = torch.rand(64, 1, 28, 28)
    with torch.no_grad():
        simulated = net(x)
        convert_(net)
        assert xnor.to_xnor_kernel_(net) == ["conv2", "fc1"]
        on_kernel = net(x)
    assert isinstance(net.conv2, xnor.XnorConv2d) and isinstance(net.fc1, xnor.XnorLinear)
    assert torch.allclose(on_kernel, simulated, rtol=1e-4, atol=1e-4)
    assert torch.equal(on_kernel.argmax(1), simulated.argmax(1))
