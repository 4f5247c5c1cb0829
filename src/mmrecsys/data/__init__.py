from .dataset import (TRAIN, VALID, TEST, DataError, Dataset, load_dataset, write_dataset,
                      dataset_to_arrays)

__all__ = ["TRAIN", "VALID", "TEST", "DataError", "Dataset", "load_dataset", "write_dataset",
           "dataset_to_arrays"]
