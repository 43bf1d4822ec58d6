import pytest
import torch

from nncompress.analysis.metrics import count_macs, total_macs
from nncompress.zoo import MODELS, build_model


def test_mnist_10k_split_matches_the_official_class_counts(mnist10k):
    assert len(mnist10k.train_x) == 8000 and len(mnist10k.test_x) == 2000
    counts = torch.cat([mnist10k.train_y, mnist10k.test_y]).bincount().tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_digits_is_embedded(digits):
    assert digits.in_shape == (1, 8, 8) and len(digits.train_x) == 1437 and len(digits.test_x) == 360


def test_validation_split_holds_out_the_last_training_images(mnist10k):
    val = mnist10k.with_validation(1000)
    assert len(val.train_x) == 7000 and torch.equal(val.test_x, mnist10k.train_x[-1000:])


def test_lenet_macs_match_the_published_counts():
    assert total_macs(build_model("lenet300", (1, 28, 28), 10), (1, 28, 28)) == 266_200
    macs = count_macs(build_model("lenet5", (1, 28, 28), 10), (1, 28, 28))
    assert macs == {"conv1": 20 * 24 * 24 * 25, "conv2": 50 * 8 * 8 * 500, "fc1": 800 * 500, "fc2": 500 * 10}
    assert sum(macs.values()) == 2_293_000


def test_depthwise_macs_count_one_input_channel_per_output():
    net = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert total_macs(net, (8, 10, 10)) == 8 * 10 * 10 * 9


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8)])
def test_every_model_fits_every_input(name, shape):
    out = build_model(name, shape, 7)(torch.randn(2, *shape))
    assert out.shape == (2, 7)


def test_unknown_model_suggests():
    with pytest.raises(ValueError, match="Did you mean 'lenet5'"):
        build_model("lenet-5", (1, 28, 28), 10)
