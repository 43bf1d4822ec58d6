import json

from test_cli import run_cli


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


def test_prune_cli_rejects_bad_sparsity():
    done = run_cli("prune", "lenet300", "--sparsity", "1.5")
    assert done.returncode == 2 and "sparsity=1.5 is outside the allowed range" in done.stderr


def test_sensitivity_cli_writes_plot(tmp_path):
    done = run_cli("sensitivity", "lenet300", "--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json"))
    assert done.returncode == 0, done.stderr
    r = json.loads((tmp_path / "s.json").read_text())
    assert r["most_sensitive"] in ("fc1", "fc2", "fc3") and (tmp_path / "s.png").stat().st_size > 1000
