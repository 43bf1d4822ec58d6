"""nncompress: pruning and quantization for PyTorch models, measured on real data.

    import nncompress as nc
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="global"))
"""
from importlib.metadata import PackageNotFoundError, version

from . import methods  # noqa: F401  (registers the built-in methods)
from .api import count_nonzero_weights, load_model, prune_, save_model, squash_
from .config import Context, Method, Select
from .prune.unstructured import MagnitudePrune, RandomPrune, ThresholdPrune
from .registry import METHODS, method_from_dict
from .train import TrainConfig, evaluate, fit

try:
    __version__ = version("nncompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["METHODS", "Context", "MagnitudePrune", "Method", "RandomPrune", "Select", "ThresholdPrune",
           "TrainConfig", "count_nonzero_weights", "evaluate", "fit", "load_model", "method_from_dict",
           "prune_", "save_model", "squash_"]
