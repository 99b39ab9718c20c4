"""What the vLLM and SGLang loaders share: their options, which files of a
model directory they read, and the weights iterator. None of it imports
either framework, so it is tested without them."""

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Mapping, Optional, Tuple, Union

from .._api import safe_open
from .._errors import InvalidArgumentError, MissingFileError, SettingError

#: The index whose files are the checkpoint, as vLLM and transformers name it.
INDEX = "model.safetensors.index.json"

BackendOption = Union[str, List[str], None]


@dataclass(frozen=True)
class LoaderOptions:
    """The loaders' options, from `--model-loader-extra-config` (a JSON
    object): every key is optional."""

    #: Backend names (see weightlift.Backend), tried in order; None: automatic.
    backend: BackendOption = None
    #: Memory for reads in flight, in bytes.
    buffer_size: Optional[int] = None
    #: Page-locked staging for a GPU load, in bytes.
    pinned_bytes: Optional[int] = None
    #: Threads filling the staging from cached files.
    fill_threads: Optional[int] = None
    #: None: the framework's convention (a bar on the first rank, when its
    #: progress bars are on); True or False: always or never.
    progress: Optional[bool] = None
    #: "device": ranks of a tensor-parallel group read each byte once and
    #: exchange through the group's device communicator (NCCL on GPUs);
    #: "cpu": through its CPU (gloo) communicator; "none": each rank reads
    #: every file itself.
    group: str = "device"
    #: Host loads only: False gives every tensor memory of its own instead
    #: of viewing the page cache.
    mmap: bool = True

    @classmethod
    def parse(cls, extra: Any) -> "LoaderOptions":
        """Options from a framework's extra loader config (a dict, a JSON
        string, or None); an unknown key or a value of the wrong type is a
        SettingError naming it."""
        if extra is None or extra == "":
            return cls()
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError as e:
                raise SettingError(f"model loader extra config is not JSON: {e}") from None
        if not isinstance(extra, Mapping):
            raise SettingError(f"model loader extra config must be a JSON object, not {type(extra).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise SettingError(
                f"unknown weightlift loader option(s) {unknown}; the options are {sorted(known)}"
            )
        for key in ("buffer_size", "pinned_bytes", "fill_threads"):
            v = extra.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise SettingError(f"weightlift loader option {key!r} must be a whole number of bytes or threads, not {v!r}")
        backend = extra.get("backend")
        if backend is not None and not (
            isinstance(backend, str) or (isinstance(backend, list) and all(isinstance(b, str) for b in backend))
        ):
            raise SettingError(f"weightlift loader option 'backend' must be a name or a list of names, not {backend!r}")
        for key in ("progress", "mmap"):
            v = extra.get(key)
            if v is not None and not isinstance(v, bool):
                raise SettingError(f"weightlift loader option {key!r} must be true or false, not {v!r}")
        group = extra.get("group", "device")
        if group not in ("device", "cpu", "none"):
            raise SettingError(f"weightlift loader option 'group' must be 'device', 'cpu' or 'none', not {group!r}")
        mmap = extra.get("mmap", True)
        return cls(**{**dict(extra), "group": group, "mmap": True if mmap is None else mmap})


def checkpoint_files(folder: Any) -> List[str]:
    """The safetensors files of a model directory that hold its weights.

    With `model.safetensors.index.json`, exactly the files its weight map
    names (so a `consolidated.safetensors` beside the shards, or any other
    stray file, is not read, as vLLM and transformers skip it); each must
    exist. Without one, every `*.safetensors` file in the directory,
    sorted. Either way MissingFileError names what is missing.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise MissingFileError(f"{folder}: not a directory")
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SettingError(f"{index}: not a safetensors index (no weight_map: {e!r})") from None
        files = [os.path.join(folder, n) for n in names]
        missing = [p for p in files if not os.path.isfile(p)]
        if missing:
            raise MissingFileError(f"{index} names files that do not exist: {missing}")
        return files
    files = sorted(
        os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors")
    )
    if not files:
        raise MissingFileError(
            f"{folder}: no *.safetensors files (weightlift reads safetensors only; "
            "use another load format for .bin or .pt checkpoints)"
        )
    return files


def weights(
    files: List[str],
    options: LoaderOptions,
    device: Any,
    bar: Callable[[int], Any],
    process_group: Any = None,
) -> Iterator[Tuple[str, Any]]:
    """`(name, tensor)` for every tensor of `files`, as each completes, on
    `device` (each tensor owning its memory there), with `process_group`
    reading each byte once across the group. `bar(total_bytes)` makes the
    progress bar (update(bytes), close())."""
    if not isinstance(files, list) or not files:
        raise InvalidArgumentError(f"files must be a non-empty list of paths, not {files!r}")
    with safe_open(
        files,
        "pt",
        device,
        process_group,
        backend=options.backend,
        buffer_size=options.buffer_size,
        pinned_bytes=options.pinned_bytes,
        fill_threads=options.fill_threads,
        mmap=options.mmap,
    ) as f:
        progress = bar(f.total_tensor_size)
        try:
            for name, tensor in f.tensors():
                progress.update(tensor.nbytes)
                yield name, tensor
        finally:
            progress.close()


class Bar:
    """A tqdm bar of bytes, or nothing when `show` is false or tqdm is
    missing."""

    def __init__(self, show: bool, total: int, desc: str, bar_format: Optional[str] = None) -> None:
        self.bar = None
        if show:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            kw = {"bar_format": bar_format} if bar_format else {}
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, **kw)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def device_of(model: Any) -> Any:
    """Where the model's parameters are: tensors are loaded there."""
    for p in model.parameters():
        if p.device.type == "cuda":
            return p.device
        break
    return "cpu"


def tp_group(options: LoaderOptions, distributed: str) -> Any:
    """The framework's tensor-parallel group to load with, from its
    `distributed` module (imported here), or None (one rank, or group
    "none")."""
    if options.group == "none":
        return None
    import importlib

    d = importlib.import_module(distributed)
    if d.get_tensor_model_parallel_world_size() <= 1:
        return None
    tp = d.get_tp_group()
    return tp.device_group if options.group == "device" else tp.cpu_group


def first_rank() -> bool:
    """True unless torch.distributed runs and this is not rank 0."""
    try:
        import torch.distributed as dist
    except ImportError:
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
