from nncompress.analysis.plots import plot_sensitivity
from nncompress.analysis.sensitivity import SensitivityCurves
from nncompress.flows.prune import layer_sensitivity
from nncompress.train import TrainConfig, fit
from nncompress.zoo import build_model


def test_budget_targets_stop_at_the_first_point_over_budget():
    curves = SensitivityCurves((0.0, 0.5, 0.8, 0.9), 0.98, {"a": [0.98, 0.975, 0.95, 0.97], "b": [0.98, 0.98, 0.98, 0.95]})
    assert curves.targets_for_budget(0.01) == {"a": 0.5, "b": 0.8}
    assert curves.most_sensitive() == "a"


def test_lenet5_sensitivity_on_digits(digits, tmp_path):
    model = build_model("lenet5", digits.in_shape, 10)
    fit(model, digits.train_loader(64), TrainConfig(epochs=3, lr=2e-3, optimizer="adam"), progress=False, log=lambda s: None)
    curves = layer_sensitivity(model, digits, sparsities=(0.0, 0.5, 0.9, 0.99))
    assert list(curves.accuracy) == ["conv1", "conv2", "fc1", "fc2"]
    for accs in curves.accuracy.values():
        assert accs[0] == curves.baseline  # 0% pruned changes nothing
        assert accs[-1] < curves.baseline  # 99% pruned always hurts
    png = plot_sensitivity(curves, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
