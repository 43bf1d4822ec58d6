"""DiffQ / NIPQ: pseudo-quantization noise, learned bit-widths, size penalty, NIPQ's stages."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.parametrize import transforms
from nncompress.quant.fake import FakeQuant
from nncompress.quant.mixed_precision import (NIPQ, DiffQ, candidate_pull, set_bits_, snap_to_candidates,
                                              to_real_quantization_)
from nncompress.quant.noise import (NoiseQuant, average_bits, bit_step_, noise_quantizers, pseudo_noise,
                                    pseudo_quantize, size_bits)
from nncompress.validate import UserError


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))  # N = 12 and 4 weights


def test_noise_variance_is_delta_squared_over_12():
    g = torch.Generator().manual_seed(0)
    step = torch.tensor(0.25)
    noise = pseudo_quantize(torch.zeros(400_000), step, generator=g)
    assert noise.abs().max() <= step / 2
    assert float(noise.var()) == pytest.approx(0.25**2 / 12, rel=0.01)


def test_noise_quant_uses_the_slide_delta_in_noise_mode():
    torch.manual_seed(1)
    w = torch.linspace(-1.5, 0.5, 20_000).reshape(200, 100)
    q = NoiseQuant(w, bits=3.0)
    q.noise = True
    delta = (0.5 - -1.5) / (2**3 - 1)  # (max - min) / (2^B - 1)
    err = (q(w) - w).detach()
    assert float(err.abs().max()) <= delta / 2 + 1e-6
    assert float(err.var()) == pytest.approx(delta**2 / 12, rel=0.03)
    q.eval()  # eval: real quantization at round(B) bits, at most 2^3 levels, exact encode / decode
    out = q(w).detach()
    assert len(torch.unique(out)) <= 8
    assert torch.equal(NoiseQuant.decode(q.encode(w)), out)


def test_bit_gradient_flows_through_the_noise():
    w = torch.randn(50, 50)
    q = NoiseQuant(w, bits=4.0)
    q.noise = True
    torch.manual_seed(0)
    (q(w) - w).square().sum().backward()  # more bits -> less noise: d/dB of the noise power < 0
    assert float(q.bits.grad) < 0


def test_size_penalty_value_and_gradient_by_hand():
    model = mlp()
    nc.apply_(model, DiffQ(size_weight=0.5, init_bits=6.0))
    set_bits_(model, {"0": 4, "2": 8})
    assert float(size_bits(model).detach()) == 4 * 12 + 8 * 4
    assert float(average_bits(model).detach()) == pytest.approx(80 / 16)
    (penalty,) = DiffQ(size_weight=0.5).regularizers(model)
    value = penalty(model)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.5 * 5.0)
    quant = noise_quantizers(model)
    assert float(quant["0"].bits.grad) == pytest.approx(0.5 * 12 / 16)  # lambda N_i / N
    assert float(quant["2"].bits.grad) == pytest.approx(0.5 * 4 / 16)


def test_nipq_target_penalty_is_a_hinge():
    model = mlp()
    nc.apply_(model, NIPQ(target_bits=4.5, candidates=(4, 8)))
    set_bits_(model, {"0": 4, "2": 8})  # average 5.0
    (penalty,) = NIPQ(target_bits=4.5, candidates=(4, 8), penalty=1.0).regularizers(model)
    value = penalty(model)
    value.backward()
    assert float(value.detach()) == pytest.approx(0.5)
    assert float(noise_quantizers(model)["0"].bits.grad) == pytest.approx(12 / 16)
    (below,) = NIPQ(target_bits=6.0, candidates=(4, 8)).regularizers(model)
    assert float(below(model).detach()) == 0.0


def test_bits_stay_in_range_during_training():
    model = mlp()
    method = DiffQ(size_weight=50.0, init_bits=7.0, min_bits=3, max_bits=8)
    nc.apply_(model, method)
    x, y = torch.randn(64, 3), torch.randn(64, 1)
    (penalty,) = method.regularizers(model)
    seen = []
    with pseudo_noise(model):
        for _ in range(10):  # plain SGD on the weights, then the bits' own step (as fit's on_step does)
            model.zero_grad()
            (nn.functional.mse_loss(model(x), y) + penalty(model)).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None and p.dim() > 0:
                        p -= 0.01 * p.grad
            bit_step_(model, 1.0)  # a huge bit learning rate: without the projection B would leave [3, 8]
            seen.extend(float(q.bits) for q in noise_quantizers(model).values())
    assert len(seen) == 20 and all(3 <= b <= 8 for b in seen)
    assert min(seen) == 3.0  # the penalty drove them to the bottom of the range and they stayed there


def test_stage2_snaps_to_the_candidates_under_the_target():
    counts = {"a": 100, "b": 300, "c": 100}
    assert snap_to_candidates({"a": 5.9, "b": 4.2, "c": 7.5}, counts, (4, 8), 5.0) == {"a": 4, "b": 4, "c": 8}
    # every layer wants 8 (average 8 > 5): lower the least-wanted first (b, then a), keep c
    assert snap_to_candidates({"a": 6.5, "b": 6.1, "c": 7.9}, counts, (4, 8), 5.0) == {"a": 4, "b": 4, "c": 8}
    # spare budget is spent: a fits back at 8 when the target allows 5.6
    assert snap_to_candidates({"a": 6.5, "b": 6.1, "c": 7.9}, counts, (4, 8), 5.6) == {"a": 8, "b": 4, "c": 8}


def test_candidate_pull_points_to_the_nearest_candidate():
    model = mlp()
    nc.apply_(model, NIPQ(target_bits=5.0, candidates=(4, 8)))
    set_bits_(model, {"0": 5.0, "2": 7.0})
    value = candidate_pull((4, 8), 1.0)(model)
    value.backward()
    assert float(value.detach()) == pytest.approx((12 * 1 + 4 * 1) / 16)
    quant = noise_quantizers(model)
    assert float(quant["0"].bits.grad) > 0 > float(quant["2"].bits.grad)  # 5 -> 4, 7 -> 8


def test_stage3_is_real_linear_quantization_that_converts():
    model = mlp()
    nc.apply_(model, NIPQ(target_bits=6.0, candidates=(4, 8)))
    to_real_quantization_(model, {"0": 4, "2": 8})
    kinds = [(type(t), t.spec.bits) for m in (model[0], model[2]) for t in transforms(m)]
    assert kinds == [(FakeQuant, 4), (FakeQuant, 8)]
    assert len(torch.unique(model[0].weight)) <= 15
    x = torch.randn(8, 3)
    before = model(x)
    nc.convert_(model)
    assert torch.equal(model(x), before)


def test_bad_fields_name_the_value_and_range():
    with pytest.raises(UserError, match=r"target_bits=3.0 must be in \[min\(candidates\), max_bits\] = \[4, 8\]"):
        NIPQ(target_bits=3.0, candidates=(4, 8))
    with pytest.raises(UserError, match=r"candidates\[\]=9 must be an integer in \[2, 8\]"):
        NIPQ(candidates=(4, 9))
    with pytest.raises(UserError, match=r"init_bits=9.0 must be a number in \[min_bits, max_bits\] = \[2, 8\]"):
        DiffQ(init_bits=9.0)


def run_cli(*args, cwd):
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nncompress.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.mark.slow
def test_cli_mixed_precision_and_fp8_train_on_digits(tmp_path):
    import json

    done = run_cli("train", "lenet5", "--epochs", "3", "--optimizer", "adam", "--lr", "0.002", "--out", "m.safetensors",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = run_cli("mixed-precision", "m.safetensors", "--target-bits", "5", "--candidates", "4,8", "--epochs", "1,0,1",
                   "--json", "mp.json", "--out", "q.safetensors", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "mp.json").read_text())
    assert set(report["bits"].values()) <= {4, 8} and report["average_bits"] <= 5.0
    assert report["accuracy"] > 0.9
    model, _ = nc.load_model(tmp_path / "q.safetensors")  # the recipe (LinearQuant with layer_bits) replays
    assert {n: t.spec.bits for n, m in model.named_modules() for t in transforms(m)} == report["bits"]
    done = run_cli("fp8-train", "lenet5", "--epochs", "2", "--json", "fp8.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fp8 = json.loads((tmp_path / "fp8.json").read_text())
    # 2 epochs on digits (about 72% in float32 for seed 0): FP8 must track float32 from the same start
    assert fp8["float32"]["accuracy"] > 0.6 and abs(fp8["difference"]) < 0.03
    bad = run_cli("mixed-precision", "m.safetensors", "--target-bits", "3", "--candidates", "4,8", cwd=tmp_path)
    assert bad.returncode == 2 and "target_bits=3.0 must be in" in bad.stdout + bad.stderr
