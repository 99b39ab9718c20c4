"""The exceptions weightlift raises: one hierarchy under WeightliftError.

Each class also derives from the built-in exception it resembles, so code
written for safetensors (which raises FileNotFoundError, KeyError, ...)
keeps working. Every message names the file and, where one is involved,
the tensor.
"""


class WeightliftError(Exception):
    """Base of every error weightlift raises."""


class HeaderError(WeightliftError, ValueError):
    """A file is not a valid safetensors file, or shards and index disagree."""


class WeightliftIOError(WeightliftError, OSError):
    """A file could not be opened or read, was truncated, or changed during a load."""


class MissingFileError(WeightliftIOError, FileNotFoundError):
    """A file or directory does not exist."""


class WeightliftMemoryError(WeightliftError, MemoryError):
    """The process may not have the memory a file needs (an address-space
    limit, strict overcommit): a header, a session or a read plan too large
    for it. The message names the file and the bytes asked for."""


class TensorNotFoundError(WeightliftError, KeyError):
    """A name that is not among the checkpoint's (selected) tensors."""

    def __str__(self) -> str:
        # KeyError quotes its argument; a message reads better as is.
        return str(self.args[0]) if self.args else ""


class DtypeError(WeightliftError, TypeError):
    """A tensor's dtype that the framework cannot represent."""


class BackendError(WeightliftError, RuntimeError):
    """An unknown backend name, or no backend able to read the files."""


class DeviceError(WeightliftError, RuntimeError):
    """A device that is unknown, absent, or out of memory."""


class SettingError(WeightliftError, ValueError):
    """A setting out of range (an argument or a WEIGHTLIFT_* variable)."""


class ClosedError(WeightliftError, ValueError):
    """A handle used after it was closed."""


class MismatchError(WeightliftError, RuntimeError):
    """load_into: names, shapes or dtypes of the target and the checkpoint
    differ, or a target tensor cannot be written in place (on the meta
    device, or an inference tensor outside inference mode)."""


class InvalidArgumentError(WeightliftError, TypeError):
    """An argument of the wrong type: says which argument, and what it got."""


class UnsupportedError(WeightliftError, NotImplementedError):
    """An argument this version accepts but cannot act on yet."""


__all__ = [
    "WeightliftError",
    "HeaderError",
    "WeightliftIOError",
    "MissingFileError",
    "WeightliftMemoryError",
    "TensorNotFoundError",
    "DtypeError",
    "BackendError",
    "DeviceError",
    "SettingError",
    "ClosedError",
    "MismatchError",
    "InvalidArgumentError",
    "UnsupportedError",
]
