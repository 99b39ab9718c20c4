"""weightlift: load safetensors checkpoints into memory as fast as the hardware allows.

A drop-in for safetensors and InstantTensor::

    from weightlift import safe_open, load_file, load_into

    with safe_open("model.safetensors.index.json", framework="pt") as f:
        for name, tensor in f.tensors():   # in completion order
            ...
    state = load_file("model.safetensors")
    load_into(model, "checkpoint_dir/")

Files are read with io_uring, Linux AIO, a pread pool or mmap, chosen from
where the files are (or by `backend=` / WEIGHTLIFT_BACKEND); the GIL is
released while waiting, and Ctrl-C cancels a load promptly.
"""

from ._api import (
    Backend,
    BackendPolicy,
    IncompatibleKeys,
    SafeOpen,
    TensorMetadata,
    TensorSlice,
    load,
    load_file,
    load_into,
    safe_open,
)
from ._errors import (
    BackendError,
    ClosedError,
    DeviceError,
    DtypeError,
    HeaderError,
    InvalidArgumentError,
    MismatchError,
    MissingFileError,
    SettingError,
    TensorNotFoundError,
    UnsupportedError,
    WeightliftError,
    WeightliftIOError,
    WeightliftMemoryError,
)
from ._weightlift import __version__

__all__ = [
    "Backend",
    "BackendPolicy",
    "IncompatibleKeys",
    "SafeOpen",
    "TensorMetadata",
    "TensorSlice",
    "load",
    "load_file",
    "load_into",
    "safe_open",
    "BackendError",
    "ClosedError",
    "DeviceError",
    "DtypeError",
    "HeaderError",
    "InvalidArgumentError",
    "MismatchError",
    "MissingFileError",
    "SettingError",
    "TensorNotFoundError",
    "UnsupportedError",
    "WeightliftError",
    "WeightliftIOError",
    "WeightliftMemoryError",
    "__version__",
]
