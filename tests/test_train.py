import os
import subprocess
import sys

import pytest
import torch

from nncompress.train import History, TrainConfig, evaluate, fit
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
