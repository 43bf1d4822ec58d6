"""Models and datasets: `build_model(name, in_shape, num_classes)`, `load_dataset(name, data_dir)`."""
from .datasets import DATASETS, Dataset, load_dataset
from .idx import DataFileError, read_idx
from .loader import TensorLoader
from .models import MODELS, build_model

__all__ = ["DATASETS", "MODELS", "DataFileError", "Dataset", "TensorLoader", "build_model", "load_dataset", "read_idx"]
