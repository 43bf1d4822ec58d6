"""Sweeps: grids, summaries, the in-process fallback, and a 4-trial sweep on a local Ray."""
import json

import pytest
import torch

from nncompress.sweep import check_trials, grid, pinned_torch_threads, run_sweep, run_trial, summarize
from nncompress.validate import UserError

# one epoch of dense training, one-shot pruning without retraining: a trial takes about a second
TINY = {"model": "lenet300", "dataset": "digits", "method": "magnitude", "scope": "layer", "epochs": 1,
        "schedule": "oneshot", "finetune_epochs": 0}
KEPT = {0.5: 9_600 + 15_000 + 500, 0.9: 1_920 + 3_000 + 100}  # lenet300 on 8x8 digits, per layer, rounded


def test_grid_is_the_cartesian_product_in_order():
    assert grid({"seed": [0, 1], "sparsity": [0.8, 0.9]}) == [
        {"seed": 0, "sparsity": 0.8}, {"seed": 0, "sparsity": 0.9}, {"seed": 1, "sparsity": 0.8},
        {"seed": 1, "sparsity": 0.9}]
    assert grid({}) == [{}]


def test_summarize_takes_mean_and_std_over_seeds():
    rows = [{"seed": 0, "sparsity": 0.8, "pruned_accuracy": 0.90, "seconds": 1.0},
            {"seed": 1, "sparsity": 0.8, "pruned_accuracy": 0.94, "seconds": 3.0},
            {"seed": 0, "sparsity": 0.9, "pruned_accuracy": 0.80, "seconds": 2.0}]
    first, second = summarize(rows, ["seed", "sparsity"])
    assert first["sparsity"] == 0.8 and first["trials"] == 2 and "seed" not in first
    assert first["pruned_accuracy_mean"] == pytest.approx(0.92)
    assert first["pruned_accuracy_std"] == pytest.approx(0.02 * 2 ** 0.5)  # sample std of 0.90, 0.94
    assert second["trials"] == 1 and second["pruned_accuracy_std"] == 0.0 and second["seconds_mean"] == 2.0


def test_pinned_torch_threads_pins_and_restores():
    before = torch.get_num_threads()
    with pinned_torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_bad_sweeps_are_refused_before_running():
    with pytest.raises(UserError, match="Did you mean 'prune'"):
        check_trials("prun", [TINY])
    with pytest.raises(UserError, match="sparsity"):
        check_trials("prune", [{**TINY, "sparsity": 1.5}])
    with pytest.raises(UserError, match="backend"):
        run_sweep("prune", [TINY], backend="slurm")


def test_a_local_trial_measures_what_it_pruned():
    row = run_trial("prune", {**TINY, "seed": 0, "sparsity": 0.9})
    assert row["kept_weights"] == KEPT[0.9] and row["compression"] == pytest.approx(50_200 / KEPT[0.9])
    assert 0 <= row["pruned_accuracy"] <= 1 and row["seed"] == 0 and row["seconds"] > 0


def test_without_ray_auto_runs_in_process_and_ray_is_refused(monkeypatch):
    import nncompress.sweep as sweep

    monkeypatch.setattr(sweep, "ray_available", lambda: False)
    [row] = run_sweep("prune", [{**TINY, "seed": 0, "sparsity": 0.5}], backend="auto")
    assert row["kept_weights"] == KEPT[0.5]
    with pytest.raises(UserError, match=r"pip install 'nncompress\[sweep\]'"):
        run_sweep("prune", [{**TINY, "sparsity": 0.5}], backend="ray")


@pytest.mark.slow
def test_four_trials_on_a_local_ray_match_the_in_process_run():
    pytest.importorskip("ray")
    trials = [{**TINY, **point} for point in grid({"seed": [0, 1], "sparsity": [0.5, 0.9]})]
    on_ray = run_sweep("prune", trials, backend="ray", num_cpus=2)
    assert [(r["seed"], r["sparsity"]) for r in on_ray] == [(0, 0.5), (0, 0.9), (1, 0.5), (1, 0.9)]
    assert [r["kept_weights"] for r in on_ray] == [KEPT[0.5], KEPT[0.9]] * 2
    local = run_sweep("prune", trials, backend="local")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(on_ray) == strip(local)  # one thread per trial: the same figures in any process


def test_sweep_command_runs_a_grid_in_process(main, tmp_path):
    code, stdout, stderr = main("sweep", "prune", "--seeds", "0", "--set", "sparsity=0.5,0.9", "--set", "scope=layer",
                                "--epochs", "1", "--schedule", "oneshot", "--finetune-epochs", "0",
                                "--backend", "local", "--json", str(tmp_path / "s.json"))
    assert code == 0, stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert [t["kept_weights"] for t in result["trials"]] == [KEPT[0.5], KEPT[0.9]]
    assert result["axes"] == {"seed": [0], "sparsity": [0.5, 0.9], "scope": ["layer"]}
    assert "kept_weights" in stdout
    code, _, stderr = main("sweep", "recipe", "--backend", "local")
    assert code == 2 and "needs a `recipe` axis" in stderr
    code, _, stderr = main("sweep", "prune", "--set", "sparsity", "--backend", "local")
    assert code == 2 and "must look like NAME=V1,V2" in stderr
