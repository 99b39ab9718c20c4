"""safe_open, load_file, load and load_into: the public API.

Every decision about loading lives in Rust (weightlift._weightlift, over
the weightlift crate): what to read and how, device names, settings and
their checks, the selection, where tensors go on a device. This module
turns arguments into calls and bytes into tensors, and asks torch what
only torch knows (its devices, streams and allocator).
"""

import enum
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from . import _group, _weightlift
from ._errors import (
    BackendError,
    DeviceError,
    DtypeError,
    InvalidArgumentError,
    MismatchError,
    SettingError,
    WeightliftError,
)
from ._frameworks import check_framework, framework_shape, to_framework, torch_dtype
from ._progress import progress as _progress

PathLike = Union[str, "os.PathLike[str]"]


class Backend(enum.Enum):
    """A way of reading the files. Names match InstantTensor's.

    Direct backends (URING, AIO, PREAD) bypass the page cache with O_DIRECT;
    the _BUFFERED ones read through it; MMAP maps the files; CUFILE reads
    straight into GPU memory with GPUDirect Storage (libcufile; NVIDIA GPU
    devices only), and is used only when named first.
    """

    URING = "URING"
    URING_BUFFERED = "URING_BUFFERED"
    AIO = "AIO"
    AIO_BUFFERED = "AIO_BUFFERED"
    PREAD = "PREAD"
    PREAD_BUFFERED = "PREAD_BUFFERED"
    MMAP = "MMAP"
    CUFILE = "CUFILE"


class BackendPolicy(enum.Enum):
    """A family of backends.

    BUFFERED: MMAP, URING_BUFFERED, PREAD_BUFFERED, AIO_BUFFERED (through the
    page cache: best when the same model is loaded again soon).
    DIRECT: URING, AIO, PREAD (O_DIRECT: best for a cold, one-off load).
    """

    BUFFERED = "BUFFERED"
    DIRECT = "DIRECT"


BackendArg = Union[Backend, BackendPolicy, str, Sequence[Union[Backend, BackendPolicy, str]], None]


def _backend_names(backend: BackendArg) -> Optional[str]:
    """`backend` as the comma-separated names Rust parses; None for automatic."""
    if backend is None:
        return None
    if isinstance(backend, (Backend, BackendPolicy, str)):
        items = [backend]
    else:
        try:
            items = list(backend)
        except TypeError:
            raise BackendError(
                f"backend must be a Backend, a BackendPolicy, a name, or a list of them; got {backend!r}"
            ) from None
    names = []
    for b in items:
        if isinstance(b, (Backend, BackendPolicy)):
            names.append(b.value)
        elif isinstance(b, str):
            names.append(b)
        else:
            raise BackendError(
                f"backend must be a Backend, a BackendPolicy, a name, or a list of them; got {b!r}"
            )
    if not names:
        raise BackendError("backend=[] names no backend; pass None for the automatic choice")
    return ",".join(names)


def _shard_rule(shard: Any) -> Callable[[str], Optional[int]]:
    """`shard=` as a function from a name to the dimension to split it
    along, or None to load it whole."""
    if shard is None:
        return lambda name: None
    if isinstance(shard, Mapping):
        for k, v in shard.items():
            if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int):
                raise InvalidArgumentError(
                    f"shard must map tensor names (str) to dimensions (int); got {k!r}: {v!r}"
                )
        rule = dict(shard)
        return rule.get
    if callable(shard):

        def call(name: str) -> Optional[int]:
            dim = shard(name)
            if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
                raise InvalidArgumentError(f"shard({name!r}) returned {dim!r}, not a dimension (int) or None")
            return dim

        return call
    raise InvalidArgumentError(
        f"shard must be a mapping from names to dimensions or a function, not {type(shard).__name__}"
    )


def _name(name: Any) -> str:
    """A tensor name; anything but a str is an InvalidArgumentError."""
    if not isinstance(name, str):
        raise InvalidArgumentError(f"a tensor name must be a str, not {type(name).__name__} {name!r}")
    return name


def _flag(name: str, value: Any) -> bool:
    """A True/False argument; anything else is an InvalidArgumentError."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, not {value!r}")
    return value


def _sources(filenames: Any) -> List[str]:
    """One path or several, as strings."""
    if isinstance(filenames, (str, bytes, os.PathLike)):
        return [os.fsdecode(filenames)]
    try:
        paths = [os.fsdecode(f) for f in filenames]
    except TypeError:
        raise TypeError(
            f"filenames must be a path or a list of paths, not {type(filenames).__name__}"
        ) from None
    if not paths:
        raise SettingError("no files given")
    return paths


def _cast_dtype(dtype: Any) -> Any:
    """`dtype=` as a floating-point torch.dtype (a torch.dtype or its name,
    such as "float16"), or None."""
    if dtype is None:
        return None
    try:
        import torch
    except ImportError:
        raise SettingError("dtype= converts torch tensors and needs torch") from None
    found = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise InvalidArgumentError(
            f"dtype must be a floating-point torch.dtype (such as torch.float16) or its name, not {dtype!r}"
        )
    return found


def _cast(tensor: Any, dtype: Any, name: str, file: Any) -> Any:
    """`tensor` converted to `dtype` when it is floating point and of
    another dtype (torch's own `.to`, so byte for byte what `.to(dtype)`
    of the reference gives); anything else as it is."""
    if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point():
        return tensor
    try:
        return tensor.to(dtype)
    except (RuntimeError, TypeError) as e:
        raise DtypeError(f"{os.fspath(file)}: tensor {name!r}: cannot convert {tensor.dtype} to {dtype}: {e}") from e


class _Gpu(NamedTuple):
    """A GPU as torch names it (where tensors are allocated) and as the
    upload pipeline names it."""

    torch: Any
    name: str

    def stream(self) -> Optional[int]:
        """torch's current stream on the device, which every copy follows."""
        if self.torch.type != "cuda":
            return None
        import torch

        return int(torch.cuda.current_stream(self.torch).cuda_stream)


def _device(device: Any) -> Union[str, _Gpu]:
    """"cpu", or the GPU `device` names ("cuda", "cuda:N", N or a torch.device)."""
    if device is None:
        return "cpu"
    if isinstance(device, bool):
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda:N', N or a torch.device")
    if isinstance(device, int):
        name = f"cuda:{device}"
    elif isinstance(device, str):
        name = device
    elif hasattr(device, "type") and hasattr(device, "index"):  # torch.device
        name = device.type if device.index is None else f"{device.type}:{device.index}"
    else:
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda:N', N or a torch.device")
    kind, index = _weightlift.placement(name)
    if kind == "cpu":
        return "cpu"
    advice = "use device='cpu' (load_into copies into tensors on any device)"
    try:
        import torch
    except ImportError:
        raise DeviceError(f"device {device!r}: loading onto a GPU needs torch; {advice}") from None
    # ROCm builds of torch name AMD GPUs "cuda" too; they run on HIP.
    runtime = "hip" if getattr(torch.version, "hip", None) else "cuda"
    try:
        _weightlift.gpu_driver(runtime)
    except DeviceError as e:
        raise DeviceError(f"device {device!r}: {e}; {advice}") from None
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: torch {torch.__version__} sees no CUDA device; {advice}")
    if index is None:
        index = torch.cuda.current_device()
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"device {device!r}: torch sees {count} CUDA device(s)")
    return _Gpu(torch.device("cuda", index), f"{runtime}:{index}")


def _allocator(gpu: _Gpu) -> Callable[[str, str, List[int], str], Tuple[Any, int, int]]:
    """The pipeline's callback: a new tensor on the device for each tensor,
    from torch's caching allocator."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError

    def alloc(name: str, dtype: str, shape: List[int], file: str) -> Tuple[Any, int, int]:
        dt = torch_dtype(dtype, name)
        try:
            t = torch.empty(framework_shape(dtype, shape, name), dtype=dt, device=gpu.torch)
        except oom as e:
            free = ""
            if gpu.torch.type == "cuda":
                free = f" ({torch.cuda.mem_get_info(gpu.torch)[0]} bytes free)"
            raise DeviceError(
                f"{file}: tensor {name!r}: out of memory on {gpu.torch} allocating "
                f"{dtype} {list(shape)}{free}"
            ) from e
        return t, t.data_ptr(), t.nbytes

    return alloc


def _uploaded(upload: Any, bar: Any, buffer: Any = None) -> Iterator[Tuple[str, Any]]:
    """`(name, tensor)` from a pass onto a device, as each lands. With a
    reused `buffer` (copy=False), a tensor placed in it comes as
    `(offset, dtype, shape)` and is viewed there; its region is given back
    once the caller asks for the next. Stopping early waits for the copies
    in flight."""
    try:
        for batch in upload:
            for name, owner in batch:
                if isinstance(owner, tuple):
                    start, dtype, shape = owner
                    dt = torch_dtype(dtype, name)
                    shp = framework_shape(dtype, shape, name)
                    n = dt.itemsize
                    for d in shp:
                        n *= d
                    tensor = buffer[start : start + n].view(dt).view(shp)
                    bar.update(tensor.nbytes)
                    yield name, tensor
                    # The caller asked for the next: the region may be reused.
                    upload.give_back(start)
                else:
                    bar.update(owner.nbytes)
                    yield name, owner
    finally:
        upload.close()
        bar.close()


@dataclass(frozen=True)
class TensorMetadata:
    """Where a tensor is and what it holds, as its header says."""

    name: str
    #: The safetensors dtype name, such as "BF16".
    dtype: str
    shape: Tuple[int, ...]
    #: The shard holding it.
    file: str
    #: Its byte range relative to the shard's data section, as in the header.
    data_offsets: Tuple[int, int]
    #: The absolute offset of its first byte in the file.
    offset: int


class SafeOpen:
    """An open checkpoint, made by `safe_open`; use it as a context manager.

    Tensors it hands out stay valid after the handle is closed: each owns
    its memory or keeps alive the memory it views. Host tensors that MMAP
    served (the automatic choice for cached files and tmpfs) view the file,
    copy-on-write, as safetensors' do: another process's writes to the file
    show through, and truncating it makes touching them raise SIGBUS; with
    mmap=False they never do. A closed handle raises ClosedError.
    """

    def __init__(
        self,
        filenames: Any,
        framework: str = "pt",
        device: Any = "cpu",
        process_group: Any = None,
        *,
        backend: BackendArg = None,
        copy: bool = True,
        buffer_size: Optional[int] = None,
        keys: Any = None,
        progress: bool = False,
        pinned_bytes: Optional[int] = None,
        fill_threads: Optional[int] = None,
        mmap: bool = True,
        shard: Any = None,
        dtype: Any = None,
        cache_dir: Any = None,
    ) -> None:
        self._group: Optional[_group.Group] = None
        self._dtype: Any = None
        if process_group is not None:
            # First, so that every check below that fails on one rank
            # fails every rank, naming it, instead of leaving the others
            # waiting in the group's first collective.
            self._group = _group.Group(process_group)
        error: Optional[BaseException] = None
        try:
            self._open(
                filenames, framework, device, backend, buffer_size, pinned_bytes, fill_threads, mmap, shard, cache_dir
            )
            self._dtype = _cast_dtype(dtype)
            if self._dtype is not None and self._framework != "pt":
                raise SettingError(f"dtype= converts torch tensors; framework={framework!r} does not make them")
            if keys is not None:
                self._session.select(keys)
        except Exception as e:
            if self._group is None:
                raise
            error = e
        if self._group is not None:
            fingerprint = None if error is not None else self._session.fingerprint()
            _group.check_same_checkpoint(self._group, fingerprint, error)
        self._copy = bool(copy)
        self._progress = bool(progress)
        #: Staging memory for device copies, in bytes.
        self.buffer_size: int = self._session.buffer_size
        #: Bytes of the selected tensors.
        self.total_tensor_size: int = self._session.total_bytes

    def _open(
        self,
        filenames: Any,
        framework: str,
        device: Any,
        backend: BackendArg,
        buffer_size: Optional[int],
        pinned_bytes: Optional[int],
        fill_threads: Optional[int],
        mmap: bool,
        shard: Any,
        cache_dir: Any = None,
    ) -> None:
        """Check the arguments and open the checkpoint."""
        self._framework = check_framework(framework)
        self._device = _device(device)
        if isinstance(self._device, _Gpu) and self._framework != "pt":
            raise SettingError(
                f"framework={framework!r} holds host memory only; use framework='pt' for device {device!r}"
            )
        if shard is not None and self._group is None:
            raise SettingError("shard= splits tensors across a process_group; pass one")
        self._shard = _shard_rule(shard)
        gpu = self._device
        args = (_sources(filenames), _backend_names(backend), buffer_size, pinned_bytes, fill_threads)
        cache = None if cache_dir is None else os.fsdecode(cache_dir)
        if self._group is None:
            self._session = _weightlift._Session(
                *args,
                gpu.name if isinstance(gpu, _Gpu) else None,
                _allocator(gpu) if isinstance(gpu, _Gpu) else None,
                _flag("mmap", mmap),
                cache,
            )
        else:
            # The group reads into host memory and exchanges; tensors are
            # then put where `device` says.
            self._session = _weightlift._Session(*args, None, None, _flag("mmap", mmap), cache)

    def __enter__(self) -> "SafeOpen":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what is loading and free what was read ahead. Tensors
        already handed out stay valid."""
        self._session.close()

    @property
    def backend(self) -> Optional[str]:
        """The backend of the latest load and its settings, and for a GPU
        the staging of the latest load onto it; None before one."""
        return self._session.describe()

    def keys(self) -> List[str]:
        """The selected tensor names, sorted."""
        return self._session.keys()

    def offset_keys(self) -> List[str]:
        """The selected tensor names in file order (shard, then offset)."""
        return self._session.offset_keys()

    def metadata(self) -> Optional[Dict[str, str]]:
        """The shards' `__metadata__`, merged (the first shard with a key
        gives its value); None when no shard has any."""
        return self._session.metadata()

    def _convert(self, name: str, dtype: str, shape: Sequence[int], buf: Any) -> Any:
        return to_framework(self._framework, buf, dtype, shape, name)

    def _cast(self, name: str, tensor: Any) -> Any:
        """`tensor` in the handle's `dtype=` (floating point only)."""
        if self._dtype is None:
            return tensor
        return _cast(tensor, self._dtype, name, self._session.info(name)[2])

    def tensors(self) -> Iterator[Tuple[str, Any]]:
        """Yield `(name, tensor)` for every selected tensor as it completes
        (completion order). Each call is a new pass over all of them. With
        a process_group every rank must call it and run it to the end (a
        rank that stops early still takes part in the group's exchanges)."""
        if self._group is not None:
            return self._group_load(lambda: [self._sharded_request(k, self._shard(k)) for k in self.offset_keys()])
        return self._tensors(self._copy)

    def _group_load(self, requests: Callable[[], List[Tuple[str, Optional[int]]]]) -> Iterator[Tuple[str, Any]]:
        """This rank's `requests()`, loaded with the group; a rank whose
        requests cannot be made (a shard= function that raised) fails every
        rank."""
        group = self._group
        assert group is not None
        made: List[Tuple[str, Optional[int]]] = []
        error = None
        try:
            made = requests()
        except Exception as e:
            error = e
        group.agree(error, "choosing this rank's tensors")
        plan = _group.plan(self._session, group, made, self._target_device(), self._framework)
        self._group_stats = plan.load.stats()
        return self._group_deliver(_group.run(plan, group))

    def _group_deliver(self, loaded: Iterator[Tuple[str, Any]]) -> Iterator[Tuple[str, Any]]:
        bar = _progress(self._progress, self.total_tensor_size)
        try:
            for name, tensor in loaded:
                bar.update(tensor.nbytes)
                yield name, self._cast(name, tensor)
        finally:
            loaded.close()
            bar.close()

    def _target_device(self) -> Any:
        gpu = self._device
        return gpu.torch if isinstance(gpu, _Gpu) else "cpu"

    def group_stats(self) -> Optional[List[Dict[str, int]]]:
        """With a process_group, after a load: per rank, the bytes it read
        from storage, sent to other ranks, received from them, and copied
        from its own reads. None before a group load."""
        stats = getattr(self, "_group_stats", None)
        if stats is None:
            return None
        return [{"read": r, "sent": s, "received": v, "local": l} for r, s, v, l in stats]

    def get_sharded(self, name: str, dim: int) -> Any:
        """This rank's part of tensor `name` split along `dim` across the
        process_group, as `torch.tensor_split(tensor, group_size, dim)[rank]`
        (contiguous, owning its memory). Collective: every rank of the
        group calls it (each with its own name and dim, if it likes).
        Without a process_group, the whole tensor."""
        if self._group is None:
            self._sharded_request(name, dim)
            return self.get_tensor(name)
        return dict(self._group_load(lambda: [self._sharded_request(name, dim)]))[name]

    def _sharded_request(self, name: str, dim: Optional[int]) -> Tuple[str, Optional[int]]:
        """`(name, dim)` checked: a selected tensor's name, and a dimension
        (negative ones counted from the end, as torch does) or None."""
        _name(name)
        if dim is None:
            self._session.info(name)  # a selected tensor, or TensorNotFoundError
            return name, None
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise InvalidArgumentError(f"dim must be an int, not {type(dim).__name__} {dim!r}")
        rank = len(self._session.info(name)[1])
        if dim < 0:
            dim += rank
        if not 0 <= dim < rank:
            raise SettingError(f"tensor {name!r} has {rank} dimensions: no dimension {dim} to split along")
        return name, dim

    def _tensors(self, copy: bool) -> Iterator[Tuple[str, Any]]:
        bar = _progress(self._progress, self.total_tensor_size)
        gpu = self._device
        if isinstance(gpu, _Gpu) and copy:
            stream = self._session.stream(gpu.stream())
            try:
                for name, tensor in stream:
                    bar.update(tensor.nbytes)
                    yield name, self._cast(name, tensor)
            finally:
                bar.close()
            return
        if isinstance(gpu, _Gpu):
            import torch

            need = self._session.buffer_needed(self.buffer_size)
            if need > self.buffer_size:
                warnings.warn(
                    f"copy=False: the tensors need {need} bytes (aligned) of a {self.buffer_size}-byte "
                    "device buffer, which is reused, so each tensor is valid only until the next is "
                    "requested; clone what you keep, or use copy=True",
                    stacklevel=3,
                )
            try:
                buf = torch.empty(self.buffer_size, dtype=torch.uint8, device=gpu.torch)
            except RuntimeError as e:  # torch's out-of-memory errors among them
                raise DeviceError(
                    f"copy=False: cannot allocate the {self.buffer_size}-byte buffer on {gpu.torch}: {e}; "
                    "pass a smaller buffer_size"
                ) from e
            upload = self._session.upload(
                gpu.name, _allocator(gpu), gpu.stream(), (buf, buf.data_ptr(), buf.numel())
            )
            for name, tensor in _uploaded(upload, bar, buf):
                yield name, self._cast(name, tensor)
            return
        stream = self._session.stream()
        try:
            for name, dtype, shape, buf in stream:
                tensor = self._convert(name, dtype, shape, buf)
                bar.update(len(buf))
                yield name, self._cast(name, tensor)
        finally:
            bar.close()

    def get_tensor(self, name: str) -> Any:
        """The selected tensor `name`; each call returns a new tensor. With
        a process_group it is collective: every rank of the group calls it
        (each with its own name, if it likes), and the group reads each
        byte once."""
        if self._group is not None:
            return dict(self._group_load(lambda: [self._sharded_request(name, None)]))[name]
        _name(name)
        gpu = self._device
        if isinstance(gpu, _Gpu):
            return self._cast(name, self._session.get_into(name, gpu.stream()))
        dtype, shape, buf = self._session.get(name)
        return self._cast(name, self._convert(name, dtype, shape, buf))

    def get_tensors(self) -> Dict[str, Any]:
        """Every selected tensor, by name (in sorted order); each owns its
        memory, whatever `copy` says."""
        loaded = dict(self.tensors() if self._group is not None else self._tensors(copy=True))
        return {k: loaded[k] for k in sorted(loaded)}

    def get_slice(self, name: str) -> "TensorSlice":
        """A tensor to index lazily: only the rows an index needs are read."""
        dtype, shape, *_ = self._session.info(_name(name))
        return TensorSlice(self, name, dtype, tuple(shape))

    def get_tensor_metadata(self, name: str) -> TensorMetadata:
        """Where the selected tensor `name` is and what it holds."""
        dtype, shape, file, start, end, data_start = self._session.info(_name(name))
        return TensorMetadata(
            name=name,
            dtype=dtype,
            shape=tuple(shape),
            file=os.fspath(file),
            data_offsets=(start - data_start, end - data_start),
            offset=start,
        )


class TensorSlice:
    """A tensor indexed like safetensors' `get_slice`: `[0:10]`, `[:, 5:]`,
    `[3]`, `[..., 1:2]`. Indexing reads only the rows of the first
    dimension that the index touches, then indexes them."""

    def __init__(self, handle: SafeOpen, name: str, dtype: str, shape: Tuple[int, ...]) -> None:
        self._handle = handle
        self._name = name
        self._dtype = dtype
        self._shape = shape

    def get_shape(self) -> List[int]:
        return list(self._shape)

    def get_dtype(self) -> str:
        return self._dtype

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d tensor")
        return self._shape[0]

    def _rows(self, first: Any) -> Optional[Tuple[int, int, Any]]:
        """For a first index component, the rows `lo..hi` to read and the
        component relative to `lo`; None when all must be read."""
        n = self._shape[0]
        if isinstance(first, bool) or not isinstance(first, (int, slice)):
            return None
        if isinstance(first, int):
            i = first + n if first < 0 else first
            if not 0 <= i < n:
                raise IndexError(f"index {first} is out of range for dimension 0 of size {n}")
            return i, i + 1, 0
        rows = range(*first.indices(n))
        if not rows:
            return 0, 0, slice(0, 0)
        lo, hi = min(rows), max(rows) + 1
        stop = rows.stop - lo
        return lo, hi, slice(rows.start - lo, stop if stop >= 0 else None, rows.step)

    def __getitem__(self, index: Any) -> Any:
        parts = index if isinstance(index, tuple) else (index,)
        rows = self._rows(parts[0]) if self._shape and parts else None
        lo, hi, first = rows if rows is not None else (None, None, None)
        h = self._handle
        buf, read = h._session.get_rows(self._name, lo, hi)
        # `read` is None where the whole tensor was read (rows that are not
        # whole bytes, or an index that needs every row).
        shape = self._shape if read is None else (read,) + self._shape[1:]
        part = h._convert(self._name, self._dtype, shape, buf)
        if read is None:
            part = part[index]
        else:
            part = part[(first,) + tuple(parts[1:])]
        if isinstance(h._device, _Gpu):
            # A slice is read into host memory, then copied on its own.
            part = part.to(h._device.torch)
        return h._cast(self._name, part)


def safe_open(
    filenames: Any,
    framework: str = "pt",
    device: Any = "cpu",
    process_group: Any = None,
    *,
    backend: BackendArg = None,
    copy: bool = True,
    buffer_size: Optional[int] = None,
    keys: Union[Collection[str], Callable[[str], bool], None] = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    mmap: bool = True,
    shard: Any = None,
    dtype: Any = None,
    cache_dir: Any = None,
) -> SafeOpen:
    """Open a checkpoint for loading, as safetensors' and InstantTensor's
    `safe_open` do.

    Args:
        filenames: a `.safetensors` file, a list of them, a directory (its
            `*.safetensors.index.json` if it holds one, else every
            `*.safetensors` file in it), or a `model.safetensors.index.json`;
            str or os.PathLike.
        framework: "pt" for torch tensors, "np" for numpy arrays (numpy has
            no bfloat16, float8 or float4: those raise DtypeError).
        device: "cpu", or a CUDA device: "cuda", "cuda:N", N or a
            torch.device (with a ROCm build of torch, AMD GPUs by the same
            names, through HIP). On a GPU each tensor is allocated by torch (so
            torch.cuda.memory_allocated counts it, and it is freed on its
            own) and filled through pinned staging memory
            (WEIGHTLIFT_PINNED_BYTES, 128 MiB by default, filled by
            WEIGHTLIFT_FILL_THREADS threads) with copies ordered after
            torch's current stream (the one current when the pass or
            get_tensor starts). A missing driver or GPU,
            or running out of memory, raises DeviceError.
        process_group: a torch.distributed group (the world, or one from
            dist.new_group) that loads together: every rank of it opens the
            same files (a rank that fails, or opens a different checkpoint,
            makes every rank raise, naming it), the group reads each byte
            from storage once, and each rank receives exactly its tensors
            through the group's all_to_all_single (gloo on CPU, NCCL on
            GPUs). keys= may differ between ranks. tensors(), get_tensor,
            get_sharded and get_tensors are then collective: every rank
            calls them, in the same order. None: this process alone.
        backend: a Backend, a BackendPolicy, a name, or a list of them,
            tried in order. None: the WEIGHTLIFT_BACKEND variable if set,
            else chosen from where the files are (MMAP for tmpfs and cached
            files, direct reads for cold files).
        copy: InstantTensor's flag. True: every tensor owns its memory and
            stays valid. False, on a GPU: tensors() yields views into one
            device buffer of buffer_size bytes, reused as the pass goes on,
            so each is valid only until the next is requested (a warning
            says so when the buffer is smaller than the tensors); tensors
            larger than the buffer get their own memory, and get_tensor and
            get_tensors always do. Host tensors never view a reused buffer.
        buffer_size: memory for reads in flight, in bytes, and the device
            buffer of copy=False.
        keys: load only these tensors: a collection of names or a predicate
            on names. Only their bytes are read; keys() lists only them.
        progress: show a progress bar (bytes, GB/s, time left) on stderr
            while tensors() runs (tqdm's when installed).
        pinned_bytes: page-locked staging memory for a GPU load, in bytes
            (at least 4096; None: WEIGHTLIFT_PINNED_BYTES, else 128 MiB).
        fill_threads: threads copying into it (1 to 256; None:
            WEIGHTLIFT_FILL_THREADS, else half the cores, at most 8).
        mmap: True: MMAP may serve host tensors, which then view the files
            (the fastest warm load; see SafeOpen). False: never map; host
            tensors are read into memory of their own, unaffected by
            anything done to the files after they are handed out (MMAP is
            left out of the automatic choice, and naming it alone raises
            BackendError).
        shard: with a process_group of n ranks, which tensors each rank
            receives only its part of: a mapping from name to dimension, or
            a function name -> dimension or None. Rank r then receives
            torch.tensor_split(tensor, n, dim)[r] (contiguous, owning its
            memory) and nothing else of it; tensors not named arrive whole.
        dtype: a floating-point torch.dtype (or its name): floating-point
            tensors are converted to it as they are handed out (on a GPU,
            on the device after the copy), with torch's own `.to(dtype)`,
            so each holds exactly what `.to(dtype)` of the stored tensor
            gives; integer, bool and complex tensors are left as they are.
            Each conversion holds the tensor in both dtypes for a moment:
            one tensor's worth of extra memory at a time. framework="pt"
            only. None: tensors keep the checkpoint's dtypes.
        cache_dir: for an s3:// or http(s):// checkpoint, a directory
            keeping local copies of its shards (default: the
            WEIGHTLIFT_CACHE_DIR variable, else none). Opening fetches each
            shard not held there whole into it (one file per URL and
            version, written under a temporary name and renamed when
            whole), and loads read the copies. Each open still asks the
            server for every shard's header, ETag and size: a copy of
            another version, or one cut short, is never used. Local
            checkpoints ignore it.
    """
    return SafeOpen(
        filenames,
        framework,
        device,
        process_group,
        backend=backend,
        copy=copy,
        buffer_size=buffer_size,
        keys=keys,
        progress=progress,
        pinned_bytes=pinned_bytes,
        fill_threads=fill_threads,
        mmap=mmap,
        shard=shard,
        dtype=dtype,
        cache_dir=cache_dir,
    )


def load_file(
    filename: Any,
    device: Any = "cpu",
    *,
    backend: BackendArg = None,
    keys: Union[Collection[str], Callable[[str], bool], None] = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    mmap: bool = True,
    process_group: Any = None,
    shard: Any = None,
    dtype: Any = None,
    cache_dir: Any = None,
) -> Dict[str, Any]:
    """Load every tensor of a checkpoint into a dict of torch tensors, as
    `safetensors.torch.load_file` does. `filename` may also be a list of
    files, a directory or an index; the other arguments are safe_open's
    (mmap=False for host tensors independent of the files; with a
    process_group every rank calls it, and shard= gives each rank its
    parts; dtype= converts floating-point tensors as they land)."""
    with safe_open(
        filename,
        "pt",
        device,
        process_group,
        shard=shard,
        backend=backend,
        keys=keys,
        progress=progress,
        pinned_bytes=pinned_bytes,
        fill_threads=fill_threads,
        mmap=mmap,
        dtype=dtype,
        cache_dir=cache_dir,
    ) as f:
        return f.get_tensors()


def load(path: Any, device: Any = "cpu", **options: Any) -> Dict[str, Any]:
    """Load a sharded checkpoint (a directory or a `model.safetensors.index.json`)
    into a dict of torch tensors; the same as load_file, with its keyword
    arguments."""
    return load_file(path, device, **options)


class IncompatibleKeys(NamedTuple):
    """What load_into found in only one of the target and the checkpoint."""

    #: Names in the target that the checkpoint lacks.
    missing_keys: List[str]
    #: Names in the checkpoint that the target lacks.
    unexpected_keys: List[str]


def load_into(
    target: Any,
    filenames: Any,
    *,
    strict: bool = True,
    backend: BackendArg = None,
    progress: bool = False,
    pinned_bytes: Optional[int] = None,
    fill_threads: Optional[int] = None,
    process_group: Any = None,
    shard: Any = None,
    dtype: Any = None,
    cache_dir: Any = None,
) -> IncompatibleKeys:
    """Copy a checkpoint's tensors into preallocated tensors, as each
    completes, and return the names found on one side only.

    Args:
        target: a dict of tensors (on any device), or an nn.Module (its
            parameters and persistent buffers, by state_dict names). Each
            tensor is written in place, so its storage, device and data_ptr
            stay the same. Targets all on one CUDA device, contiguous and
            not sharing memory are written straight from pinned staging
            memory, ordered after torch's current stream; others are
            filled with `copy_` as each tensor is read.
        filenames: as for safe_open.
        strict: as in torch's load_state_dict: names in one side only raise
            MismatchError; with False they are returned and the rest loaded.
            A shape or dtype that differs is always an error, raised before
            anything is read.
        dtype: a floating-point torch.dtype (or its name): floating-point
            tensors are converted to it as they are written, so their
            targets must be of that dtype (integer and bool tensors are
            written as they are, into targets of their own dtype). Each is
            converted by the copy into its target (`copy_`, the conversion
            `.to(dtype)` does): on the host as it is placed; on a GPU the
            tensor lands in device memory of its own and is converted into
            its target there, one tensor's worth of extra device memory at
            a time. None: every target has its tensor's dtype.
        backend, progress, pinned_bytes, fill_threads, cache_dir: as for safe_open.
        process_group, shard: as for safe_open: every rank of the group
            calls load_into with its own target, the group reads each byte
            once, and with shard= a rank's target holds its part (of the
            part's shape). A mismatch on any rank makes every rank raise.
    """
    import torch

    cast = _cast_dtype(dtype)
    if isinstance(target, torch.nn.Module):
        dests = target.state_dict(keep_vars=True)
    elif isinstance(target, Mapping):
        dests = dict(target)
    else:
        raise InvalidArgumentError(
            f"target must be a dict of tensors or an nn.Module, not {type(target).__name__}"
        )
    if process_group is not None:
        return _load_into_group(
            dests,
            filenames,
            strict,
            process_group,
            shard,
            cast,
            backend=backend,
            progress=progress,
            pinned_bytes=pinned_bytes,
            fill_threads=fill_threads,
            cache_dir=cache_dir,
        )
    with safe_open(
        filenames,
        "pt",
        "cpu",
        backend=backend,
        progress=progress,
        pinned_bytes=pinned_bytes,
        fill_threads=fill_threads,
        cache_dir=cache_dir,
    ) as f:
        common, missing, unexpected = _match_targets(f, dests, strict)
        f._session.select(common)
        for name in common:
            stored, shape, file, *_ = f._session.info(name)
            _check_target(dests[name], name, stored, shape, os.fspath(file), cast)
        gpu = _pipeline_for([dests[k] for k in common])
        if gpu is not None:
            def alloc(name: str, stored: str, shape: List[int], *_: Any) -> Tuple[Any, int, int]:
                t = dests[name]
                dt = torch_dtype(stored, name)
                if t.dtype != dt:
                    # To be converted: lands in memory of its own first.
                    t = torch.empty(framework_shape(stored, shape, name), dtype=dt, device=t.device)
                return t, t.data_ptr(), t.nbytes

            bar = _progress(progress, f.total_tensor_size)
            for name, tensor in _uploaded(f._session.upload(gpu.name, alloc, gpu.stream()), bar):
                if tensor is dests[name]:
                    # Written behind autograd's back, as copy_ under no_grad
                    # would have been: bump the version it checks.
                    torch.autograd.graph.increment_version(tensor)
                else:
                    with torch.no_grad():
                        dests[name].copy_(tensor)
        else:
            with torch.no_grad():
                for name, tensor in f.tensors():
                    dests[name].copy_(tensor)
    return IncompatibleKeys(missing, unexpected)


def _match_targets(f: SafeOpen, dests: Dict[str, Any], strict: bool) -> Tuple[List[str], List[str], List[str]]:
    """The names of `f`'s checkpoint that `dests` holds (in file order),
    the names only `dests` has and those only the checkpoint has; with
    `strict`, either of the latter is a MismatchError. The targets written
    are checked (see _check_targets)."""
    present = f._session.all_keys()
    in_ckpt = set(present)
    missing = sorted(k for k in dests if k not in in_ckpt)
    unexpected = sorted(k for k in present if k not in dests)
    if strict and (missing or unexpected):
        raise MismatchError(
            "load_into(strict=True): "
            + "; ".join(
                part
                for part in (
                    f"missing from the checkpoint: {_names(missing)}" if missing else "",
                    f"not in the target: {_names(unexpected)}" if unexpected else "",
                )
                if part
            )
        )
    common = [k for k in present if k in dests]
    # Only the entries written are checked: with strict=False a module's
    # other state (extra state, quantized parameters) is left alone.
    _check_targets({k: dests[k] for k in common})
    return common, missing, unexpected


def _check_target(dest: Any, name: str, dtype: str, shape: Sequence[int], file: str, cast: Any = None) -> None:
    """A MismatchError unless `dest` has the dtype and shape the
    checkpoint's `name` (or this rank's part of it) has, floating-point
    tensors converted to `cast` when it is given."""
    want = torch_dtype(dtype, name)
    converted = cast is not None and want.is_floating_point and want != cast
    if converted:
        want = cast
    want_shape = framework_shape(dtype, shape, name)
    if dest.dtype != want or tuple(dest.shape) != want_shape:
        as_cast = f" (to be converted to {cast} by dtype=)" if converted else ""
        raise MismatchError(
            f"tensor {name!r} in {file} is {dtype} {list(want_shape)}{as_cast}, "
            f"but the target's is {dest.dtype} {list(dest.shape)}"
        )


def _load_into_group(
    dests: Dict[str, Any], filenames: Any, strict: bool, process_group: Any, shard: Any, cast: Any, **options: Any
) -> IncompatibleKeys:
    """load_into with a process_group: each check is agreed by the group
    before the next collective, so a mismatch on one rank is an error on
    every rank, never a hang."""
    import torch

    with safe_open(filenames, "pt", "cpu", process_group, shard=shard, **options) as f:
        group = f._group
        assert group is not None
        common: List[str] = []
        missing: List[str] = []
        unexpected: List[str] = []
        requests: List[Tuple[str, Optional[int]]] = []
        error = None
        try:
            common, missing, unexpected = _match_targets(f, dests, strict)
            requests = [f._sharded_request(k, f._shard(k)) for k in common]
        except Exception as e:
            error = e
        group.agree(error, "checking load_into's targets")
        plan = _group.plan(f._session, group, requests, group.device, "pt")
        f._group_stats = plan.load.stats()
        error = None
        try:
            for name, dtype, shape, _ in plan.load.outputs():
                file = os.fspath(f._session.info(name)[2])
                _check_target(dests[name], name, dtype, shape, file, cast)
        except Exception as e:
            error = e
        group.agree(error, "checking load_into's targets")
        with torch.no_grad():
            for name, tensor in f._group_deliver(_group.run(plan, group)):
                dests[name].copy_(tensor)
    return IncompatibleKeys(missing, unexpected)


def _check_targets(dests: Dict[str, Any]) -> None:
    """Refuse, before anything is read, targets that cannot be written in
    place: anything but a torch tensor, a tensor on the meta device (it has
    no memory), and an inference tensor outside inference mode (torch
    forbids writing it there)."""
    import torch

    inference = torch.is_inference_mode_enabled()
    for name, t in dests.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(
                f"load_into: target {name!r} is a {type(t).__name__}, not a torch.Tensor"
            )
        if t.is_meta:
            raise MismatchError(
                f"load_into: target {name!r} is on the meta device and has no memory to load into; "
                "materialize it first (module.to_empty(device=...)), or use "
                "module.load_state_dict(load_file(...), assign=True)"
            )
        if t.is_inference() and not inference:
            raise MismatchError(
                f"load_into: target {name!r} is an inference tensor, which torch lets be written "
                "only inside torch.inference_mode()"
            )


def _straight_device(targets: List[Any]) -> Any:
    """The one torch device of `targets` if they can be written straight
    from staging: plain contiguous tensors, all on one device, not
    sharing memory; None otherwise."""
    import torch

    def plain(t: Any) -> bool:
        # Raw bytes are right only for a plain strided tensor: not a
        # wrapper subclass (DTensor), not a lazily conjugated or negated view.
        return (
            type(t) in (torch.Tensor, torch.nn.Parameter)
            and t.layout == torch.strided
            and t.is_contiguous()
            and not t.is_conj()
            and not t.is_neg()
        )

    if not all(plain(t) for t in targets):
        return None
    devices = {t.device for t in targets}
    if len(devices) != 1:
        return None
    if _weightlift.overlapping([(t.data_ptr(), t.nbytes) for t in targets]):
        return None  # shared memory (tied weights): filled one by one
    return next(iter(devices))


def _pipeline_for(targets: List[Any]) -> Optional[_Gpu]:
    """The GPU that load_into writes `targets` on straight from staging
    (see _straight_device), when they are on a CUDA device; None otherwise
    (they are then filled with `copy_`)."""
    device = _straight_device(targets)
    if device is None or device.type != "cuda":
        return None
    try:
        gpu = _device(device)
    except DeviceError:
        return None
    return gpu if isinstance(gpu, _Gpu) else None


def _names(names: List[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
