import json
import subprocess
import sys

from nncompress.api import load_model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nncompress.cli", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_json_and_weights_then_evaluate_and_inspect(tmp_path):
    weights, report = tmp_path / "m.safetensors", tmp_path / "r.json"
    done = run_cli("train", "lenet5", "--epochs", "3", "--optimizer", "adam", "--lr", "0.002", "--out", str(weights), "--json", str(report))
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert {"test_accuracy", "params", "macs", "epochs", "seconds"} <= result.keys()
    assert 0.9 < result["test_accuracy"] <= 1 and result["epochs"] == 3
    model, meta = load_model(weights)
    assert meta["arch"] == "lenet5" and sum(p.numel() for p in model.parameters()) == result["params"]

    done = run_cli("evaluate", str(weights), "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == result["test_accuracy"]

    done = run_cli("inspect", str(weights))
    assert done.returncode == 0 and "conv2" in done.stdout and "50x20x5x5" in done.stdout


def test_user_errors_are_one_clear_line():
    done = run_cli("train", "lenet", "--epochs", "1")
    assert done.returncode == 2
    assert "unknown model 'lenet'" in done.stderr and "Traceback" not in done.stderr


def test_help_lists_the_commands():
    done = run_cli("--help")
    assert done.returncode == 0 and all(c in done.stdout for c in ("train", "evaluate", "inspect", "demo"))
