"""nncompress: pruning and quantization for PyTorch models, measured on real data.

    import nncompress as nc
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="global"))
"""
from importlib.metadata import PackageNotFoundError, version

from .api import apply_, count_nonzero_weights, load_model, prune_, quantize_, save_model, squash_
from .config import Context, Method, Select
from .prune.unstructured import MagnitudePrune, RandomPrune, ThresholdPrune
from .quant.attention import SplitAttention, unfuse_attention_
from .quant.kmeans import KMeansQuant
from .quant.granularity import PerChannel, PerGroup, PerTensor
from .quant.fold import fold_batchnorm_
from .quant.ptq import DynamicQuant, LinearQuant, remove_quantization_
from .quant.smooth import SmoothQuant
from .methods import METHODS, method_from_dict
from .quant.convert import convert_
from .train import TrainConfig, evaluate, fit

try:
    __version__ = version("nncompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["METHODS", "Context", "DynamicQuant", "KMeansQuant", "LinearQuant", "MagnitudePrune", "Method", "PerChannel", "PerGroup",
           "PerTensor", "RandomPrune", "Select", "SmoothQuant", "SplitAttention", "ThresholdPrune", "TrainConfig", "apply_", "convert_",
           "count_nonzero_weights", "evaluate", "fit", "fold_batchnorm_", "load_model", "method_from_dict", "prune_",
           "quantize_", "remove_quantization_", "save_model", "squash_", "unfuse_attention_"]
