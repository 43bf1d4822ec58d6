"""Sweeps: many independent trials (seeds x hyperparameter grids) of one flow, run in parallel on
Ray (the optional extra `sweep`: a local Ray by default, `address` for an existing cluster) or, when
Ray is absent, one after the other in this process. One trial per worker, each with torch pinned to
one thread (trials do not fight over cores, and results do not depend on the thread count); the
results come back as one table, one row per trial, in grid order.

Flows (`TRIALS`), each a function params -> figures:
- "prune": train the dense model, prune with a registered method (its fields come from the params,
  e.g. sparsity, scope) on a schedule with retraining (Han et al. 2015), measure;
- "deep-compress": prune -> k-means weight sharing (`bits.fc`, `bits.conv`) -> Huffman .nnc
  (Han et al. 2016), measure the decoded file;
- "sensitivity": prune one `layer` alone to `sparsity`, no retraining (Han et al. 2015 fig. 6);
- "recipe": run a YAML `recipe` (`nncompress run`'s runner) with the trial's seed; a grid over
  `recipe=a.yaml,b.yaml` and seeds compares recipes. Its figures are the run's summary.

    >>> grid({"seed": [0, 1], "sparsity": [0.8]})
    [{'seed': 0, 'sparsity': 0.8}, {'seed': 1, 'sparsity': 0.8}]
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch

from .validate import UserError, unknown_name_error

#: params every flow reads itself; any other key is a field of the pruning method
FLOW_FIELDS = ("model", "dataset", "seed", "method", "schedule", "rounds", "finetune_epochs", "lr_factor", "epochs",
               "codebook_epochs", "layer", "recipe")
BACKENDS = ("auto", "ray", "local")


@contextmanager
def pinned_torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch using `n` intra-op threads, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def grid(axes: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of the axes' values (the last axis varies fastest)."""
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def _method_fields(params: Mapping) -> dict:
    return {k: v for k, v in params.items() if k not in FLOW_FIELDS and not k.startswith("bits.")}


def _prune_method(params: Mapping):
    from .methods import method_from_dict

    return method_from_dict({"method": params.get("method", "magnitude"), **_method_fields(params)})


def _dense(params: Mapping):
    """(trained dense model, arch, its training config, dataset) for the trial's model / seed / epochs."""
    from .api import resolve_model, training_config
    from .train import fit
    from .zoo import load_dataset

    data = load_dataset(params.get("dataset", "digits"))
    seed = int(params.get("seed", 0))
    model, arch, trained = resolve_model(params.get("model", "lenet300"), data, seed=seed)
    config = training_config(arch, seed=seed, epochs=params.get("epochs"))
    if not trained:
        fit(model, data.train_loader(64, seed=seed), config)
    return model, arch, config, data


def _accuracy(model, data) -> float:
    from .train import evaluate

    return evaluate(model, data.test_loader())["accuracy"]


def prune_trial(params: Mapping) -> dict:
    """Dense -> pruned and retrained; accuracy before / after and the weights kept."""
    from .analysis.metrics import weight_layers
    from .flows.prune import prune_and_retrain

    model, _, config, data = _dense(params)
    dense_accuracy = _accuracy(model, data)
    prune_and_retrain(model, _prune_method(params), data, config, schedule=params.get("schedule", "iterative"),
                      rounds=int(params.get("rounds", 3)), finetune_epochs=int(params.get("finetune_epochs", 3)),
                      lr_factor=float(params.get("lr_factor", 0.1)))
    total = sum(m.weight.numel() for m in weight_layers(model).values())
    kept = sum(int(torch.count_nonzero(m.weight.detach())) for m in weight_layers(model).values())
    return {"dense_accuracy": dense_accuracy, "pruned_accuracy": _accuracy(model, data), "kept_weights": kept,
            "compression": total / max(kept, 1)}


def deep_compress_trial(params: Mapping) -> dict:
    """Prune -> share weights -> Huffman-code; figures measured on the decoded file."""
    from .analysis.metrics import count_params
    from .flows.deep_compression import DeepCompressionConfig, share_and_encode
    from .flows.prune import prune_and_retrain

    bits = {"conv": 8, "fc": 5, **{k.removeprefix("bits."): int(v) for k, v in params.items() if k.startswith("bits.")}}
    config = DeepCompressionConfig(prune=None, bits=bits, codebook_epochs=int(params.get("codebook_epochs", 2)))
    model, arch, base, data = _dense(params)
    dense_accuracy, dense_bytes = _accuracy(model, data), 4 * count_params(model)
    if float(params.get("sparsity", 0)) > 0:
        prune_and_retrain(model, _prune_method(params), data, base, schedule=params.get("schedule", "iterative"),
                          rounds=int(params.get("rounds", 3)), finetune_epochs=int(params.get("finetune_epochs", 3)),
                          lr_factor=float(params.get("lr_factor", 0.3)))
    with tempfile.TemporaryDirectory() as folder:
        _, shared = share_and_encode(model, arch, data, config, seed=int(params.get("seed", 0)),
                                     out=os.path.join(folder, "trial.nnc"))
    return {"dense_accuracy": dense_accuracy, "compressed_accuracy": shared["compressed_accuracy"],
            "file_bytes": shared["file_bytes"], "compression": dense_bytes / shared["file_bytes"]}


def sensitivity_trial(params: Mapping) -> dict:
    """One point of a sensitivity scan: only `layer` magnitude-pruned to `sparsity`, no retraining."""
    from .api import apply_
    from .config import Select
    from .prune.unstructured import MagnitudePrune

    if "layer" not in params or "sparsity" not in params:
        raise UserError("a sensitivity sweep needs `layer` and `sparsity` axes, e.g. --set layer=fc1,fc2 "
                        "--set sparsity=0.5,0.9")
    model, _, _, data = _dense(params)
    dense_accuracy = _accuracy(model, data)
    apply_(model, MagnitudePrune(sparsity=float(params["sparsity"]), targets=Select(include=(params["layer"],))))
    return {"dense_accuracy": dense_accuracy, "pruned_accuracy": _accuracy(model, data)}


def recipe_trial(params: Mapping) -> dict:
    """A YAML recipe run end to end (in a temporary folder) with the trial's seed; its summary's numbers."""
    from .recipes import load_recipe, run_recipe
    from .zoo import load_dataset

    recipe = load_recipe(params["recipe"])
    data = load_dataset(params.get("dataset") or recipe.header.dataset)
    with tempfile.TemporaryDirectory() as folder:
        result = run_recipe(recipe, data, folder, seed=int(params.get("seed", recipe.header.seed)), log=lambda _: None)
    return {k: v for k, v in result["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


TRIALS: dict[str, Callable[[Mapping], dict]] = {"prune": prune_trial, "deep-compress": deep_compress_trial,
                                                "sensitivity": sensitivity_trial, "recipe": recipe_trial}


def run_trial(flow: str, params: Mapping) -> dict:
    """One trial with torch pinned to one thread: {**params, **figures, "seconds": wall time}."""
    start = time.perf_counter()
    with pinned_torch_threads(1):
        figures = TRIALS[flow](params)
    return {**params, **figures, "seconds": round(time.perf_counter() - start, 3)}


def check_trials(flow: str, trials: Sequence[Mapping]) -> None:
    """Refuse a bad sweep before anything runs: unknown flow, or a method the params cannot build."""
    if flow not in TRIALS:
        raise unknown_name_error("sweep flow", flow, TRIALS)
    if not trials:
        raise UserError("the sweep has no trials")
    if flow == "recipe":
        from .recipes import load_recipe

        if any("recipe" not in params for params in trials):
            raise UserError("a recipe sweep needs a `recipe` axis, e.g. --set recipe=recipes/han2015-lenet300.yaml")
        for path in {str(params["recipe"]) for params in trials}:
            load_recipe(path)  # a bad recipe is refused before any trial runs
    elif flow != "sensitivity":
        for params in trials:
            _prune_method(params)


def ray_available() -> bool:
    """Whether ray is installed (without importing it: that takes seconds)."""
    return importlib.util.find_spec("ray") is not None


def run_sweep(flow: str, trials: Sequence[Mapping], *, backend: str = "auto", address: str | None = None,
              num_cpus: int | None = None) -> list[dict]:
    """Run every trial of `flow`; one result row per trial, in the order given.

    backend "ray": one Ray task per trial (1 CPU each) on a local Ray started here with `num_cpus`
    (shut down afterwards), or on the cluster at `address`, or on an already initialised Ray;
    "local": one after the other in this process; "auto": Ray when installed, else local."""
    if backend not in BACKENDS:
        raise unknown_name_error("sweep backend", backend, BACKENDS)
    check_trials(flow, trials)
    if backend == "local" or (backend == "auto" and not ray_available() and address is None):
        return [run_trial(flow, dict(params)) for params in trials]
    if not ray_available():
        raise UserError("the Ray backend needs ray: pip install 'nncompress[sweep]'")
    return _run_on_ray(flow, trials, address, num_cpus)


def _run_on_ray(flow: str, trials: Sequence[Mapping], address: str | None, num_cpus: int | None) -> list[dict]:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports over the network
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(**options, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=1)(run_trial)
        return ray.get([remote.remote(flow, dict(params)) for params in trials])
    finally:
        if started:
            ray.shutdown()


def summarize(rows: Sequence[Mapping], params: Sequence[str], over: str = "seed") -> list[dict]:
    """Rows grouped by the trial `params` but `over`: per group, the number of trials and the mean and
    standard deviation across `over` (e.g. the seeds) of each numeric figure the flow produced."""
    if not rows:
        return []
    keys = [k for k in params if k != over]
    figures = [k for k, v in rows[0].items() if k not in params and isinstance(v, (int, float)) and not isinstance(v, bool)]
    groups: dict[tuple, list[Mapping]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row.get(k)) for k in keys), []).append(row)
    summary = []
    for members in groups.values():
        entry = {k: members[0].get(k) for k in keys}
        entry["trials"] = len(members)
        for name in figures:
            values = [float(m[name]) for m in members if name in m]
            entry[f"{name}_mean"] = statistics.fmean(values)
            entry[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary
