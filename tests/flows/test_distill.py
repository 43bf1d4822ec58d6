"""Knowledge distillation in the allocation flow (flows/distill.py) and its honest control: the control
trained with the same distillation is the distilled pipeline at sparsity 0, step for step."""
import copy

import pytest
import torch
from torch.nn import functional as F

from nncompress.batches import BatchData
from nncompress.flows.allocate import AllocationConfig, compression_phases
from nncompress.flows.control import StepCounter, TrainingPhase, pruning_phases, same_budget_control, total_steps
from nncompress.flows.distill import Distillation, DistillConfig, distillation_kwargs, distillation_loss
from nncompress.flows.prune import dense_model, prune_and_retrain
from nncompress.parametrize import squash_
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.train import TrainConfig
from nncompress.validate import UserError


def test_loss_is_cross_entropy_at_alpha_zero_and_zero_for_a_perfect_student():
    torch.manual_seed(0)
    student, teacher, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    assert torch.allclose(distillation_loss(student, teacher, y, 0.0, 4.0), F.cross_entropy(student, y))
    assert distillation_loss(teacher, teacher, y, 1.0, 3.0).abs() < 1e-6


def test_soft_term_is_temperature_scaled_kl():
    """alpha T^2 KL(p_t || p_s) at temperature T, the hand formula."""
    student, teacher, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1])
    t = 2.0
    p_t, p_s = torch.softmax(teacher / t, 1), torch.softmax(student / t, 1)
    kl = float((p_t * (p_t.log() - p_s.log())).sum())
    expected = 0.25 * float(F.cross_entropy(student, y)) + 0.75 * t * t * kl
    assert float(distillation_loss(student, teacher, y, 0.75, t)) == pytest.approx(expected, rel=1e-5)


def test_config_checks_and_off_switch():
    with pytest.raises(UserError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(UserError, match="temperature"):
        DistillConfig(alpha=0.5, temperature=0.0)
    with pytest.raises(UserError, match="alpha"):
        AllocationConfig(target_ratio=10, distill_alpha=-0.1)
    assert distillation_kwargs(torch.nn.Linear(2, 2), DistillConfig(0.0)) == {}
    assert distillation_kwargs(None, DistillConfig(0.5)) == {}
    assert set(distillation_kwargs(torch.nn.Linear(2, 2), DistillConfig(0.5))) == {"forward_fn", "loss_fn"}


def test_teacher_is_a_frozen_copy():
    teacher = torch.nn.Linear(4, 3)
    d = Distillation(teacher, DistillConfig(0.5))
    assert d.teacher is not teacher and not d.teacher.training
    assert all(not p.requires_grad for p in d.teacher.parameters())
    with torch.no_grad():
        teacher.weight.add_(1.0)  # changing the original (the pruned model, in the flow) leaves the teacher
    assert not torch.equal(d.teacher.weight, teacher.weight)


@pytest.mark.slow
def test_distilled_control_is_the_distilled_pipeline_at_sparsity_zero(digits):
    """The control of a distilled run gets the same teacher, phases, seeds and steps: pruning with
    sparsity 0 and distillation gives the distilled control's weights."""
    model, _, base = dense_model("lenet300", digits, seed=1)
    pretrained = copy.deepcopy(model)
    distill = DistillConfig(alpha=0.7, temperature=3.0)
    with StepCounter() as steps:
        prune_and_retrain(model, MagnitudePrune(sparsity=0.0), digits, base, schedule="agp", finetune_epochs=2,
                          lr_factor=0.5, fit_kwargs=distillation_kwargs(pretrained, distill))
    squash_(model)
    phases = pruning_phases(base, schedule="agp", finetune_epochs=2, lr_factor=0.5)
    control, info = same_budget_control(pretrained, digits, phases, distill=distill)
    assert info["distill"] and steps.steps == info["steps"] == total_steps(phases, digits)
    for name, value in control.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6)
    plain, _ = same_budget_control(pretrained, digits, phases)
    assert not torch.equal(plain.fc1.weight, control.fc1.weight)  # distillation changed the training


def test_compression_phases_count_the_extra_codebook_epochs(digits):
    base = dense_model("lenet300", digits, seed=0)[2]
    short = AllocationConfig(target_ratio=50, rounds=1, finetune_epochs=1, codebook_epochs=1)
    long = AllocationConfig(target_ratio=50, rounds=1, finetune_epochs=1, codebook_epochs=4)
    batches = len(digits.train_loader(64))
    assert total_steps(compression_phases(base, long, 0), digits) - total_steps(compression_phases(base, short, 0),
                                                                                digits) == 3 * batches


def test_distillation_feeds_both_models_with_the_datas_own_forward():
    """BatchData's forward_fn survives distillation (fit's forward_fn is the distillation's): a batch
    the default rules cannot feed ({"pixels", "labels"} to a Linear) trains the control."""
    calls = []

    def forward(model, batch):
        calls.append(1)
        return model(batch["pixels"])

    g = torch.Generator().manual_seed(0)
    batches = [{"pixels": torch.randn(8, 4, generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}
               for _ in range(3)]
    data = BatchData(batches, batches[:1], forward_fn=forward)
    phase = TrainingPhase(TrainConfig(epochs=2, lr=0.1), 0, 8, "distil")
    _, info = same_budget_control(torch.nn.Linear(4, 3), data, [phase], distill=DistillConfig(0.5))
    assert info["distill"] and info["steps"] == 6 and len(calls) == 2 * 6  # student and teacher, every step
