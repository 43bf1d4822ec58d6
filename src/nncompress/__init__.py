"""nncompress: pruning and quantization for PyTorch models, measured on real data.

    import nncompress as nc
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="global"))
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=8), data=calibration_batches)
    nc.convert_(model)                       # fake-quantized -> stored integer codes
    nc.save_model(model, "model.safetensors", recipe=[...])
    nc.to_int8_(model)                       # inference: W8A8 layers on int8 kernels inside PyTorch
"""
from importlib.metadata import PackageNotFoundError, version

from .api import apply_, count_nonzero_weights, load_model, prune_, quantize_, save_model, squash_
from .batches import BatchData, with_forward
from .config import Context, Method, Select, run_method
from .methods import METHODS, method_from_dict
from .parametrize import CompositionError
from .prune.group_lasso import GroupLassoPrune
from .prune.nm import NMPrune
from .prune.shrink import shrink_
from .prune.slimming import NetworkSlimming
from .prune.structured import ChannelPrune, ColumnPrune, InputChannelPrune
from .prune.unstructured import MagnitudePrune, RandomPrune, SparsityPrune, ThresholdPrune
from .quant.attention import SplitAttention, unfuse_attention_
from .quant.binary import BNN, BWN, BinaryConnect, XNORNet
from .quant.convert import convert_
from .quant.floating import FormatQuant
from .quant.fold import fold_batchnorm_
from .quant.fp8_training import FP8Training
from .quant.granularity import PerChannel, PerGroup, PerTensor
from .quant.entropy_penalized import EntropyPenalized
from .quant.minimal_random_code import MinimalRandomCode
from .quant.kmeans import KMeansQuant
from .quant.lqnet import LQNet
from .quant.lsq import LSQ
from .quant.mixed_precision import NIPQ, DiffQ
from .quant.pact import PACT
from .quant.ptq import DynamicQuant, LinearQuant, remove_quantization_
from .quant.qat import STEQuant
from .quant.smooth import SmoothQuant
from .quant.soft_sharing import SoftWeightSharing
from .quant.ternary import TTQ, TWN
from .runtime.int8_torch import to_int8_
from .runtime.kernel_select import use_sparse_kernels_
from .train import TrainConfig, evaluate, fit
from .validate import UserError

try:
    __version__ = version("nncompress")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = ["METHODS", "BatchData", "BNN", "BWN", "BinaryConnect", "ChannelPrune", "ColumnPrune", "CompositionError", "Context",
           "DiffQ", "DynamicQuant", "EntropyPenalized", "MinimalRandomCode", "FP8Training", "FormatQuant", "GroupLassoPrune", "InputChannelPrune",
           "KMeansQuant", "LQNet", "LSQ", "LinearQuant", "MagnitudePrune", "Method", "NIPQ", "NMPrune",
           "NetworkSlimming", "PACT", "PerChannel", "PerGroup", "PerTensor", "RandomPrune", "STEQuant", "Select",
           "SmoothQuant", "SoftWeightSharing", "SparsityPrune", "SplitAttention", "TTQ", "TWN", "ThresholdPrune",
           "TrainConfig", "UserError", "XNORNet", "apply_", "convert_", "count_nonzero_weights", "evaluate", "fit",
           "fold_batchnorm_", "load_model", "method_from_dict", "prune_", "quantize_", "remove_quantization_",
           "run_method", "save_model", "shrink_", "squash_", "to_int8_", "unfuse_attention_", "use_sparse_kernels_",
           "with_forward"]


#: names imported on first use: `export_onnx` needs the optional `onnx` extra; the allocator and the
#: container pull in the flows and codecs, which `import nncompress` does not need
_LAZY = {"export_onnx": "export.onnx", "plan_allocation": "flows.allocate", "AllocationConfig": "flows.allocate",
         "Coding": "encode.layout", "encode_model": "encode.model", "decode_model": "encode.model",
         "write_nnc": "encode.container", "read_nnc": "encode.container",
         "compress_miracle": "flows.minimal_random_code", "MiracleConfig": "flows.minimal_random_code",
         "DistillConfig": "flows.distill", "same_budget_control": "flows.control", "TrainingPhase": "flows.control"}


def __getattr__(name: str):
    """The `_LAZY` names (e.g. `nc.export_onnx`, `nc.plan_allocation`), imported on first use."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'nncompress' has no attribute {name!r}")
