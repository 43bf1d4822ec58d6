"""`nncompress binarize` (issue 14): clean errors, and one end-to-end run on digits."""
import json

import pytest
from test_cli import run_cli  # the `main` fixture comes from conftest.py


def test_binarize_rejects_unknown_methods_and_misplaced_flags(main):
    code, _, stderr = main("binarize", "lenet5", "--method", "xnr")
    assert code == 2 and "--method 'xnr' must be one of: bc, bnn, bwn, xnor, twn, ttq, lqnet" in stderr
    code, _, stderr = main("binarize", "lenet5", "--method", "twn", "--stochastic")
    assert code == 2 and "--stochastic applies to --method bc" in stderr
    code, _, stderr = main("binarize", "lenet5", "--method", "bwn", "--act-bits", "2")
    assert code == 2 and "apply to --method lqnet only" in stderr


@pytest.mark.slow
def test_binarize_cli_reports_accuracy_and_real_bytes(tmp_path):
    report, saved = tmp_path / "b.json", tmp_path / "bwn.safetensors"
    done = run_cli("binarize", "lenet5", "--method", "bwn", "--epochs", "1", "--out", str(saved), "--json", str(report))
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert r["method"]["method"] == "bwn" and r["converted_accuracy"] == r["test_accuracy"]
    assert r["file_bytes"] == saved.stat().st_size
    assert 25 < r["weight_saving"] < 32  # 1 bit per weight + one float32 alpha per filter
    assert r["test_accuracy"] > 0.8
