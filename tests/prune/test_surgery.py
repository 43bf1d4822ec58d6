"""Dynamic network surgery (Guo et al. 2016): straight-through mask, hysteresis, splicing back."""
import torch
from torch import nn

import nncompress as nc
from nncompress.parametrize import find_transform
from nncompress.prune.mask import Mask
from nncompress.prune.surgery import DynamicSurgery, SurgeryMask, finish_surgery_, hysteresis_mask


def test_hysteresis_on_a_hand_example():
    w = torch.tensor([0.1, -0.5, 0.95, -1.0, 1.05, 2.0])
    before = torch.tensor([True, True, False, True, False, False])
    # t = median |w| = 0.975: off below 0.8775, on above 1.0725, unchanged in between
    assert hysteresis_mask(w, before, 0.5).tolist() == [False, False, False, True, False, True]


def test_pruned_weights_get_gradients_and_splice_back():
    torch.manual_seed(0)
    x = torch.randn(512, 4)
    y = x @ torch.tensor([[3.0], [0.0], [0.0], [0.0]])
    net = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.01, 0.5, 0.0, 0.0]]))  # the weight that matters starts smallest
    surgery = DynamicSurgery(net, {"0": 0.25}, frequency=1, gamma=0.0)
    assert find_transform(net[0], SurgeryMask).mask.tolist() == [[False, True, False, False]]
    out = net(x).sum()
    out.backward()
    grad = net[0].parametrizations.weight.original.grad
    assert grad[0, 0] != 0  # pruned, still learning
    net.zero_grad()
    nc.fit(net, [(x, y)], nc.TrainConfig(epochs=60, lr=0.1, weight_decay=0.0, schedule="constant"),
           loss_fn=lambda out, target: ((out - target) ** 2).mean(), on_step=surgery, progress=False,
           log=lambda _m: None)
    assert surgery.updates == 60
    assert find_transform(net[0], SurgeryMask).mask.tolist() == [[True, False, False, False]]  # spliced back
    densities = finish_surgery_(net)
    assert densities == {"0": 0.25} and find_transform(net[0], Mask) is not None
    weight = net[0].weight.detach()
    assert weight[0, 1] == 0 and abs(float(weight[0, 0]) - 3.0) < 0.05
