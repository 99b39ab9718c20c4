"""safe_open, load_file, load and load_into: the public API.

Every decision about reading lives in Rust (weightlift._weightlift); this
module turns arguments into settings and bytes into tensors.
"""

import collections
import enum
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from . import _weightlift
from ._errors import BackendError, DeviceError, MismatchError, SettingError, UnsupportedError
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
    items = [backend] if isinstance(backend, (Backend, BackendPolicy, str)) else list(backend)
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


#: For tests on machines without a GPU: a host-memory device of the upload
#: pipeline ("host", or "host:delay_us=N,fail=N") that GPU devices map to.
#: Tensors then land in host memory, through the same pipeline, ordering
#: and errors as on a GPU.
_GPU_STANDIN: Optional[str] = None


def _device(device: Any) -> Union[str, _Gpu]:
    """"cpu", or the GPU `device` names ("cuda", "cuda:N", N or a torch.device)."""
    if device is None:
        return "cpu"
    kind: Any = None
    index: Optional[int] = None
    if isinstance(device, bool):
        kind = None
    elif isinstance(device, int):
        kind, index = "cuda", device
    elif isinstance(device, str):
        kind, _, rest = device.partition(":")
        if rest:
            index = int(rest) if rest.isdigit() else -1
    elif hasattr(device, "type") and hasattr(device, "index"):  # torch.device
        kind, index = device.type, device.index
    if kind == "cpu" and index in (None, 0):
        return "cpu"
    if kind == "hip":
        raise DeviceError(f"device {device!r}: ROCm devices go by torch's 'cuda' name: use 'cuda:N'")
    if kind != "cuda" or (index is not None and index < 0):
        raise DeviceError(f"unknown device {device!r}: use 'cpu', 'cuda:N', N or a torch.device")
    if _GPU_STANDIN is not None:
        import torch

        return _Gpu(torch.device("cpu"), _GPU_STANDIN)
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


class _Ring:
    """copy=False on a GPU: destinations carved from one device buffer in
    first-in first-out order. A region is given back once the caller has
    moved past its tensor (`release`), and reused once every region before
    it was given back; the pipeline's copies into it wait for the work
    queued meanwhile on torch's current stream. A tensor larger than the
    whole buffer gets memory of its own."""

    ALIGN = 256

    def __init__(self, gpu: _Gpu, size: int) -> None:
        import torch

        self._torch = torch
        self._gpu = gpu
        self._buf = torch.empty(size, dtype=torch.uint8, device=gpu.torch)
        self._size = size
        self._live: "collections.deque[List[Any]]" = collections.deque()  # [start, end, released]
        self._by_name: Dict[str, List[Any]] = {}
        self._head = 0

    def alloc(self, name: str, dtype: str, shape: List[int], file: str) -> Optional[Tuple[Any, int, int]]:
        torch = self._torch
        dt = torch_dtype(dtype, name)
        shp = framework_shape(dtype, shape, name)
        n = dt.itemsize
        for d in shp:
            n *= d
        if n == 0 or n > self._size:
            return _allocator(self._gpu)(name, dtype, shape, file)
        start = self._place(n)
        if start is None:
            return None
        region = [start, start + n, False]
        self._live.append(region)
        self._by_name[name] = region
        self._head = start + -(-n // self.ALIGN) * self.ALIGN
        t = self._buf[start : start + n].view(dt).view(shp)
        return t, t.data_ptr(), n

    @classmethod
    def needed(cls, size: int, sizes: List[int]) -> int:
        """Bytes a ring of `size` would take to hold all of `sizes` at once
        (each aligned; those of their own memory left out)."""
        return sum(-(-n // cls.ALIGN) * cls.ALIGN for n in sizes if 0 < n <= size)

    def release(self, name: str) -> None:
        region = self._by_name.pop(name, None)
        if region is not None:
            region[2] = True
        while self._live and self._live[0][2]:
            self._live.popleft()

    def _place(self, n: int) -> Optional[int]:
        """Where `n` bytes fit now, or None. Regions go on from where the
        last one ended, even when all were given back, so that a ring large
        enough for every tensor never reuses one."""
        if not self._live:
            return self._head if self._size - self._head >= n else 0
        oldest = self._live[0][0]
        if self._head > oldest:  # free: head..size, then 0..oldest
            if self._size - self._head >= n:
                return self._head
            return 0 if oldest >= n else None
        return self._head if oldest - self._head >= n else None


def _uploaded(upload: Any, bar: Any) -> Iterator[Tuple[str, Any]]:
    """`(name, tensor)` from a pipeline pass, as each lands on the device.
    Stopping early waits for the copies in flight."""
    try:
        for batch in upload:
            for name, tensor in batch:
                bar.update(tensor.nbytes)
                yield name, tensor
    finally:
        upload.close()
        bar.close()


def _staging(pinned_bytes: Any, fill_threads: Any) -> Dict[str, Optional[int]]:
    """The staging arguments, checked; None leaves the choice to the
    WEIGHTLIFT_* variables and the defaults."""
    for name, value, low, high in (
        ("pinned_bytes", pinned_bytes, 4096, None),
        ("fill_threads", fill_threads, 1, 256),
    ):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            upto = f" to {high}" if high else " or more"
            raise SettingError(f"{name} must be a whole number from {low}{upto}, not {value!r}")
    return {"pinned_bytes": pinned_bytes, "fill_threads": fill_threads}


def _selection(session: Any, keys: Any) -> Optional[List[str]]:
    if keys is None:
        return None
    if callable(keys):
        return [k for k in session.all_keys() if keys(k)]
    if isinstance(keys, str):
        return [keys]
    return list(keys)


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

    Tensors it hands out own their memory (or keep alive the memory they
    view): they stay valid after the handle is closed. A closed handle
    raises ClosedError.
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
    ) -> None:
        self._staging = _staging(pinned_bytes, fill_threads)
        self._framework = check_framework(framework)
        self._device = _device(device)
        if isinstance(self._device, _Gpu) and self._framework != "pt":
            raise SettingError(
                f"framework={framework!r} holds host memory only; use framework='pt' for device {device!r}"
            )
        if process_group is not None:
            raise UnsupportedError(
                "process_group: loading across a torch.distributed group is not available yet; "
                "load on each rank with process_group=None"
            )
        if buffer_size is not None and (not isinstance(buffer_size, int) or buffer_size <= 0):
            raise SettingError(f"buffer_size must be a positive number of bytes, not {buffer_size!r}")
        names_ = _backend_names(backend)
        self._session = _weightlift._Session(_sources(filenames), names_, buffer_size)
        order = names_.split(",") if names_ else []
        #: Reads straight into device memory (backend=CUFILE first, on a GPU);
        #: with other backends after it, they are the fallback.
        self._cufile = isinstance(self._device, _Gpu) and order[:1] == [Backend.CUFILE.value]
        self._cufile_fallback = len(order) > 1
        names = _selection(self._session, keys)
        if names is not None:
            self._session.select(names)
        self._copy = bool(copy)
        self._progress = bool(progress)
        #: Staging memory for device copies, in bytes.
        self.buffer_size: int = self._session.buffer_size
        #: Bytes of the selected tensors.
        self.total_tensor_size: int = self._session.total_bytes

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
        described = self._session.describe()
        staging = self._session.staging
        if described is None or staging is None:
            return described or staging
        return f"{described}; {staging}"

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

    def tensors(self) -> Iterator[Tuple[str, Any]]:
        """Yield `(name, tensor)` for every selected tensor as it completes
        (completion order). Each call is a new pass over all of them."""
        return self._tensors(self._copy)

    def _tensors(self, copy: bool) -> Iterator[Tuple[str, Any]]:
        bar = _progress(self._progress, self.total_tensor_size)
        gpu = self._device
        if isinstance(gpu, _Gpu) and copy:
            yield from _uploaded(self._onto(gpu, _allocator(gpu)), bar)
            return
        if isinstance(gpu, _Gpu):
            need = _Ring.needed(self.buffer_size, self._session.sizes())
            if need > self.buffer_size:
                warnings.warn(
                    f"copy=False: the tensors need {need} bytes (aligned) of a {self.buffer_size}-byte "
                    "device buffer, which is reused, so each tensor is valid only until the next is "
                    "requested; clone what you keep, or use copy=True",
                    stacklevel=3,
                )
            ring = _Ring(gpu, self.buffer_size)
            for name, tensor in _uploaded(self._onto(gpu, ring.alloc), bar):
                yield name, tensor
                # The caller asked for the next: its region may be reused.
                ring.release(name)
            return
        stream = self._session.stream()
        try:
            for name, dtype, shape, buf in stream:
                tensor = self._convert(name, dtype, shape, buf)
                bar.update(len(buf))
                yield name, tensor
        finally:
            bar.close()

    def get_tensor(self, name: str) -> Any:
        """The selected tensor `name`; each call returns a new tensor."""
        gpu = self._device
        if isinstance(gpu, _Gpu):
            if self._cufile:
                for batch in self._onto(gpu, _allocator(gpu), name):
                    return batch[0][1]
            return self._session.get_into(gpu.name, name, _allocator(gpu), gpu.stream(), **self._staging)
        dtype, shape, buf = self._session.get(name)
        return self._convert(name, dtype, shape, buf)

    def _onto(self, gpu: _Gpu, alloc: Callable[..., Any], name: Optional[str] = None) -> Any:
        """A pass onto `gpu` (of one tensor, `name`, for CUFILE): straight
        from the files when CUFILE was asked for and works here, else
        through the pipeline."""
        if self._cufile:
            try:
                return self._session.read_direct(gpu.name, alloc, name)
            except BackendError as e:
                if not self._cufile_fallback:
                    raise BackendError(f"CUFILE: {e}") from None
                self._cufile = False  # the backends after it, through the pipeline
        return self._session.upload(gpu.name, alloc, gpu.stream(), **self._staging)

    def get_tensors(self) -> Dict[str, Any]:
        """Every selected tensor, by name (in sorted order); each owns its
        memory, whatever `copy` says."""
        loaded = dict(self._tensors(copy=True))
        return {k: loaded[k] for k in sorted(loaded)}

    def get_slice(self, name: str) -> "TensorSlice":
        """A tensor to index lazily: only the rows an index needs are read."""
        dtype, shape, *_ = self._session.info(name)
        return TensorSlice(self, name, dtype, tuple(shape))

    def get_tensor_metadata(self, name: str) -> TensorMetadata:
        """Where the selected tensor `name` is and what it holds."""
        dtype, shape, file, start, end, data_start = self._session.info(name)
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
        bits = _BITS[self._dtype]
        per_row = 1
        for d in self._shape[1:]:
            per_row *= d
        row_bits = per_row * bits
        rows = self._rows(parts[0]) if self._shape and parts and row_bits % 8 == 0 else None
        if rows is None:
            lo, hi, first = 0, (self._shape[0] if self._shape else 1), None
            start, end = 0, _byte_len(self._shape, bits)
        else:
            lo, hi, first = rows
            start, end = lo * row_bits // 8, hi * row_bits // 8
        h = self._handle
        buf = h._session.get_range(self._name, start, end)
        shape = (hi - lo,) + self._shape[1:] if self._shape else ()
        part = h._convert(self._name, self._dtype, shape, buf)
        if rows is None:
            part = part[index]
        else:
            part = part[(first,) + tuple(parts[1:])]
        if isinstance(h._device, _Gpu):
            # A slice is read into host memory, then copied on its own.
            part = part.to(h._device.torch)
        return part


_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "U16": 16, "I16": 16, "F16": 16,
    "BF16": 16, "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64,
    "F64": 64, "C64": 64, "F6_E2M3": 6, "F6_E3M2": 6, "F4": 4,
}  # fmt: skip


def _byte_len(shape: Sequence[int], bits: int) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * bits // 8


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
        process_group: a torch.distributed group to share the reads with;
            not available yet (raises UnsupportedError unless None).
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
) -> Dict[str, Any]:
    """Load every tensor of a checkpoint into a dict of torch tensors, as
    `safetensors.torch.load_file` does. `filename` may also be a list of
    files, a directory or an index; the other arguments are safe_open's."""
    with safe_open(
        filename,
        "pt",
        device,
        backend=backend,
        keys=keys,
        progress=progress,
        pinned_bytes=pinned_bytes,
        fill_threads=fill_threads,
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
        backend, progress, pinned_bytes, fill_threads: as for safe_open.
    """
    import torch

    if isinstance(target, torch.nn.Module):
        dests = target.state_dict(keep_vars=True)
    elif isinstance(target, Mapping):
        dests = dict(target)
    else:
        raise TypeError(f"target must be a dict of tensors or an nn.Module, not {type(target).__name__}")
    staging = _staging(pinned_bytes, fill_threads)
    with safe_open(filenames, "pt", "cpu", backend=backend, progress=progress) as f:
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
        f._session.select(common)
        for name in common:
            dtype, shape, file, *_ = f._session.info(name)
            want = torch_dtype(dtype, name)
            want_shape = framework_shape(dtype, shape, name)
            dest = dests[name]
            if dest.dtype != want or tuple(dest.shape) != want_shape:
                raise MismatchError(
                    f"tensor {name!r} in {os.fspath(file)} is {dtype} {list(want_shape)}, "
                    f"but the target's is {dest.dtype} {list(dest.shape)}"
                )
        gpu = _pipeline_for([dests[k] for k in common])
        if gpu is not None:
            def alloc(name: str, *_: Any) -> Tuple[Any, int, int]:
                t = dests[name]
                return t, t.data_ptr(), t.nbytes

            bar = _progress(progress, f.total_tensor_size)
            for name, tensor in _uploaded(f._session.upload(gpu.name, alloc, gpu.stream(), **staging), bar):
                # Written behind autograd's back, as copy_ under no_grad
                # would have been: bump the version it checks.
                torch.autograd.graph.increment_version(tensor)
        else:
            with torch.no_grad():
                for name, tensor in f.tensors():
                    dests[name].copy_(tensor)
    return IncompatibleKeys(missing, unexpected)


def _pipeline_for(targets: List[Any]) -> Optional[_Gpu]:
    """The GPU that load_into can write `targets` on straight through the
    upload pipeline: plain contiguous tensors, all on one CUDA device, not
    overlapping. None otherwise (they are then filled with `copy_`)."""
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
    (device,) = devices
    spans = sorted((t.data_ptr(), t.data_ptr() + t.nbytes) for t in targets if t.nbytes)
    if any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])):
        return None  # shared memory (tied weights): filled one by one
    if _GPU_STANDIN is not None and device.type == "cpu":
        return _Gpu(device, _GPU_STANDIN)
    if device.type != "cuda":
        return None
    try:
        gpu = _device(device)
    except DeviceError:
        return None
    return gpu if isinstance(gpu, _Gpu) else None


def _names(names: List[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")
