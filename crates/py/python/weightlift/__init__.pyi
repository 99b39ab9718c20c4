"""Type stubs for weightlift: safetensors checkpoints loaded as fast as the hardware allows."""

import enum
import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

__version__: str

PathLike = Union[str, os.PathLike]
Sources = Union[PathLike, Sequence[PathLike]]
Device = Union[str, int, Any]  # "cpu", "cuda:N", N, or a torch.device
Keys = Union[Collection[str], Callable[[str], bool], None]
Shard = Union[Mapping[str, int], Callable[[str], Optional[int]], None]
DtypeArg = Union[Any, str, None]  # a floating-point torch.dtype or its name

class Backend(enum.Enum):
    """A way of reading the files. Names match InstantTensor's."""

    URING = "URING"
    URING_BUFFERED = "URING_BUFFERED"
    AIO = "AIO"
    AIO_BUFFERED = "AIO_BUFFERED"
    PREAD = "PREAD"
    PREAD_BUFFERED = "PREAD_BUFFERED"
    MMAP = "MMAP"
    CUFILE = "CUFILE"

class BackendPolicy(enum.Enum):
    """A family of backends: BUFFERED reads through the page cache, DIRECT bypasses it."""

    BUFFERED = "BUFFERED"
    DIRECT = "DIRECT"

BackendArg = Union[Backend, BackendPolicy, str, Sequence[Union[Backend, BackendPolicy, str]], None]

class WeightliftError(Exception):
    """Base of every error weightlift raises."""

class HeaderError(WeightliftError, ValueError):
    """A file is not a valid safetensors file, or shards and index disagree."""

class WeightliftIOError(WeightliftError, OSError):
    """A file could not be opened or read, was truncated, or changed during a load."""

class MissingFileError(WeightliftIOError, FileNotFoundError):
    """A file or directory does not exist."""

class WeightliftMemoryError(WeightliftError, MemoryError):
    """The process may not have the memory a file needs; the message names
    the file and the bytes asked for."""

class TensorNotFoundError(WeightliftError, KeyError):
    """A name that is not among the checkpoint's (selected) tensors."""

class DtypeError(WeightliftError, TypeError):
    """A tensor's dtype that the framework cannot represent."""

class BackendError(WeightliftError, RuntimeError):
    """An unknown backend name, or no backend able to read the files."""

class DeviceError(WeightliftError, RuntimeError):
    """A device that is unknown, absent, or out of memory."""

class SettingError(WeightliftError, ValueError):
    """A setting out of range (an argument or a WEIGHTLIFT_* variable)."""

class UnsupportedError(WeightliftError, NotImplementedError):
    """An argument this version accepts but cannot act on yet."""

class ClosedError(WeightliftError, ValueError):
    """A handle used after it was closed."""

class MismatchError(WeightliftError, RuntimeError):
    """load_into: names, shapes or dtypes of the target and the checkpoint
    differ, or a target tensor cannot be written in place."""

class InvalidArgumentError(WeightliftError, TypeError):
    """An argument of the wrong type: says which argument, and what it got."""

@dataclass(frozen=True)
class TensorMetadata:
    """Where a tensor is and what it holds, as its header says."""

    name: str
    dtype: str  # the safetensors name, such as "BF16"
    shape: Tuple[int, ...]
    file: str
    data_offsets: Tuple[int, int]  # relative to the file's data section, as in the header
    offset: int  # absolute offset of the first byte in the file

class TensorSlice:
    """A lazily read tensor, indexed like safetensors' get_slice."""

    def __init__(self, handle: "SafeOpen", name: str, dtype: str, shape: Tuple[int, ...]) -> None: ...
    def __len__(self) -> int: ...
    def get_shape(self) -> List[int]: ...
    def get_dtype(self) -> str: ...
    def __getitem__(self, index: Any) -> Any: ...

class SafeOpen:
    """An open checkpoint: use as a context manager."""

    buffer_size: int
    total_tensor_size: int
    def __init__(
        self,
        filenames: Sources,
        framework: str = "pt",
        device: Device = "cpu",
        process_group: Any = None,
        *,
        backend: BackendArg = None,
        copy: bool = True,
        buffer_size: Optional[int] = None,
        keys: Keys = None,
        progress: bool = False,
        pinned_bytes: Optional[int] = None,
        fill_threads: Optional[int] = None,
        mmap: bool = True,
        shard: Shard = None,
        dtype: DtypeArg = None,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None: ...
    @property
    def backend(self) -> Optional[str]: ...
    def __enter__(self) -> "SafeOpen": ...
    def __exit__(self, *exc: Any) -> None: ...
    def close(self) -> None: ...
    def keys(self) -> List[str]: ...
    def offset_keys(self) -> List[str]: ...
    def metadata(self) -> Optional[Dict[str, str]]: ...
    def tensors(self) -> Iterator[Tuple[str, Any]]: ...
    def get_tensor(self, name: str) -> Any: ...
    def get_sharded(self, name: str, dim: int) -> Any: ...
    def group_stats(self) -> Optional[List[Dict[str, int]]]: ...
    def get_tensors(self) -> Dict[str, Any]: ...
    def get_slice(self, name: str) -> TensorSlice: ...
    def get_tensor_metadata(self, name: str) -> TensorMetadata: ...

def safe_open(
    filenames: Sources,
    framework: str = "pt",
    device: Device = "cpu",
    process_group: Any = None,
    *,
    backend: BackendArg = None,
    copy: bool = True,
    buffer_size: Optional[int] = None,
    keys: Keys = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    mmap: bool = True,
    shard: Shard = None,
    dtype: DtypeArg = None,
    cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> SafeOpen: ...
def load_file(
    filename: Sources,
    device: Device = "cpu",
    *,
    backend: BackendArg = None,
    keys: Keys = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    mmap: bool = True,
    process_group: Any = None,
    shard: Shard = None,
    dtype: DtypeArg = None,
    cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> Dict[str, Any]: ...
def load(path: Sources, device: Device = "cpu", **options: Any) -> Dict[str, Any]:
    """load_file's: `options` are its keyword arguments."""

class IncompatibleKeys(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]

def load_into(
    target: Union[Mapping[str, Any], Any],
    filenames: Sources,
    *,
    strict: bool = True,
    backend: BackendArg = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    process_group: Any = None,
    shard: Shard = None,
    dtype: DtypeArg = None,
    cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
) -> IncompatibleKeys: ...
