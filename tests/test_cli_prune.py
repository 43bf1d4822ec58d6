import json

import pytest
from test_cli import run_cli  # the `main` fixture comes from conftest.py

LENET300_WEIGHTS = {"fc1": 64 * 300, "fc2": 300 * 100, "fc3": 100 * 10}


@pytest.mark.slow
def test_prune_cli_reports_the_promised_fields(tmp_path):
    report = tmp_path / "p.json"
    done = run_cli("prune", "lenet300", "--sparsity", "0.9", "--scope", "global", "--rounds", "2",
                   "--finetune-epochs", "2", "--json", str(report))
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert {"dense_accuracy", "pruned_accuracy", "nonzero_weights", "total_weights", "compression", "densities"} <= r.keys()
    assert r["total_weights"] == 64 * 300 + 300 * 100 + 100 * 10
    assert abs(r["nonzero_weights"] - 0.1 * r["total_weights"]) <= 1
    assert abs(r["compression"] - 10) < 0.01 and r["pruned_accuracy"] > 0.85


def test_prune_cli_rejects_bad_sparsity(main):
    code, _, stderr = main("prune", "lenet300", "--sparsity", "1.5")
    assert code == 2 and "sparsity=1.5 is outside the allowed range" in stderr


@pytest.mark.slow
def test_sensitivity_cli_writes_plot(tmp_path):
    done = run_cli("sensitivity", "lenet300", "--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["sparsities"][0] == 0 and r["sparsities"][-1] == 0.95 and list(r["accuracy"]) == ["fc1", "fc2", "fc3"]
    assert all(curve[0] == r["baseline"] for curve in r["accuracy"].values())  # 0% pruned = the dense model
    drop = {name: r["baseline"] - sum(curve) / len(curve) for name, curve in r["accuracy"].items()}
    assert r["most_sensitive"] == max(drop, key=drop.get) and drop[r["most_sensitive"]] > 0
    assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.slow
def test_global_scope_keeps_layer_sparsity_overrides(tmp_path):
    report = tmp_path / "p.json"
    done = run_cli("prune", "lenet300", "--set", "sparsity=0.8", "--scope", "global", "--layer-sparsity", "fc3=0.5",
                   "--schedule", "oneshot", "--finetune-epochs", "0", "--json", str(report))
    assert done.returncode == 0, done.stderr
    r = json.loads(report.read_text())
    assert r["densities"]["fc3"] == 0.5  # its own target, not the global threshold
    shared = LENET300_WEIGHTS["fc1"] + LENET300_WEIGHTS["fc2"]
    assert r["nonzero_weights"] == shared - round(0.8 * shared) + 500  # 80% of fc1 + fc2 pooled, plus fc3


@pytest.mark.parametrize("args,message", [
    (("--scope", "global", "--layer-sparsity", "fc_3=0.5"),
     "layer_sparsity key 'fc_3' matches none of the targeted layers. Did you mean 'fc3'"),
    (("--layer-sparsity", "fc1=0.5", "--exclude", "fc1"), "'fc1' matches none of the targeted layers"),
    (("--layer-sparsity", "fc1=lots"), "--layer-sparsity fc1='lots': the value must be a fraction in [0, 1)"),
    (("--method", "threshold", "--sparsity", "0.5"), "--sparsity does not apply to --method threshold"),
    (("--method", "threshold",), "--schedule iterative re-applies the method at rising sparsity"),
    (("--method", "kmeans",), "unknown method 'kmeans'"),
    (("--set", "sparsty=0.5"), "has no field 'sparsty'. Did you mean 'sparsity'"),
])
def test_prune_cli_user_errors_name_the_option_before_training(main, args, message):
    code, stdout, stderr = main("prune", "lenet300", *args)
    assert code == 2 and message in stderr, stderr
    assert "epoch" not in stdout + stderr  # refused before the dense model is trained


def test_prune_cli_counts_are_checked_by_the_parser(main):
    code, _, stderr = main("prune", "lenet300", "--rounds", "0")
    assert code == 2 and "Invalid value for '--rounds'" in stderr


def test_set_reads_scientific_notation_as_a_number():
    from nncompress.cli.common import parse_sets

    assert parse_sets(["lam=1e-3", "theta=2E+1", "norm=l1", "x=0.5", "name=1e-3x"]) == {
        "lam": 1e-3, "theta": 20.0, "norm": "l1", "x": 0.5, "name": "1e-3x"}
