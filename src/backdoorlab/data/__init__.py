"""Datasets: embedded digits, MNIST / CIFAR-10 / GTSRB readers, the lazy poisoned view."""
from .datasets import DatasetInfo, ImageDataset, PoisonedDataset, as_tensors, clean_subset
from .loaders import DATASETS, DEFAULT_DATA_DIR, INFOS, DataError, download, load_dataset, load_digits

__all__ = ["DatasetInfo", "ImageDataset", "PoisonedDataset", "as_tensors", "clean_subset", "DATASETS",
           "DEFAULT_DATA_DIR", "INFOS", "DataError", "download", "load_dataset", "load_digits"]
