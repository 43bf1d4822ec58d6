"""The QAT flow: STE = PTQ grids, convert_ exactness, the integer engine, exact checkpoint resume,
oscillation counting / freezing / dampening."""

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.flows.qat import engine_accuracy, make_method, qat_finetune, qat_model
from nncompress.parametrize import transforms
from nncompress.quant.lsq import LSQ
from nncompress.quant.oscillation import OscillationTracker, dampening_loss, oscillations
from nncompress.quant.pact import PACT
from nncompress.quant.qat import STEQuant
from nncompress.runtime.engine import IntegerEngine
from nncompress.train import TrainConfig
from nncompress.zoo import Dataset


def convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))


def tiny_dataset(n: int = 96) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + 32, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].sum((1, 2)) > 0).long() + (x[:, 0, 3:].sum((1, 2)) > 1).long()
    return Dataset("tiny", x[:n], y[:n], x[n:], y[n:], num_classes=3)


def train_steps(model, data, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for x, y in list(data.train_loader(16))[:steps]:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_ste_method_starts_as_the_ptq_model_with_the_same_bits():
    data = tiny_dataset()
    calib = list(data.train_loader(32))[:3]
    ptq, ste = convnet(), convnet()
    nc.apply_(ptq, nc.LinearQuant(weight_bits=4, act_bits=4), data=calib)
    nc.apply_(ste, STEQuant(weight_bits=4, act_bits=4), data=calib)
    assert torch.equal(ptq.eval()(data.test_x), ste.eval()(data.test_x))


@pytest.mark.parametrize("method", [LSQ(weight_bits=3, act_bits=3), PACT(weight_bits=4, act_bits=3),
                                    STEQuant(weight_bits=2, act_bits=4)], ids=lambda m: m.name)
def test_convert_after_training_reproduces_the_fake_quantized_outputs_and_the_engine_runs_it(method):
    data = tiny_dataset()
    model = convnet()
    nc.apply_(model, method, data=list(data.train_loader(32))[:2])
    train_steps(model, data)
    model.eval()
    before = model(data.test_x)
    nc.convert_(model)
    assert torch.equal(model(data.test_x), before)
    engine = IntegerEngine.from_model(model, data.test_x[:2])
    got = engine(data.test_x)
    assert (got.argmax(1) == before.argmax(1)).float().mean() >= 0.9
    assert float((got - before).abs().max()) <= 0.25 * float(before.abs().max())


def test_lsq_integer_engine_matches_the_model_closely():
    data = tiny_dataset()
    model = convnet()
    nc.apply_(model, LSQ(weight_bits=8, act_bits=8), data=list(data.train_loader(32))[:2])
    train_steps(model, data)
    nc.convert_(model.eval())
    report = engine_accuracy(model, data)
    assert report["engine_accuracy"] == nc.evaluate(model, data.test_loader())["accuracy"]
    assert report.get("onnx_accuracy", report["engine_accuracy"]) == report["engine_accuracy"]


def _qat_run(tmp_path, epochs, interrupt_after=None, resume=False):
    data = tiny_dataset()
    model = convnet()
    method = LSQ(weight_bits=2, act_bits=3)
    nc.apply_(model, method, data=list(data.train_loader(32))[:2])
    config = TrainConfig(epochs=epochs, lr=0.05, seed=3)
    steps_per_epoch = len(data.train_loader(64))
    original_call = OscillationTracker.__call__

    def call(self, step=0):
        original_call(self, step)
        if interrupt_after is not None and step == interrupt_after * steps_per_epoch + 1:
            raise KeyboardInterrupt  # killed early in the next epoch: only whole epochs are checkpointed

    OscillationTracker.__call__ = call
    try:
        figures, tracker = qat_finetune(model, method, data, config, freeze_threshold=0.2,
                                        checkpoint=str(tmp_path / "qat.pt"), resume=resume, progress=False)
    finally:
        OscillationTracker.__call__ = original_call
    return model, figures, tracker


def test_checkpoint_resume_is_bit_for_bit_the_uninterrupted_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight, figures, tracker = _qat_run(tmp_path / "a", 4)
    with pytest.raises(KeyboardInterrupt):
        _qat_run(tmp_path / "b", 4, interrupt_after=2)
    resumed, figures_b, tracker_b = _qat_run(tmp_path / "b", 4, resume=True)
    state_a, state_b = straight.state_dict(), resumed.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert figures["train_loss"] == figures_b["train_loss"] and len(figures["train_loss"]) == 4
    assert tracker.history == tracker_b.history


def test_oscillation_counter_on_a_hand_example():
    # codes of one weight over steps: 0 1 0 1 1 2 1 -> changes +1 -1 +1 0 +1 -1: oscillations at the
    # 2nd, 3rd and 6th change (against the previous direction), not at the 5th (same direction)
    sequence = [0, 1, 0, 1, 1, 2, 1]
    direction, flips = torch.zeros(1), []
    for before, after in zip(sequence, sequence[1:]):
        osc, direction = oscillations(direction, torch.tensor([float(after - before)]))
        flips.append(bool(osc))
    assert flips == [False, True, True, False, False, True]


def test_tracker_counts_per_epoch_and_freezes_oscillating_weights():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.3, -0.2]]))
    model = nn.Sequential(layer)
    nc.apply_(model, LSQ(weight_bits=4, act_bits=None, granularity="tensor"))
    quant = transforms(layer)[0]
    with torch.no_grad():
        quant.step.fill_(0.1)
    tracker = OscillationTracker(model, momentum=0.5, freeze_threshold=0.8)
    w = layer.parametrizations.weight.original
    for value in (0.36, 0.34, 0.36, 0.34):  # first weight: codes 3 -> 4 -> 3 -> 4 -> 3; second stays -2
        with torch.no_grad():
            w[0, 0] = value
        tracker()
    row = tracker.end_epoch()
    assert row["flips"] == 3 and row["oscillating_fraction"] == 0.5
    # frequency after flips at steps 2, 3, 4 with m = 0.5: 0.5, 0.75, 0.875 > 0.8 -> frozen at the
    # rounded EMA of its codes: 3 -> 3.5 -> 3.25 -> 3.625 -> 3.3125 -> 3
    assert quant.frozen.tolist() == [[True, False]] and row["frozen_fraction"] == 0.5
    frozen_code = int(quant.frozen_codes[0, 0])
    assert frozen_code == 3
    with torch.no_grad():
        w[0, 0] = 0.9  # the latent weight moves on; the frozen code stays
    assert float(layer.weight[0, 0]) == pytest.approx(frozen_code * 0.1)
    layer.weight.sum().backward()
    assert w.grad.tolist() == [[0.0, 1.0]]
    assert tracker.end_epoch()["flips"] == 0  # counts restart each epoch


def test_dampening_loss_hand_value():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.34, 5.0]]))
    model = nn.Sequential(layer)
    nc.apply_(model, LSQ(weight_bits=3, act_bits=None, granularity="tensor"))
    with torch.no_grad():
        transforms(layer)[0].step.fill_(0.2)
    # grid points 0.4 and 0.6 (code clipped at Q_P = 3); clip(w, -0.8, 0.6) = 0.34 and 0.6
    assert float(dampening_loss(2.0)(model)) == pytest.approx(2.0 * 0.06**2, rel=1e-4)


def test_make_method_keeps_first_and_last_layers_at_8_bits():
    method = make_method("lsq", 2, 2, model=convnet())
    assert method.layer_bits == {"0": 8, "8": 8} and isinstance(method, LSQ)
    with pytest.raises(nc.UserError, match="method"):
        make_method("dorefa", 2, 2)


@pytest.mark.slow
def test_qat_flow_on_digits_beats_ptq_at_2_bits_and_converts_exactly():
    from nncompress.flows.ptq import calibration_batches, quantize_copy
    from nncompress.flows.qat import ptq_twin
    from nncompress.zoo import build_model, load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("lenet5", data.in_shape, data.num_classes)
    nc.fit(model, data.train_loader(64), TrainConfig(epochs=6, lr=0.02), progress=False, log=lambda _m: None)
    method = make_method("lsq", 2, 2, model=model)
    ptq = nc.evaluate(quantize_copy(model.eval(), ptq_twin(method), calibration_batches(data)), data.test_loader())
    _, converted, report = qat_model("lenet5", data, method, epochs=3, float_model=model, progress=False)
    assert report["converted_exact"] and report["converted_accuracy"] == report["qat_accuracy"]
    assert report["qat_accuracy"] > ptq["accuracy"] + 0.02
    assert abs(report["engine_accuracy"] - report["qat_accuracy"]) <= 0.01
    assert len(report["oscillation"]) == 3


class Block(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return torch.relu(self.conv(x) + self.shortcut(x))


def test_precision_highway_quantizes_skip_paths_at_their_own_bits():
    from nncompress.quant.highway import highway_layer_bits, quantize_skips_, skip_bits_report
    from nncompress.runtime.qvalue import UnsupportedModelError

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), Block(4, 4), Block(4, 8), nn.Flatten(),
                          nn.Linear(8 * 36, 3))
    assert highway_layer_bits(model, 8) == {"3.shortcut": 8}
    data = list(tiny_dataset().train_loader(32))[:2]
    method = make_method("lsq", 2, 2, model=model, skip_bits=8)
    assert method.layer_bits == {"0": 8, "5": 8, "3.shortcut": 8}
    nc.apply_(model, method, data=data)
    assert quantize_skips_(model, 8, data) == ["2.shortcut"]
    assert skip_bits_report(model) == {"2.shortcut": 8, "3.shortcut": 8}
    assert model[3].conv.input_quantizer.spec.bits == 2
    x = data[0][0]
    skip = model[2].shortcut.input_quantizer
    block_in = model[1](model[0](x))
    out = skip(block_in).detach()
    codes = torch.round(out / skip.step.detach())
    assert torch.equal(out, codes * skip.step.detach()) and float(codes.max()) <= 255 and float(codes.min()) >= 0
    assert len(torch.unique(codes)) > 4  # finer than the 2-bit convolution inputs
    low = make_method("lsq", 2, 2, model=model, skip_bits=2)
    assert "3.shortcut" not in low.layer_bits or low.layer_bits["3.shortcut"] == 2
    nc.convert_(model.eval())
    with pytest.raises(UnsupportedModelError):  # the engine carries skips on the next layer's grid
        IntegerEngine.from_model(model, x[:2])
    with pytest.raises(nc.UserError, match="skip path"):
        quantize_skips_(convnet(), 8, data)


def test_cli_rejects_bad_bits_with_a_clear_message():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nncompress.cli", "qat", "lenet5", "--weight-bits", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--weight-bits" in done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-m", "nncompress.cli", "qat", "lenet5", "--batchnorm", "freeze"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--batchnorm" in done.stdout + done.stderr and "'train'" in done.stdout + done.stderr


@pytest.mark.slow
def test_cli_qat_on_digits_writes_the_figures(tmp_path):
    import json
    import subprocess
    import sys

    report = tmp_path / "qat.json"
    done = subprocess.run([sys.executable, "-m", "nncompress.cli", "qat", "lenet5", "--dataset", "digits", "--method",
                           "pact", "--weight-bits", "4", "--act-bits", "4", "--epochs", "1", "--json", str(report)],
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert r["converted_exact"] and r["method"]["method"] == "pact" and len(r["oscillation"]) == 1
    assert r["qat_accuracy"] >= r["float_accuracy"] - 0.03 and "ONNX Runtime" in done.stdout


def test_qat_finetune_distils_the_teacher_on_every_step():
    """With a teacher and DistillConfig, every training step also runs the teacher and the loss is
    the distillation loss (the same seed without it gives other losses); alpha 0 means no teacher."""
    from nncompress.flows.distill import DistillConfig

    class Counting(nn.Module):  # counts on the class: Distillation runs a frozen deep copy
        calls = 0

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            type(self).calls += 1
            return self.net(x)

    data = tiny_dataset()
    teacher = Counting(convnet())
    runs = {}
    for alpha in (0.0, 0.7):
        model = convnet()
        method = LSQ(weight_bits=4, act_bits=4)
        nc.quantize_(model, method, data=[data.train_x[:32]])
        config = TrainConfig(epochs=2, lr=0.01, seed=0)
        runs[alpha], _ = qat_finetune(model, method, data, config, batch_size=16, teacher=teacher,
                                      distill=DistillConfig(alpha, 2.0))
        if alpha == 0.0:
            assert Counting.calls == 0
    assert Counting.calls == 2 * len(data.train_loader(16))
    assert runs[0.7]["train_loss"] != runs[0.0]["train_loss"]


def test_batchnorm_trained_live_is_folded_after_qat_and_runs_in_the_engine():
    """batchnorm="train": BatchNorm keeps batch statistics during QAT, then folds into the learned
    per-channel grids (quant/fold_trained.py); the result converts exactly and the engine runs it."""
    from nncompress.zoo import load_dataset

    data = load_dataset("digits")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(16 * 16, 10))
    nc.fit(model, data.train_loader(64), TrainConfig(epochs=3, lr=0.05), progress=False, log=lambda _m: None)
    method = make_method("lsq", 2, 2, model=model)
    _, converted, report = qat_model("bn-net", data, method, epochs=2, float_model=model, progress=False,
                                     batchnorm="train")
    assert report["batchnorm_fold"] == {"layers": ["0", "3"], "clamped_codes": 0}
    assert isinstance(converted[1], nn.Identity) and isinstance(converted[4], nn.Identity)
    assert report["phases"] == ["qat, BatchNorm live", "qat, BatchNorm folded"] and report["epochs"] == 2
    assert abs(report["folded_accuracy"] - report["live_accuracy"]) <= 0.01
    assert report["converted_exact"] and report["converted_accuracy"] == report["qat_accuracy"] > 0.8
    assert abs(report["engine_accuracy"] - report["converted_accuracy"]) <= 0.01
    with pytest.raises(nc.UserError, match="batchnorm"):
        qat_model("bn-net", data, method, float_model=model, batchnorm="freeze")


def test_batchnorm_auto_trains_it_live_for_2_bit_lsq_only():
    from nncompress.flows.qat import resolve_batchnorm

    model = convnet()
    assert resolve_batchnorm(make_method("lsq", 2, 2, model=model), "auto") == "train"
    assert resolve_batchnorm(make_method("lsq", 4, 2, model=model), "auto") == "train"
    assert resolve_batchnorm(make_method("lsq", 3, 3, model=model), "auto") == "fold"
    assert resolve_batchnorm(make_method("lsq", 2, 2, model=model, granularity="tensor"), "auto") == "fold"
    assert resolve_batchnorm(make_method("pact", 2, 2, model=model), "auto") == "fold"
    assert resolve_batchnorm(make_method("lsq", 4, 4, model=model), "train") == "train"


def test_cli_batchnorm_note_says_what_happened_and_warns_on_clamped_codes():
    from nncompress.cli.qat import batchnorm_note

    assert "none to keep live" in batchnorm_note({"batchnorm": "fold", "folded_batchnorm": []}, "train")
    assert "folded before QAT (2 layers)" in batchnorm_note({"batchnorm": "fold", "folded_batchnorm": ["a", "b"]}, "auto")
    report = {"batchnorm": "train", "phases": ["qat, BatchNorm live", "qat, BatchNorm folded"],
              "batchnorm_fold": {"layers": ["a"], "clamped_codes": 3}}
    note = batchnorm_note(report, "auto")
    assert "trained live" in note and "BatchNorm folded" in note and "warning: 3 weight codes" in note
