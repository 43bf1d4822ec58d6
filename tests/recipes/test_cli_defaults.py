"""`nncompress prune` / `deep-compress` default to the shipped recipes' pruning (the README's rows)."""
import pytest

from nncompress.flows.prune import RECOMMENDED_PRUNING
from nncompress.validate import UserError


@pytest.fixture
def captured(monkeypatch):
    """Stop the commands right before training; keep what they would have run."""
    calls = {}

    def stop(name):
        def record(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise UserError("stopped before training (test)")
        return record

    monkeypatch.setattr("nncompress.flows.prune.prune_model", stop("prune"))
    monkeypatch.setattr("nncompress.flows.deep_compression.deep_compress", stop("deep"))
    return calls


def test_plain_prune_uses_the_headline_settings(main, captured):
    code, _, err = main("prune", "lenet300", "--sparsity", "0.92")
    assert code == 2 and "stopped before training" in err
    (_, _, method), kwargs = captured["prune"]
    settings = RECOMMENDED_PRUNING["lenet300"]
    assert method.to_dict() == {**method.to_dict(), **settings.method}  # magnitude 0.92, fc3 at 0.74
    assert (kwargs["schedule"], kwargs["rounds"], kwargs["finetune_epochs"], kwargs["lr_factor"]) == ("agp", 1, 40, 1.0)


def test_prune_options_that_shape_the_method_fall_back_to_the_generic_defaults(main, captured):
    main("prune", "lenet300", "--sparsity", "0.9", "--scope", "global")
    (_, _, method), kwargs = captured["prune"]
    assert method.layer_sparsity == {} and method.scope == "global"
    assert (kwargs["schedule"], kwargs["rounds"], kwargs["finetune_epochs"], kwargs["lr_factor"]) == ("iterative", 3, 5, 0.1)
    main("prune", "lenet5", "--finetune-epochs", "2")
    (_, _, method), kwargs = captured["prune"]
    assert (method.sparsity, method.scope, kwargs["schedule"], kwargs["finetune_epochs"], kwargs["lr_factor"]) == (
        0.925, "global", "iterative", 2, 0.3)


def test_plain_deep_compress_uses_the_headline_pruning(main, captured):
    main("deep-compress", "lenet300", "--bits", "fc=5")
    (_, _, config), _ = captured["deep"]
    assert config.prune.to_dict()["layer_sparsity"] == {"fc3": 0.74} and config.prune.sparsity == 0.92
    assert (config.schedule, config.finetune_epochs, config.lr_factor) == ("agp", 40, 1.0)
    main("deep-compress", "lenet300", "--rounds", "1", "--finetune-epochs", "1")
    (_, _, config), _ = captured["deep"]
    assert (config.prune.scope, config.prune.layer_sparsity, config.schedule, config.rounds, config.lr_factor) == (
        "global", {}, "iterative", 1, 0.1)
