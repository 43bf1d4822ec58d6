"""MIRACLE (Havasi et al. 2019): the shared generator is pinned to the splitmix64 reference, the KL
is the closed form, minimal random coding picks samples distributed like the posterior, and the
file decodes bit for bit to the coded model in exactly blocks x C bits of indices."""
import hashlib
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import parse, serialize
from nncompress.encode.layout import NncFormatError
from nncompress.encode.model import decode_model, encode_model
from nncompress.parametrize import CompositionError, Encoded, find_transform, transforms
from nncompress.quant.minimal_random_code import (RandomCodeWeight, gaussian_kl, posterior_mean, posterior_sampling,
                                                  random_code_layers)
from nncompress.quant.random_code_generator import MAX_WIDTH, BlockLayout, keyed, standard_samples
from nncompress.validate import UserError
from reliability.reliability_util import assemble, split, tensor_entry

PINNED_DECODE = "f4ad052dccc19609ce89960cb59487c5e2934950637d7de2297f1ce5aac3b42c"


def test_generator_is_the_splitmix64_reference():
    # splitmix64 seeded with 0 (Steele et al. 2014; Vigna's reference C): 0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4
    out = keyed(0, np.array([0, 1], dtype=np.uint64))
    assert [int(x) for x in out] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


def test_samples_are_pinned_and_standardized():
    # pinned bit for bit: any change to the generator changes what every stored index decodes to
    first = standard_samples(12345, np.arange(4, dtype=np.uint64))
    assert first.dtype == np.float32
    assert first.view(np.uint32).tolist() == [3193294848, 1052669440, 3222129536, 1048298496]
    z = standard_samples(7, np.arange(1_000_000, dtype=np.uint64))
    assert abs(float(z.mean())) < 0.005 and abs(float(z.var()) - 1) < 0.005
    assert float(np.abs(z).max()) <= 6.0  # Irwin-Hall(12), standardized: |z| <= 6
    assert float(np.abs(z).max()) > 4.0  # but the tails reach past Irwin-Hall(4)'s 3.46


def test_a_coded_stage_decodes_to_pinned_bytes():
    """The whole decoder (layout, counters, draws, scaling) against a fixed stage: SHA-256 of the
    float32 bytes, so a change to the format's generator cannot pass unnoticed."""
    stage = Encoded("minimal_random_code", {"indices": torch.tensor([0, 5, 4095, 17, 1000]),
                                            "prior_std": torch.tensor(0.05)}, {"shape": [7, 9], "seed": 99, "bits": 12})
    value = RandomCodeWeight.decode(stage)
    assert value.dtype == torch.float32 and value.shape == (7, 9)
    assert hashlib.sha256(value.numpy().tobytes()).hexdigest() == PINNED_DECODE


def test_kl_is_the_closed_form():
    mu, sigma, prior = torch.tensor([0.3, -1.0, 0.0]), torch.tensor([0.5, 0.1, 2.0]), torch.tensor(1.5)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                 torch.distributions.Normal(torch.zeros(3), prior))
    assert torch.allclose(gaussian_kl(mu, sigma, prior), expected, atol=1e-6)
    # by hand, the first: log(1.5 / 0.5) + (0.25 + 0.09) / 4.5 - 0.5 = 1.098612 + 0.075556 - 0.5
    assert float(gaussian_kl(mu, sigma, prior)[0]) == pytest.approx(0.674168, abs=1e-5)


def test_layout_is_a_random_partition_into_near_equal_blocks():
    layout = BlockLayout.of(seed=3, numel=1000, blocks=7)
    assert sorted(layout.order.tolist()) == list(range(1000))
    assert layout.order.tolist() != list(range(1000))
    sizes = np.diff(layout.starts)
    assert sizes.sum() == 1000 and sizes.max() - sizes.min() <= 1 and layout.width == 143
    owner = layout.block_of()
    for b in range(7):
        assert set(np.flatnonzero(owner == b)) == set(layout.order[layout.starts[b]:layout.starts[b + 1]].tolist())


def coded_layer(mu: torch.Tensor, sigma: float, prior: float, blocks: int, bits: int) -> RandomCodeWeight:
    t = RandomCodeWeight(mu, init_sigma=1.0, seed=11)
    with torch.no_grad():
        t.log_sigma.fill_(math.log(sigma))
        t.log_prior_std.fill_(math.log(prior))
    t.set_blocks(blocks, bits)
    t.code(mu, np.arange(blocks), torch.Generator().manual_seed(0))
    return t


def test_minimal_random_coding_draws_from_the_posterior():
    # q = N(mu, 0.3^2) against p = N(0, 1): KL per weight = log(1/0.3) + (0.09 + mu^2)/2 - 0.5, about
    # 0.77 nats + mu^2 / 2; blocks of 4 weights hold about 3.5-5 bits, and 2^10 candidates are plenty,
    # so the picked samples are distributed about as q (paper thm 3.2): mean mu, spread 0.3.
    torch.manual_seed(0)
    mu = torch.rand(8000) - 0.5
    t = coded_layer(mu, 0.3, 1.0, blocks=2000, bits=10)
    error = t.coded_value - mu
    assert bool(t.coded.all()) and int(t.indices.min()) >= 0 and int(t.indices.max()) < 1024
    assert abs(float(error.mean())) < 0.02
    assert float(error.std()) == pytest.approx(0.3, abs=0.03)
    # with a single candidate there is no choice: the error is the prior's spread around mu instead
    blind = coded_layer(mu, 0.3, 1.0, blocks=2000, bits=1)
    assert float((blind.coded_value - mu).std()) > 0.6


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


def coded_model(bits: int = 8) -> nn.Module:
    model = small_model()
    nc.apply_(model, nc.MinimalRandomCode(total_bits=400, block_bits=bits, train_size=100, seed=5))
    for layer, t in random_code_layers(model).values():
        t.set_blocks(max(1, layer.weight.numel() // 10), bits)
        t.code(layer.parametrizations.weight.original, np.arange(t.blocks), torch.Generator().manual_seed(1))
    return model.eval()


def test_file_decodes_bit_for_bit_in_blocks_times_c_bits():
    model = coded_model(bits=8)
    nnc = encode_model(model, {"arch": "mlp"})
    data = serialize(nnc)
    stored = parse(data)
    for name in ("0.weight", "2.weight"):
        section = stored.storage[name][-1]["indices"]
        assert section["bytes"] == math.ceil(find_transform(model[int(name[0])], RandomCodeWeight).blocks * 8 / 8)
    fresh = decode_model(stored, small_model())
    for i in (0, 2):
        assert torch.equal(fresh[i].weight, model[i].weight)
        assert fresh[i].weight.dtype == torch.float32
    x = torch.randn(5, 20)
    assert torch.equal(fresh(x), model(x))


def test_a_model_before_coding_saves_its_weights_as_they_compute():
    model = small_model()
    nc.apply_(model, nc.MinimalRandomCode(total_bits=400, train_size=100))
    t = find_transform(model[0], RandomCodeWeight)
    t.set_blocks(10, 8)
    t.code(model[0].parametrizations.weight.original, np.arange(4), torch.Generator().manual_seed(0))  # 4 of 10
    fresh = decode_model(parse(serialize(encode_model(model.eval(), {"arch": "mlp"}))), small_model())
    assert torch.equal(fresh[0].weight, model[0].weight) and torch.equal(fresh[2].weight, model[2].weight)
    assert 0 < float(t.coded.float().mean()) < 1


def test_training_samples_only_within_posterior_sampling():
    fresh = small_model()
    nc.apply_(fresh, nc.MinimalRandomCode(total_bits=400, train_size=100))
    fresh.train()
    x = torch.randn(3, 20)
    assert torch.equal(fresh(x), fresh(x))  # no sampling outside the context: the posterior mean
    with posterior_sampling(fresh):
        assert not torch.equal(fresh(x), fresh(x))
        fresh.eval()
        assert torch.equal(fresh(x), fresh(x))  # evaluation never samples
    assert not any(t.sampling for _, t in random_code_layers(fresh).values())


@pytest.mark.parametrize("layer", [nn.Linear(6, 4), nn.Conv2d(2, 3, 3, padding=1, stride=2),
                                   nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2, padding_mode="reflect")],
                         ids=["linear", "conv", "conv-groups-dilation-reflect"])
def test_local_reparameterization_draws_each_output_from_its_distribution_under_q(layer):
    """Kingma et al. 2015 sec. 2.3: with local=True every output element is N(x * mu, x^2 * sigma^2)
    (* the layer's product), independently per example; coded weights add no variance; the weight
    itself is mu. Checked by Monte Carlo against the closed form, and against sampling the weights."""
    torch.manual_seed(0)
    model = nn.Sequential(layer)
    nc.apply_(model, nc.MinimalRandomCode(total_bits=400, train_size=100, init_sigma=0.5))
    t = random_code_layers(model)["0"][1]
    t.coded.view(-1)[:5] = True  # five weights coded: fixed at their coded value
    t.coded_value.view(-1)[:5] = 0.3
    x = torch.randn(1, 6) if isinstance(layer, nn.Linear) else torch.randn(1, 2, 5, 5)
    product = (lambda a, w, b=None: nn.functional.linear(a, w, b)) if isinstance(layer, nn.Linear) else \
        (lambda a, w, b=None: layer._conv_forward(a, w, b))
    with torch.no_grad():
        mu = torch.where(t.coded, t.coded_value, posterior_mean(layer))
        mean, var = product(x, mu, layer.bias), product(x.square(), t.variance())
    model.train()
    with torch.no_grad(), posterior_sampling(model, local=True):
        samples = model(x.expand(20_000, *x.shape[1:]))  # one forward: independent noise per example
        assert torch.equal(layer.weight, mu)
    with torch.no_grad(), posterior_sampling(model):
        weight_samples = torch.cat([model(x) for _ in range(4_000)])  # a fresh weight sample per call
    for drawn, n in ((samples, 20_000), (weight_samples, 4_000)):
        assert torch.allclose(drawn.mean(0), mean[0], atol=5 * float(var.max().sqrt()) / n ** 0.5)
        assert torch.allclose(drawn.var(0), var[0], rtol=0.1, atol=1e-6)
    assert not layer._forward_hooks and not t.local  # the context cleans up
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # outside it: the mean, no noise


def test_local_reparameterization_gradient_matches_the_closed_form_and_stays_finite():
    """d/d log sigma of E[sum y^2] = sum_n 2 x_n^2 sigma^2 (per weight): the hook's noise carries the
    gradient (a detached variance would give 0); rows of zeros (sqrt at 0) and bfloat16 autocast
    give finite gradients; an exception inside the context still removes the hooks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3))
    nc.apply_(model, nc.MinimalRandomCode(total_bits=100, train_size=100))
    t = random_code_layers(model)["0"][1]
    x = torch.randn(50_000, 5)
    model.train()
    with posterior_sampling(model, local=True):
        model(x).square().sum().backward()
    expected = 2 * x.square().sum(0)[None, :] * t.variance().detach()
    assert torch.allclose(t.log_sigma.grad, expected, rtol=0.05)
    t.log_sigma.grad = None
    with posterior_sampling(model, local=True), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.zeros(4, 5)).float().square().sum().backward()
    assert torch.isfinite(t.log_sigma.grad).all()
    with pytest.raises(RuntimeError), posterior_sampling(model, local=True):
        model(torch.zeros(2, 7))  # wrong width
    assert not model[0]._forward_hooks and not t.local and not t.sampling


def encoded(**changes) -> Encoded:
    meta = {"shape": [16, 20], "seed": 3, "bits": 8, "int_ranges": {"indices": [0, 255]}}
    tensors = {"indices": torch.arange(32) % 256, "prior_std": torch.tensor(0.1)}
    for key, value in changes.items():
        (tensors if key in tensors else meta)[key] = value
    return Encoded("minimal_random_code", tensors, meta)


@pytest.mark.parametrize("changes, message", [
    ({"bits": 0}, "bits=0"), ({"bits": 21}, "bits=21"), ({"bits": True}, "bits=True"),
    ({"seed": -1}, "seed=-1"), ({"shape": "16x20"}, "shape"),
    ({"shape": [MAX_WIDTH * 32 + 1]}, "cannot code"), ({"indices": torch.arange(321)}, "cannot code"),
    ({"indices": torch.full((32,), 256)}, "outside"), ({"indices": torch.full((32,), -1)}, "outside"),
    ({"indices": torch.zeros(32)}, "integers"), ({"indices": torch.zeros(32, dtype=torch.bool)}, "integers"),
    ({"indices": torch.tensor(3)}, "1-D"), ({"prior_std": torch.ones(2)}, "one float"),
    ({"prior_std": torch.tensor(1)}, "one float"), ({"prior_std": torch.tensor(-0.1)}, "positive"),
    ({"prior_std": torch.tensor(float("nan"))}, "positive"), ({"shape": [1 << 23]}, "MAX_CODED"),
])
def test_decode_refuses_hostile_meta(changes, message):
    with pytest.raises(ValueError, match=message):
        RandomCodeWeight.decode(encoded(**changes))


def test_decode_refuses_a_stage_without_its_arrays():
    stage = encoded()
    del stage.tensors["prior_std"]
    with pytest.raises(ValueError, match="lacks"):
        RandomCodeWeight.decode(stage)


def test_a_hostile_file_is_a_format_error_before_any_allocation():
    # a valid file whose first layer claims one weight more than its 32 indices can code (and the header's
    # declared shape agrees, so only the kind's own check can refuse it)
    header, blobs = split(serialize(encode_model(coded_model(), {"arch": "mlp"})))
    too_many = 32 * MAX_WIDTH + 1
    tensor_entry(header, "0.weight")["shape"] = [too_many]
    json_text = json.dumps(header).replace('"shape": [16, 20]', f'"shape": [{too_many}]')
    with pytest.raises(NncFormatError, match="cannot code"):
        decode_model(parse(assemble(json_text.encode(), blobs)), small_model())
    with pytest.raises(ValueError, match="cannot code"):  # the writer refuses such a chain too
        nnc = encode_model(coded_model(), {"arch": "mlp"})
        nnc.chains["0.weight"][-1].meta["shape"] = [too_many]
        serialize(nnc)


def test_sixteen_bit_blocks_pack_at_sixteen_bits_and_more_are_refused():
    model = small_model()
    nc.apply_(model, nc.MinimalRandomCode(total_bits=400, block_bits=16, train_size=100))
    t = find_transform(model[2], RandomCodeWeight)
    t.set_blocks(3, 16)
    t.code(model[2].parametrizations.weight.original, np.arange(3), torch.Generator().manual_seed(0))
    with pytest.raises(UserError, match="block bits"):
        find_transform(model[0], RandomCodeWeight).set_blocks(4, 17)
    nnc = encode_model(model.eval(), {"arch": "mlp"})
    nnc.chains.pop("0.weight")  # layer 0 is not coded
    assert parse(serialize(nnc)).storage["2.weight"][-1]["indices"]["bytes"] == 6
    with pytest.raises(UserError, match="block_bits"):
        nc.MinimalRandomCode(total_bits=400, block_bits=17)


def test_a_reloaded_model_writes_the_file_of_the_original_whatever_its_seed():
    model = coded_model()  # seed 5
    fresh = small_model()
    nc.apply_(fresh, nc.MinimalRandomCode(total_bits=400, block_bits=8, train_size=100, seed=0))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    decoded = decode_model(parse(serialize(encode_model(fresh, {"arch": "mlp"}))), small_model())
    assert torch.equal(decoded[0].weight, model[0].weight) and torch.equal(decoded[2].weight, model[2].weight)


def test_it_refuses_to_follow_a_pruning_mask():
    model = small_model()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.5))
    with pytest.raises(CompositionError, match="mask"):
        nc.apply_(model, nc.MinimalRandomCode(total_bits=400, train_size=100))
    assert all(type(t).__name__ != "RandomCodeWeight" for m in model for t in transforms(m))


def test_penalty_moves_each_beta_toward_its_goal():
    model = small_model()
    method = nc.MinimalRandomCode(total_bits=10_000_000, block_bits=4, beta_step=0.1, train_size=100)
    nc.apply_(model, method)
    penalty = method.regularizers(model)[0]
    model.train()
    penalty(model)  # KL far below a 10M-bit goal: every beta falls by exp(-0.1 x min(1, 1 - KL/goal))
    betas = [float(t.beta) for _, t in random_code_layers(model).values()]
    assert betas[0] == pytest.approx(math.exp(-0.1), rel=1e-3) and betas[0] == betas[1]
    model.eval()
    value = penalty(model)
    assert [float(t.beta) for _, t in random_code_layers(model).values()] == betas  # evaluation leaves beta
    layers = random_code_layers(model)
    kl = sum(float(t.kl_nats(layer.parametrizations.weight.original).detach().sum()) for layer, t in layers.values())
    assert float(value.detach()) == pytest.approx(betas[0] * kl / 100, rel=1e-5)
    for layer, t in layers.values():  # laid out: one beta per block, each toward C ln 2 = 2.77 nats
        t.set_blocks(4, 4)
    model.train()
    penalty(model)
    for layer, t in layers.values():
        block_kl = t.block_kl_nats(layer.parametrizations.weight.original).detach()
        ratio = (block_kl / (4 * math.log(2)) - 1).clamp(-1, 1)
        assert torch.allclose(t.beta, betas[0] * torch.exp(0.1 * ratio), rtol=1e-5)


def test_reload_adopts_the_block_count():
    model = coded_model()
    state = model.state_dict()
    fresh = small_model()
    nc.apply_(fresh, nc.MinimalRandomCode(total_bits=400, block_bits=8, train_size=100, seed=5))
    fresh.load_state_dict(state)
    assert find_transform(fresh[0], RandomCodeWeight).blocks == find_transform(model[0], RandomCodeWeight).blocks
