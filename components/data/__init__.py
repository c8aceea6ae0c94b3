"""Data stage: fetch the raw source, load it onto the data contract, validate, build the dataset."""

from components.data.dataset import Dataset, EvalSplit, build_dataset
from components.data.sources import DataError, RawData, fetch_raw, load_raw
from components.data.synthetic import generate_synthetic
from components.data.validation import DataValidationError, validate_raw

__all__ = [
    "DataError",
    "DataValidationError",
    "Dataset",
    "EvalSplit",
    "RawData",
    "build_dataset",
    "fetch_raw",
    "generate_synthetic",
    "load_raw",
    "validate_raw",
]
