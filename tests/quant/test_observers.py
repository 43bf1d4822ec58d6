import pytest
import torch

from nncompress.analysis.observers import make_observer


@pytest.fixture
def relu_data():
    torch.manual_seed(0)
    x = torch.relu(torch.randn(200_000)) * 3
    x[0] = 40.0  # one outlier
    return x


def test_minmax_keeps_the_outlier_and_clipping_observers_drop_it(relu_data):
    ranges = {}
    for name in ("minmax", "percentile", "mse", "entropy"):
        obs = make_observer(name)
        for chunk in relu_data.split(50_000):
            obs.observe(chunk)
        ranges[name] = [float(v) for v in obs.range()]
    assert ranges["minmax"] == [0.0, 40.0]
    for name in ("percentile", "entropy"):
        assert ranges[name][0] == 0.0 and 5 < ranges[name][1] < 20, (name, ranges[name])
    # One outlier in 200k costs less than 8-bit rounding noise over a clipped range, so MSE keeps
    # most of it at 8 bits; at 4 bits the rounding noise dominates and MSE clips hard.
    assert ranges["mse"][1] > 30
    four_bit = make_observer("mse", bits=4)
    four_bit.observe(relu_data)
    assert float(four_bit.range()[1]) < 15


def test_ema_moves_towards_new_batches():
    obs = make_observer("ema")
    obs.observe(torch.tensor([0.0, 10.0]))
    obs.observe(torch.tensor([0.0, 20.0]))
    assert float(obs.range()[1]) == pytest.approx(11.0)


def test_per_channel_minmax_and_unsupported_combinations():
    obs = make_observer("minmax", axis=1)
    obs.observe(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
    lo, hi = obs.range()
    assert lo.tolist() == [1.0, -2.0] and hi.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="per-tensor ranges only"):
        make_observer("percentile", axis=0)
    with pytest.raises(ValueError, match="Did you mean 'entropy'"):
        make_observer("entropi")


def test_empty_and_nan_observations_are_clear_errors():
    with pytest.raises(ValueError, match="observed nothing"):
        make_observer("mse").range()
    with pytest.raises(ValueError, match="NaN or inf"):
        make_observer("minmax").observe(torch.tensor([float("nan")]))
