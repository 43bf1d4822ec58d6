import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nncompress import cli
from nncompress.api import load_model
from nncompress.validate import UserError


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run `nncompress ARGS` in a fresh process (one torch thread: the test machines share 2 cores)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nncompress.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)



@pytest.mark.slow
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
    assert done.stderr.count("\n") == 1  # one line, however long


def test_help_lists_the_commands(main):
    code, stdout, _ = main("--help")
    assert code == 0 and all(c in stdout for c in ("train", "evaluate", "inspect", "deep-compress", "decode", "demo"))


def test_help_in_a_pipe_shows_whole_option_names(main):
    """Without a terminal rich wraps at 80 columns and clipped long names (`--local-reparam…`)."""
    code, stdout, _ = main("miracle", "--help")
    assert code == 0 and "--local-reparameterization" in stdout and "--distill-temperature" in stdout
    assert "…" not in stdout


def test_only_user_errors_become_exit_code_2(monkeypatch, capsys):
    def raise_(err):
        def app():
            raise err
        return app

    monkeypatch.setattr(cli, "app", raise_(UserError("sparsity=2 is outside the allowed range [0, 1)")))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2 and "sparsity=2 is outside" in capsys.readouterr().err
    monkeypatch.setattr(cli, "app", raise_(FileNotFoundError("weights file 'x' does not exist")))
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    monkeypatch.setattr(cli, "app", raise_(ValueError("internal bug")))  # a bug keeps its traceback
    with pytest.raises(ValueError, match="internal bug"):
        cli.main()


def test_methods_lists_every_registered_method(main):
    code, stdout, _ = main("methods")
    assert code == 0
    assert all(f"{name} (" in stdout for name in ("magnitude", "linear", "kmeans", "format"))
    assert "weight_format" in stdout


@pytest.mark.slow
def test_quantize_with_a_number_format_saves_a_reloadable_model(tmp_path):
    weights, report = tmp_path / "q.safetensors", tmp_path / "q.json"
    done = run_cli("quantize", "lenet300", "--method", "format", "--set", "weight_format=fp8_e4m3",
                   "--set", "act_format=fp8_e4m3", "--out", str(weights), "--json", str(report))
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert r["method"]["weight_format"] == "fp8_e4m3" and r["method"]["act_format"] == "fp8_e4m3"
    assert abs(r["quantized_accuracy"] - r["float_accuracy"]) <= 0.005
    done = run_cli("evaluate", str(weights), "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == r["quantized_accuracy"]


@pytest.mark.parametrize("args,message", [
    (("--method", "format", "--weight-bits", "4"), "--weight-bits does not apply to --method format"),
    (("--method", "format", "--set", "weight_format=fp4"), "weight_format='fp4' is not one of"),
    (("--method", "magnitude"), "unknown method 'magnitude'"),
    (("--set", "weight_bit=4"), "has no field 'weight_bit'. Did you mean 'weight_bits'"),
    (("--set", "weight_bits"), "--set 'weight_bits' must look like FIELD=VALUE"),
])
def test_quantize_options_are_checked_against_the_method_fields(main, args, message):
    code, _, stderr = main("quantize", "lenet300", *args)
    assert code == 2 and message in stderr


def test_an_output_path_that_cannot_be_written_fails_before_any_work(tmp_path):
    """A folder, a file where a folder should be, or a folder that cannot be created: a UserError
    before training; a missing folder that can be created is."""
    from nncompress.cli.common import check_out_path

    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path, "is a folder"), (tmp_path / "file" / "m.nnc", "is a file, not a folder"),
                          (Path("/proc/nncompress-test/m.nnc"), "cannot create its folder")):
        with pytest.raises(UserError, match=message):
            check_out_path(path, "--out")
    check_out_path(tmp_path / "new" / "deeper" / "m.nnc", "--out")
    assert (tmp_path / "new" / "deeper").is_dir()
