import pytest
import torch

from nncompress.prune.masks import (agp_sparsity, global_masks, iterative_sparsities, layer_masks, lowest_k_mask,
                                    sqrt_dropout_rate, threshold_mask)


def test_ties_are_pruned_lowest_index_first():
    keep = lowest_k_mask(torch.ones(2, 3), 4)
    assert keep.flatten().tolist() == [False, False, False, False, True, True]


def test_layer_targets_hit_the_exact_counts():
    scores = {"a": torch.rand(10, 10), "b": torch.rand(7)}
    masks = layer_masks(scores, {"a": 0.35, "b": 0.5})
    assert int((~masks["a"]).sum()) == 35 and int((~masks["b"]).sum()) == 4  # round(3.5) = 4 (half to even)


def test_global_target_pools_all_layers():
    scores = {"big": torch.arange(100.0), "small": torch.arange(100.0, 110.0)}
    masks = global_masks(scores, 0.5)
    assert int((~masks["big"]).sum()) == 55 and int((~masks["small"]).sum()) == 0
    assert masks["big"][:55].sum() == 0 and masks["big"][55:].all()


def test_global_ties_across_layers_are_deterministic():
    scores = {"a": torch.zeros(4), "b": torch.zeros(4)}
    masks = global_masks(scores, 0.25)
    assert masks["a"].tolist() == [False, False, True, True] and masks["b"].all()


def test_agp_cubic_ramp():
    assert agp_sparsity(0, 0.8, end=100) == 0.0
    assert agp_sparsity(50, 0.8, end=100) == pytest.approx(0.8 * (1 - 0.5**3))
    assert agp_sparsity(100, 0.8, end=100) == pytest.approx(0.8)
    assert agp_sparsity(500, 0.8, end=100) == pytest.approx(0.8)
    assert agp_sparsity(10, 0.9, initial=0.5, begin=10, end=20) == 0.5


def test_iterative_targets_remove_the_same_fraction_each_round():
    targets = iterative_sparsities(0.875, 3)
    assert targets == pytest.approx([0.5, 0.75, 0.875])


def test_han_threshold_and_dropout_rule():
    w = torch.tensor([-3.0, -1.0, 0.5, 1.0, 3.0])
    assert threshold_mask(w, 1.0).tolist() == [True, False, False, False, True]  # std = 2.236
    assert sqrt_dropout_rate(0.5, 0.25) == pytest.approx(0.25)
