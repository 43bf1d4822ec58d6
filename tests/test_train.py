import copy
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.train import History, TrainConfig, evaluate, fit, make_optimizer
from nncompress.zoo import build_model

FAST = TrainConfig(epochs=3, lr=0.05, weight_decay=1e-4)


def _train(digits, config=FAST, **kw):
    torch.manual_seed(1)
    model = build_model("lenet300", digits.in_shape, 10)
    history = fit(model, digits.train_loader(64, seed=config.seed), config, progress=False, log=lambda m: None, **kw)
    return model, history


def test_training_reaches_high_accuracy_on_digits(digits):
    model, history = _train(digits)
    assert history.train_loss[-1] < history.train_loss[0]
    assert evaluate(model, digits.test_loader())["accuracy"] > 0.93


def test_training_is_deterministic(digits):
    a, _ = _train(digits)
    b, _ = _train(digits)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_resume_after_interruption_gives_the_same_weights(digits, tmp_path):
    reference, _ = _train(digits)
    ckpt = tmp_path / "run.ckpt"

    def crash(epoch: int, history: History) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(digits, checkpoint=ckpt, on_epoch=crash)
    resumed, history = _train(digits, checkpoint=ckpt, resume=True)
    assert len(history.train_loss) == FAST.epochs
    for pa, pb in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_bad_checkpoint_is_a_clear_error(digits, tmp_path):
    ckpt = tmp_path / "other.ckpt"
    other = build_model("lenet5", digits.in_shape, 10)
    fit(other, digits.train_loader(), TrainConfig(epochs=1), checkpoint=ckpt, progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="cannot be resumed"):
        _train(digits, checkpoint=ckpt, resume=True)


@pytest.mark.parametrize("field,value,match", [("epochs", -1, "epochs=-1"), ("lr", 0.0, "lr=0.0"),
                                               ("optimizer", "adma", "Did you mean 'adam'")])
def test_bad_config(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_adam_and_step_schedule_train(digits):
    model, _ = _train(digits, TrainConfig(epochs=3, lr=2e-3, optimizer="adam", schedule="step"))
    assert evaluate(model, digits.test_loader())["accuracy"] > 0.9


def _cli_accuracy(tmp_path, launcher: list[str], name: str) -> float:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launcher, "-m", "nncompress.cli", "train", "lenet300", "--dataset", "digits", "--epochs", "4",
                    "--json", str(out)], check=True, env=env, capture_output=True, timeout=300)
    import json
    return json.loads(out.read_text())["test_accuracy"]


def test_ddp_two_processes_match_one_process(tmp_path):
    single = _cli_accuracy(tmp_path, [sys.executable], "single")
    ddp = _cli_accuracy(tmp_path, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                   "--nproc_per_node=2"], "ddp")
    assert single > 0.93 and ddp > 0.93
    assert abs(single - ddp) < 0.03  # same global batch; only the reduction order differs


# --- batches of any shape, loss_fn, regularizers ---------------------------------------------------

QUIET = {"progress": False, "log": lambda m: None}


class Halves(nn.Module):
    """lenet300 fed as two inputs (the image's two halves) or by keyword."""

    def __init__(self, in_shape):
        super().__init__()
        self.net = build_model("lenet300", in_shape, 10)

    def forward(self, left=None, right=None, pixels=None):
        if pixels is None:
            pixels = left if right is None else torch.cat([left, right], dim=-1)
        return self.net(pixels)


def _train_as(digits, shape: str, **kw):
    """Train the same model on the same batches, presented in another shape."""
    rows = digits.in_shape[-1] // 2
    present = {
        "tuple": lambda x, y: (x, y),
        "dict": lambda x, y: {"pixels": x, "labels": y},
        "two inputs": lambda x, y: ((x[..., :rows], x[..., rows:]), y),
        "forward_fn": lambda x, y: {"image": x, "label": y},
    }[shape]
    torch.manual_seed(1)
    model = Halves(digits.in_shape)
    batches = [present(x, y) for x, y in digits.train_loader(64)]
    fit(model, batches, FAST, **QUIET, **kw)
    return model, [present(x, y) for x, y in digits.test_loader()]


@pytest.mark.parametrize("shape", ["dict", "two inputs", "forward_fn"])
def test_dict_tuple_of_inputs_and_forward_fn_batches_train_exactly_like_x_y(digits, shape):
    reference, _ = _train_as(digits, "tuple")
    fn = (lambda m, b: m(pixels=b["image"])) if shape == "forward_fn" else None
    model, test = _train_as(digits, shape, forward_fn=fn)
    for pa, pb in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(pa, pb)  # same batches, same order, same seed: the same weights
    assert evaluate(model, test, forward_fn=fn)["accuracy"] > 0.93


def test_loss_fn_fits_a_regression_and_evaluate_reports_its_loss_without_accuracy():
    x = torch.linspace(-1, 1, 64).unsqueeze(1)
    batches = [(x[i:i + 16], 3 * x[i:i + 16] + 1) for i in range(0, 64, 16)]
    model = nn.Linear(1, 1)
    mse = nn.functional.mse_loss
    fit(model, batches, TrainConfig(epochs=200, lr=0.1, weight_decay=0.0, schedule="constant"), loss_fn=mse, **QUIET)
    assert model.weight.item() == pytest.approx(3.0, abs=1e-3) and model.bias.item() == pytest.approx(1.0, abs=1e-3)
    result = evaluate(model, batches, loss_fn=mse)
    assert result.keys() == {"loss"} and result["loss"] < 1e-6


def test_the_default_loss_without_targets_is_a_clear_error():
    with pytest.raises(ValueError, match="needs integer class targets.*loss_fn="):
        fit(nn.Linear(2, 3), [torch.randn(4, 2)], TrainConfig(epochs=1), **QUIET)


def test_token_logits_are_scored_per_token_and_minus_100_is_ignored():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])  # (B=1, T=3, C=2): predicts 0, 1, 0
    labels = torch.tensor([[0, 0, -100]])  # right, wrong, ignored
    result = evaluate(nn.Identity(), [{"x": logits, "labels": labels}], forward_fn=lambda m, b: {"logits": b["x"]})
    assert result["accuracy"] == 0.5
    expected = nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    assert result["loss"] == pytest.approx(float(expected))


def test_a_regularizer_changes_the_trained_weights(digits):
    plain, _ = _train(digits)
    l2 = lambda m: 10.0 * m.fc3.weight.pow(2).sum()  # noqa: E731
    regularized, history = _train(digits, regularizers=[l2])
    norm = lambda m, layer: getattr(m, layer).weight.norm().item()  # noqa: E731
    assert norm(regularized, "fc3") < 0.1 * norm(plain, "fc3")  # the penalty drives fc3 towards 0
    assert norm(regularized, "fc1") == pytest.approx(norm(plain, "fc1"), rel=0.1)  # other layers barely move
    assert history.train_loss[-1] > 0  # the data loss alone is recorded
    assert len(history.train_objective) == len(history.train_loss)  # and the objective beside it
    assert all(o > d for o, d in zip(history.train_objective, history.train_loss))


def test_a_resumed_regularized_run_keeps_one_objective_per_epoch(tmp_path):
    """A checkpoint written without regularizers (or before train_objective existed) resumed with
    them: the earlier epochs get NaN, so train_objective[i] is still epoch i's."""
    data = [(torch.randn(8, 2), torch.tensor([0, 1] * 4))]
    ckpt, model = tmp_path / "fit.pt", nn.Linear(2, 2)
    fit(model, data, TrainConfig(epochs=1), checkpoint=ckpt, progress=False, log=lambda _m: None)
    history = fit(model, data, TrainConfig(epochs=3), checkpoint=ckpt, resume=True, progress=False,
                  log=lambda _m: None, regularizers=[lambda m: m.weight.abs().sum()])
    assert len(history.train_loss) == len(history.train_objective) == 3
    assert math.isnan(history.train_objective[0]) and not any(map(math.isnan, history.train_objective[1:]))


def test_the_epoch_line_shows_the_objective_only_with_regularizers():
    data = [(torch.randn(8, 2), torch.tensor([0, 1] * 4))]
    lines = []
    fit(nn.Linear(2, 2), data, TrainConfig(epochs=1), progress=False, log=lines.append)
    history = fit(nn.Linear(2, 2), data, TrainConfig(epochs=1), progress=False, log=lines.append,
                  regularizers=[lambda m: m.weight.abs().sum()])
    assert "regularizers" not in lines[0]
    loss, terms = (float(lines[1].split(word)[1].split()[0]) for word in ("train loss", "+ regularizers"))
    assert (loss, terms) == (pytest.approx(history.train_loss[0], abs=1e-4),
                             pytest.approx(history.train_objective[0] - history.train_loss[0], abs=2e-4))
    assert terms > 0


def test_methods_contribute_no_regularizer_by_default_and_a_bad_one_is_a_clear_error():
    assert nc.MagnitudePrune(sparsity=0.5).regularizers(nn.Linear(2, 2)) == []
    with pytest.raises(ValueError, match="regularizer '<lambda>' returned float"):
        fit(nn.Linear(2, 3), [(torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))], TrainConfig(epochs=1),
            regularizers=[lambda m: 0.5], **QUIET)


class _Scaled(nn.Module):
    """A module that asks for its own learning rates (as soft weight-sharing's mixture prior does)."""

    lr_scales = {"fast": 6.0, "slow": 0.2}
    no_weight_decay = ("slow",)

    def __init__(self):
        super().__init__()
        self.fast, self.slow, self.plain = (nn.Parameter(torch.zeros(2)) for _ in range(3))


def test_a_module_declares_learning_rate_factors_and_decay_exemptions_and_a_copy_keeps_them():
    net = nn.Sequential(nn.Linear(2, 2), _Scaled())
    for model in (net, copy.deepcopy(net)):
        opt, sched = make_optimizer(model, TrainConfig(lr=0.5, optimizer="adam", weight_decay=1e-3))
        lrs = {id(p): (group["lr"], group["weight_decay"]) for group in opt.param_groups for p in group["params"]}
        assert [lrs[id(p)] for p in model.parameters()] == [(0.5, 1e-3), (0.5, 1e-3), (3.0, 1e-3), (0.1, 0.0), (0.5, 1e-3)]
        opt.step()  # no gradients: nothing moves
        sched.step()  # the cosine schedule scales every group alike
        ratios = sorted({round(g["lr"] / g["initial_lr"], 12) for g in opt.param_groups})
        assert len(opt.param_groups) == 3 and len(ratios) == 1 and ratios[0] < 1


def test_without_declared_factors_the_optimizer_has_one_group_in_parameter_order():
    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    opt, _ = make_optimizer(net, TrainConfig(lr=0.1))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"] == list(net.parameters())
