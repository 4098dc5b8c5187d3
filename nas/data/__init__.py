"""Data: readers for every FER format, SynthFER, batched augmentation, batching.

Scripts call :func:`open_data` (or :func:`open_data_from_args` after
:func:`add_data_args`); library users call :func:`load_dataset`. Every reader
returns a :class:`FERData` (uint8 N×1×H×W images, int64 labels, split codes).
Run ``python -m nas.data inspect PATH`` to see what a reader makes of a path.
"""
from nas.data.dataset import FER_CLASSES, SPLITS, FERData
from nas.data.readers import FORMATS, detect_format, load_dataset
from nas.data.source import DATASETS, add_data_args, open_data, open_data_from_args

__all__ = ["FERData", "FER_CLASSES", "SPLITS", "FORMATS", "DATASETS", "load_dataset", "detect_format",
           "open_data", "add_data_args", "open_data_from_args"]
