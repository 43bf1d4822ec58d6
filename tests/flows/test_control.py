"""The same-budget dense control (flows/control.py): exactly as many optimizer steps as pretraining +
compression retraining, and the same schedule (it equals the pipeline run at sparsity 0)."""
import copy

import pytest
import torch

from nncompress.flows.control import (StepCounter, codebook_phase, pretrain_phase, pruning_phases,
                                      same_budget_control, total_steps)
from nncompress.flows.deep_compression import DeepCompressionConfig, fine_tune_codebooks
from nncompress.flows.prune import dense_model, prune_and_retrain
from nncompress.parametrize import squash_
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.train import TrainConfig


def test_control_takes_exactly_the_steps_of_pretrain_plus_retrain(digits):
    with StepCounter() as compressed_steps:
        model, _, base = dense_model("lenet300", digits, seed=3)
        pretrained = copy.deepcopy(model)
        prune_and_retrain(model, MagnitudePrune(sparsity=0.8), digits, base, schedule="iterative", rounds=2,
                          finetune_epochs=1, lr_factor=0.1)
        fine_tune_codebooks(model, digits, DeepCompressionConfig(codebook_epochs=1), seed=3)
    phases = (pruning_phases(base, schedule="iterative", rounds=2, finetune_epochs=1, lr_factor=0.1)
              + codebook_phase(1, 1e-3, 3))
    batches = len(digits.train_loader(64))  # 1,437 images / 64 -> 23
    assert batches == 23
    with StepCounter() as control_steps:
        control, info = same_budget_control(pretrained, digits, phases)
    assert info["steps"] == control_steps.steps == total_steps(phases, digits) == 3 * batches
    budget = total_steps([pretrain_phase(base)] + phases, digits)
    assert compressed_steps.steps == budget == (base.epochs + 3) * batches
    assert not torch.equal(control.fc1.weight, pretrained.fc1.weight)  # it trained
    assert info["phases"] == ["retrain 1/2", "retrain 2/2", "codebook fine-tune"]


@pytest.mark.slow
def test_control_is_the_pipeline_at_sparsity_zero(digits):
    """Same phases, same seeds, same optimizer: pruning with sparsity 0 must give the control's weights."""
    model, _, base = dense_model("lenet300", digits, seed=1)
    pretrained = copy.deepcopy(model)
    prune_and_retrain(model, MagnitudePrune(sparsity=0.0), digits, base, schedule="agp", finetune_epochs=2,
                      lr_factor=0.5)
    squash_(model)
    control, _ = same_budget_control(pretrained, digits, pruning_phases(base, schedule="agp", finetune_epochs=2,
                                                                        lr_factor=0.5))
    for name, value in control.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=1e-6)


def test_phases_mirror_the_schedules():
    base = TrainConfig(epochs=20, lr=0.1, seed=4)
    assert [p.loader_seed for p in pruning_phases(base, schedule="iterative", rounds=3)] == [1005, 1006, 1007]
    agp = pruning_phases(base, schedule="agp", finetune_epochs=40, lr_factor=1.0)
    assert len(agp) == 1 and agp[0].config.epochs == 40 and agp[0].config.lr == 0.1
    oneshot = pruning_phases(base, schedule="oneshot", finetune_epochs=5)
    assert oneshot[0].config.lr == 0.1 * 0.1 and oneshot[0].config.epochs == 5
    assert codebook_phase(0, 1e-3, 0) == []
    cb = codebook_phase(3, 1e-3, 2)[0]
    assert (cb.config.weight_decay, cb.loader_seed, cb.config.lr) == (0.0, 2002, 1e-3)
