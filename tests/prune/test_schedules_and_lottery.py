import torch
from torch import nn

import nncompress as nc
from nncompress.config import Context
from nncompress.prune.lottery import find_ticket, random_reinit_control, rewind_, snapshot
from nncompress.prune.mask import keep_mask_of
from nncompress.prune.schedules import GradualPruning, prune_iteratively, rescale_dropout_
from nncompress.train import TrainConfig, evaluate, fit
from nncompress.zoo import build_model


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 4))


def sparsity(model):
    w = [m.weight for m in model if isinstance(m, nn.Linear)]
    return 1 - sum(int(torch.count_nonzero(t)) for t in w) / sum(t.numel() for t in w)


def test_agp_callback_ramps_to_the_final_sparsity():
    model = net()
    agp = GradualPruning(model, nc.MagnitudePrune(sparsity=0.8, scope="global"), Context(), begin=0, end=100, frequency=25)
    for step in range(1, 121):
        agp(step)
    targets = [s for _, s in agp.applied]
    assert targets == sorted(targets) and abs(targets[-1] - 0.8) < 1e-9
    assert abs(sparsity(model) - 0.8) < 1e-3


def test_iterative_rounds_call_retrain_each_time():
    model, seen = net(), []
    prune_iteratively(model, nc.MagnitudePrune(sparsity=0.75), Context(), 2, lambda m, k: seen.append((k, sparsity(m))))
    assert [k for k, _ in seen] == [1, 2]
    assert abs(seen[0][1] - 0.5) < 0.01 and abs(seen[1][1] - 0.75) < 0.01


def test_dropout_is_rescaled_by_the_square_root_of_density():
    model = nc.prune_(net(), nc.MagnitudePrune(sparsity=0.75))
    rates = rescale_dropout_(model, {"2": 0.5})
    assert abs(rates["2"] - 0.5 * 0.5) < 1e-9 and abs(model[2].p - 0.25) < 1e-9


def test_rewind_restores_initial_weights_under_the_mask():
    model = net()
    init = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.5))
    rewind_(model, init)
    keep = keep_mask_of(model[0])
    assert torch.equal(model[0].weight[keep], init["0.weight"][keep])
    assert (model[0].weight[~keep] == 0).all() and torch.equal(model[0].bias, init["0.bias"])


def test_ticket_keeps_masks_and_control_gets_fresh_weights(digits):
    torch.manual_seed(0)
    model = build_model("lenet300", digits.in_shape, 10)
    config = TrainConfig(epochs=2, lr=0.05)

    def train(m, on_step):
        fit(m, digits.train_loader(64), config, on_step=on_step, progress=False, log=lambda s: None)

    result = find_ticket(model, nc.MagnitudePrune(sparsity=0.75, scope="global"), 2, train,
                         lambda m: evaluate(m, digits.test_loader())["accuracy"], rewind_step=5)
    assert [round(r.sparsity, 2) for r in result.rounds] == [0.0, 0.5, 0.75]
    assert result.rounds[-1].accuracy > 0.85
    control = random_reinit_control(result.ticket, build_model("lenet300", digits.in_shape, 10))
    assert torch.equal(keep_mask_of(control.fc1), keep_mask_of(result.ticket.fc1))
    assert not torch.equal(control.fc1.weight, result.ticket.fc1.weight)
    assert (control.fc1.weight[~keep_mask_of(control.fc1)] == 0).all()


def test_schedules_refuse_what_they_cannot_ramp_with_a_user_error():
    """A method without a sparsity target and a zero AGP frequency are the user's errors, named."""
    import pytest

    from nncompress.prune.schedules import at_sparsity
    from nncompress.validate import UserError

    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(UserError, match="frequency=0 must be >= 1"):
        GradualPruning(model, nc.MagnitudePrune(sparsity=0.5), Context(), begin=0, end=10, frequency=0)
    with pytest.raises(UserError, match="KMeansQuant has no sparsity target"):
        at_sparsity(nc.KMeansQuant(bits=2), lambda s: s)
