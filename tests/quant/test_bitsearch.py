"""PTQ bit-width search: greedy allocation under an average-bits budget, per network / layer / channel."""
import pytest
import torch
from torch import nn

from nncompress.parametrize import transforms
from nncompress.quant.bitsearch import (ChannelBitsQuant, allocate_bits, apply_bits_, channel_costs, layer_costs,
                                        search_bits)
from nncompress.validate import UserError


def test_allocation_by_hand():
    costs = {"u1": {2: 10.0, 4: 1.0, 8: 0.0}, "u2": {2: 0.5, 4: 0.1, 8: 0.0}}
    # from (8, 8): u2 8->4 costs 0.1/4 bits, u1 8->4 costs 1/4: u2 first; then u2 4->2 (0.4/2) beats u1 (0.25)
    assert allocate_bits(costs, {"u1": 1, "u2": 1}, 5.0) == {"u1": 8, "u2": 2}
    assert allocate_bits(costs, {"u1": 1, "u2": 1}, 8.0) == {"u1": 8, "u2": 8}
    assert allocate_bits(costs, {"u1": 1, "u2": 1}, 2.0) == {"u1": 2, "u2": 2}


@pytest.mark.parametrize("budget", [2.0, 3.3, 4.5, 5.0, 7.9])
def test_allocation_never_exceeds_the_budget_and_leaves_no_room(budget):
    g = torch.Generator().manual_seed(int(budget * 10))
    options = (2, 3, 4, 6, 8)
    sizes = {u: int(s) for u, s in enumerate(torch.randint(1, 500, (30,), generator=g))}
    costs = {u: {b: float(torch.rand((), generator=g)) * 2.0 ** -b for b in options} for u in sizes}
    bits = allocate_bits(costs, sizes, budget)
    total = sum(sizes.values())
    used = sum(bits[u] * sizes[u] for u in sizes)
    assert used <= budget * total + 1e-6
    for u in sizes:  # no unit fits one option higher: the budget is used up
        higher = [b for b in options if b > bits[u]]
        if higher:
            assert used + (higher[0] - bits[u]) * sizes[u] > budget * total


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def test_search_levels_respect_the_budget():
    net = model()
    x = torch.randn(64, 6)
    target = net(x).detach()

    def loss(m):
        with torch.no_grad():
            return float(nn.functional.mse_loss(m(x), target))

    layers = {"0": net[0], "2": net[2]}
    _, costs = layer_costs(net, layers, (2, 4, 8), loss)
    assert costs["0"][8] < costs["0"][2] and costs["2"][8] < costs["2"][2]  # fewer bits hurt more
    assert not any(transforms(m) for m in layers.values())  # measuring left the model as it was
    net_level = search_bits(net, layers, 5.0, "network", loss, (2, 4, 8))
    assert net_level["average_bits"] == 4.0 and set(net_level["bits"].values()) == {4}
    for level in ("layer", "channel"):
        found = search_bits(net, layers, 5.0, level, loss, (2, 4, 8), costs)
        assert found["average_bits"] <= 5.0
    per_channel = channel_costs(layers, costs)
    assert sum(per_channel[("0", c)][2] for c in range(8)) == pytest.approx(costs["0"][2])
    with pytest.raises(UserError, match="budget=1.5 average bits is below the narrowest option 2"):
        search_bits(net, layers, 1.5, "layer", loss, (2, 4, 8), costs)


def test_channel_bits_quant_is_exact_per_channel():
    net = model()
    bits = torch.tensor([2, 3, 4, 8, 2, 3, 4, 8])
    apply_bits_({"0": net[0]}, {("0", c): int(b) for c, b in enumerate(bits)}, "channel")
    t = transforms(net[0])[0]
    assert isinstance(t, ChannelBitsQuant)
    w = net[0].parametrizations.weight.original
    for c, b in enumerate(bits.tolist()):
        assert len(torch.unique(net[0].weight[c])) <= 2 ** b - 1
    assert torch.equal(ChannelBitsQuant.decode(t.encode(w)), t(w))
    with pytest.raises(UserError, match=r"one bit-width in \[2, 8\] per output channel \(8\)"):
        ChannelBitsQuant(w, torch.tensor([9] * 8))
