"""Shared fixtures and helpers for the weightlift test suite.

Checkpoints are generated once per session under pytest's temporary directory,
with ``safetensors.torch.save_file`` where it can write what is needed and with
``write_raw`` (8-byte little-endian header length + JSON header + data)
otherwise. Every expected value comes from the reference library
(``safetensors.safe_open``) or from the file's own header, never from
weightlift.

Helpers are reached through the ``h`` fixture (a namespace), so that the test
modules never import this file: that works whatever ``--import-mode`` the
runner uses.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import save_file

# No skip here: a package that fails to import must fail the suite.
import weightlift
import weightlift._api  # noqa: F401  (the standin fixture patches it)

CORPUS_DIR = Path(__file__).resolve().parents[3] / "tests" / "corpus"

# Every CPU backend a load must be byte-identical with (CUFILE needs a GPU).
BACKENDS = ["URING", "URING_BUFFERED", "AIO", "AIO_BUFFERED", "PREAD", "PREAD_BUFFERED", "MMAP"]
# With WEIGHTLIFT_REQUIRE_URING=1 these must work: a BackendError is a failure.
REQUIRED_WITH_URING = {"URING", "AIO", "PREAD", "URING_BUFFERED", "AIO_BUFFERED", "PREAD_BUFFERED"}

# safetensors dtype name -> torch dtype, for every dtype torch can represent.
ST_TO_TORCH: Dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "U16": torch.uint16,
    "I16": torch.int16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "U32": torch.uint32,
    "I32": torch.int32,
    "F32": torch.float32,
    "U64": torch.uint64,
    "I64": torch.int64,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "F4": torch.float4_e2m1fn_x2,  # one torch element holds two F4 values
}
F6_DTYPES = ("F6_E2M3", "F6_E3M2")
# Dtypes numpy represents (what safetensors' framework="np" returns).
NUMPY_DTYPES = {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64", "C64"}
# Dtypes numpy lacks: framework="np" must raise DtypeError for them.
NUMPY_LACKS = {"BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F4", *F6_DTYPES}
# Bits per element, for the raw writer.
BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "U16": 16, "I16": 16, "F16": 16, "BF16": 16, "U32": 32, "I32": 32,
    "F32": 32, "U64": 64, "I64": 64, "F64": 64, "C64": 64, "F8_E4M3": 8, "F8_E5M2": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

# The checkpoints every API is checked against, byte for byte.
MATRIX = [
    "all_dtypes",
    "empty_scalar",
    "unaligned",
    "many_tiny",
    "large",
    "metadata",
    "sharded_index",
    "sharded_dir",
    "sharded_list",
    "plain_dir",
]


def pytest_configure(config):
    # The runner registers these too; registering twice is harmless, and it
    # keeps --strict-markers happy when the suite is run on its own.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "dist: needs torch.distributed")
    config.addinivalue_line("markers", "slow: takes more than about 10 s")


# --------------------------------------------------------------------------
# Writing checkpoints
# --------------------------------------------------------------------------


def nbytes_of(dtype: str, shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    bits = n * BITS[dtype]
    assert bits % 8 == 0, (dtype, shape)
    return bits // 8


def write_raw(path: Path, entries, metadata: Optional[dict] = None, *, header_len_mod8: Optional[int] = None,
              metadata_first: bool = True) -> Path:
    """Write a safetensors file by hand.

    entries: (name, dtype, shape, data bytes) in file order; offsets are
    consecutive from 0. header_len_mod8: pad the JSON with spaces until its
    length has this remainder modulo 8 (None: no padding at all).
    """
    header = {}
    if metadata is not None and metadata_first:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, data in entries:
        assert len(data) == nbytes_of(dtype, shape), (name, dtype, shape, len(data))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    if metadata is not None and not metadata_first:
        header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if header_len_mod8 is not None:
        while len(hb) % 8 != header_len_mod8:
            hb += b" "
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(hb)))
        fh.write(hb)
        for _, _, _, data in entries:
            fh.write(data)
    return path


def write_sllm(d: Path, state_dict: Dict[str, torch.Tensor], partition_limit: int = 10 << 30) -> Path:
    """Write ``state_dict`` as ServerlessLLM's ``save_dict`` does: the
    tensors' storages as records in ``tensor.data_<n>`` partitions (each
    record padded to 8 bytes; a new partition before a record that would take
    the current one past ``partition_limit``; each partition padded to 4096
    bytes when closed), a storage shared by several names written once, and
    ``tensor_index.json`` mapping each name to ``[offset, size, shape,
    stride, str(dtype)]`` with offsets into the partitions laid end to end."""
    d.mkdir(parents=True, exist_ok=True)
    parts: List[bytearray] = []
    closed = 0
    offsets: Dict[int, int] = {}
    index = {}

    def close_last() -> None:
        nonlocal closed
        if parts:
            last = parts[-1]
            last.extend(b"\0" * (-len(last) % 4096))
            closed += len(last)

    for name, t in state_dict.items():
        storage = t.untyped_storage()
        size = storage.nbytes()
        key = storage.data_ptr()
        if key not in offsets or size == 0:
            if not parts or len(parts[-1]) + size > partition_limit:
                close_last()
                parts.append(bytearray())
            offsets[key] = closed + len(parts[-1])
            raw = torch.empty(0, dtype=torch.uint8).set_(storage, 0, (size,))
            parts[-1].extend(raw.numpy().tobytes())
            parts[-1].extend(b"\0" * (-size % 8))
        index[name] = [offsets[key], size, list(t.shape), list(t.stride()), str(t.dtype)]
    close_last()
    for i, p in enumerate(parts):
        (d / f"tensor.data_{i}").write_bytes(bytes(p))
    (d / "tensor_index.json").write_text(json.dumps(index))
    return d


def random_tensor(dtype: str, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Random bytes reinterpreted as ``dtype`` (NaN and other odd patterns included).

    For F4, ``shape`` is the torch shape (float4_e2m1fn_x2: two values a byte);
    the header shape has the last dimension doubled.
    """
    tdt = ST_TO_TORCH[dtype]
    n = 1
    for d in shape:
        n *= d
    itemsize = torch.empty((), dtype=tdt).element_size() if dtype != "F4" else 1
    raw = torch.randint(0, 256, (n * itemsize,), dtype=torch.uint8, generator=gen)
    if dtype == "BOOL":
        raw = raw & 1
    return raw.view(tdt).reshape(tuple(shape)).clone()


def random_bytes(n: int, gen: torch.Generator) -> bytes:
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).numpy().tobytes()


# --------------------------------------------------------------------------
# Reading headers and the reference
# --------------------------------------------------------------------------


def read_header(path: Path):
    """(header_len, {name: entry} in JSON order, metadata or None)."""
    with open(path, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n).decode("utf-8"))
    meta = header.pop("__metadata__", None)
    return n, header, meta


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple
    file: Path
    data_offsets: tuple
    offset: int
    shard_index: int

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


class Ckpt:
    """A generated checkpoint: what to pass to weightlift, and what to expect."""

    def __init__(self, name: str, source, shards: List[Path], kind: str):
        self.name = name
        self.source = source  # what safe_open/load get: a path, a list, a directory, an index
        self.shards = [Path(s) for s in shards]  # in the order weightlift must see them
        self.kind = kind  # "file", "index", "dir", "list"
        self.infos: Dict[str, TensorInfo] = {}
        merged: Optional[dict] = None
        for i, shard in enumerate(self.shards):
            hlen, entries, meta = read_header(shard)
            for tname, e in entries.items():
                start, end = e["data_offsets"]
                self.infos[tname] = TensorInfo(tname, e["dtype"], tuple(e["shape"]), shard, (start, end),
                                               8 + hlen + start, i)
            if meta:
                merged = dict(meta) if merged is None else merged
                for k, v in meta.items():
                    merged.setdefault(k, v)
        self.metadata = merged

    def __repr__(self):
        return f"Ckpt({self.name})"

    @property
    def names(self) -> List[str]:
        return sorted(self.infos)

    @property
    def f6_names(self) -> List[str]:
        return sorted(n for n, i in self.infos.items() if i.dtype in F6_DTYPES)

    @property
    def loadable_names(self) -> List[str]:
        """Names framework="pt" must load (all but F6)."""
        return sorted(n for n, i in self.infos.items() if i.dtype not in F6_DTYPES)

    @property
    def numpy_names(self) -> List[str]:
        return sorted(n for n, i in self.infos.items() if i.dtype in NUMPY_DTYPES)

    @property
    def total_size(self) -> int:
        return sum(i.nbytes for i in self.infos.values())

    def file_order_key(self, name: str):
        i = self.infos[name]
        return (i.shard_index, i.data_offsets[0], i.data_offsets[1])

    @functools.cached_property
    def expected(self) -> Dict[str, torch.Tensor]:
        """The reference: a dict merged from safetensors.safe_open(shard, "pt") of each shard."""
        out = {}
        for shard in self.shards:
            with st_safe_open(str(shard), framework="pt") as f:
                for k in f.keys():
                    if self.infos[k].dtype in F6_DTYPES:
                        continue
                    out[k] = f.get_tensor(k)
        return out

    @functools.cached_property
    def expected_np(self) -> Dict[str, np.ndarray]:
        out = {}
        for shard in self.shards:
            with st_safe_open(str(shard), framework="np") as f:
                for k in f.keys():
                    if self.infos[k].dtype in NUMPY_DTYPES:
                        out[k] = f.get_tensor(k)
        return out

    def shard_of(self, name: str) -> Path:
        return self.infos[name].file


# --------------------------------------------------------------------------
# Checkpoint builders
# --------------------------------------------------------------------------


def build_all_dtypes(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for dtype in ST_TO_TORCH:
        shape = (5, 4) if dtype == "F4" else (5, 7)  # F4: header shape [5, 8]
        tensors[f"t_{dtype.lower()}"] = random_tensor(dtype, shape, g)
    # A few more shapes of common dtypes: 1-D, 3-D, odd sizes.
    tensors["t_f32_3d"] = random_tensor("F32", (3, 5, 7), g)
    tensors["t_bf16_1d"] = random_tensor("BF16", (13,), g)
    tensors["t_u8_odd"] = random_tensor("U8", (1, 11), g)
    p = d / "all_dtypes.safetensors"
    save_file(tensors, str(p))
    return Ckpt("all_dtypes", str(p), [p], "file")


def build_f6(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(2)
    entries = [
        ("a_u8", "U8", [5], random_bytes(5, g)),
        ("f6_e2m3", "F6_E2M3", [2, 4], random_bytes(nbytes_of("F6_E2M3", [2, 4]), g)),
        ("f6_e3m2", "F6_E3M2", [4], random_bytes(nbytes_of("F6_E3M2", [4]), g)),
        ("z_f32", "F32", [3], random_bytes(12, g)),
        ("z_bf16", "BF16", [2, 2], random_bytes(8, g)),
    ]
    p = write_raw(d / "f6.safetensors", entries)
    return Ckpt("f6", p, [p], "file")


def build_empty_scalar(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(3)
    tensors = {
        "empty_f32": torch.zeros(0, dtype=torch.float32),
        "empty_bf16_3x0": torch.zeros(3, 0, dtype=torch.bfloat16),
        "empty_i64_0x5x2": torch.zeros(0, 5, 2, dtype=torch.int64),
        "empty_bool": torch.zeros(0, dtype=torch.bool),
        "empty_f4": torch.zeros(0, dtype=torch.uint8).view(torch.float4_e2m1fn_x2),
        "scalar_f32": random_tensor("F32", (), g),
        "scalar_i64": random_tensor("I64", (), g),
        "scalar_bf16": random_tensor("BF16", (), g),
        "scalar_bool": random_tensor("BOOL", (), g),
        "scalar_c64": random_tensor("C64", (), g),
        "scalar_u8": random_tensor("U8", (), g),
        "normal_u8": random_tensor("U8", (4,), g),
        "normal_f16": random_tensor("F16", (2, 3), g),
    }
    p = d / "empty_scalar.safetensors"
    save_file(tensors, str(p))
    return Ckpt("empty_scalar", p, [p], "file")


def build_unaligned(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(4)
    entries = [
        ("a_u8", "U8", [3], random_bytes(3, g)),  # everything after starts at an odd offset
        ("b_f32", "F32", [5], random_bytes(20, g)),
        ("c_f64", "F64", [3], random_bytes(24, g)),
        ("d_i16", "I16", [3], random_bytes(6, g)),
        ("e_bf16", "BF16", [2, 3], random_bytes(12, g)),
        ("f_c64", "C64", [2], random_bytes(16, g)),
        ("g_u8", "U8", [1], random_bytes(1, g)),
        ("h_i64", "I64", [2, 2], random_bytes(32, g)),
    ]
    p = write_raw(d / "unaligned.safetensors", entries, metadata={"kind": "unaligned"}, header_len_mod8=5)
    hlen = read_header(p)[0]
    assert hlen % 8 != 0
    return Ckpt("unaligned", str(p), [p], "file")


def build_many_tiny(d: Path, n: int = 3000) -> Ckpt:
    g = torch.Generator().manual_seed(5)
    kinds = [("F32", (1,)), ("U8", (3,)), ("I16", (2,)), ("BF16", (3,)), ("BOOL", (2,)), ("I64", (1,))]
    tensors = {}
    for i in range(n):
        dtype, shape = kinds[i % len(kinds)]
        tensors[f"blocks.{i}.{dtype.lower()}"] = random_tensor(dtype, shape, g)
    p = d / "many_tiny.safetensors"
    save_file(tensors, str(p))
    return Ckpt("many_tiny", p, [p], "file")


def build_large(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(6)
    tensors = {
        "big": random_tensor("F32", (4096, 4096), g),  # 64 MiB
        "tail": random_tensor("F16", (1000,), g),  # after the big one in the file
    }
    p = d / "large.safetensors"
    save_file(tensors, str(p))
    return Ckpt("large", p, [p], "file")


def build_metadata(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(7)
    tensors = {"w": random_tensor("F32", (4, 4), g), "b": random_tensor("I32", (4,), g)}
    meta = {"format": "pt", "author": "weightlift tests", "unicode": "ünïcødé ✓", "empty": ""}
    p = d / "metadata.safetensors"
    save_file(tensors, str(p), metadata=meta)
    return Ckpt("metadata", p, [p], "file")


SHARDS = [
    ("model-00001-of-00003.safetensors",
     {"model.embed_tokens.weight": ("BF16", (64, 32)), "model.layers.0.self_attn.q_proj.weight": ("F32", (32, 32))},
     {"format": "pt", "only_in_first": "yes"}),
    ("model-00002-of-00003.safetensors",
     {"model.layers.0.mlp.up_proj.weight": ("F16", (48, 32)), "model.layers.0.mlp.counter": ("I64", (7,)),
      "model.layers.0.input_layernorm.weight": ("F32", (32,))},
     {"format": "pt"}),
    ("model-00003-of-00003.safetensors",
     {"lm_head.weight": ("F32", (64, 32)), "model.norm.weight": ("BF16", (32,)), "model.layers.0.mask": ("BOOL", (5,))},
     None),
]


def write_sharded(d: Path, seed: int = 8) -> List[Path]:
    """Three shards and a model.safetensors.index.json in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths = []
    weight_map = {}
    total = 0
    for fname, spec, meta in SHARDS:
        tensors = {k: random_tensor(dt, shape, g) for k, (dt, shape) in spec.items()}
        save_file(tensors, str(d / fname), metadata=meta)
        paths.append(d / fname)
        for k, t in tensors.items():
            weight_map[k] = fname
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


def build_plain_dir(d: Path) -> Ckpt:
    g = torch.Generator().manual_seed(9)
    pd = d / "plain_dir"
    pd.mkdir()
    save_file({"x.weight": random_tensor("F32", (8, 3), g), "x.bias": random_tensor("F32", (8,), g)},
              str(pd / "part-a.safetensors"))
    save_file({"a.embed": random_tensor("BF16", (10, 4), g), "z.flag": random_tensor("BOOL", (3,), g)},
              str(pd / "part-b.safetensors"), metadata={"origin": "part-b"})
    (pd / "notes.txt").write_text("not a shard")
    return Ckpt("plain_dir", pd, [pd / "part-a.safetensors", pd / "part-b.safetensors"], "dir")


class CkptStore:
    """Builds each checkpoint on first use, once per session."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: Dict[str, Ckpt] = {}
        self._sharded: Optional[List[Path]] = None

    def _sharded_paths(self) -> List[Path]:
        if self._sharded is None:
            self._sharded = write_sharded(self.root / "sharded")
        return self._sharded

    def get(self, name: str) -> Ckpt:
        if name not in self._cache:
            self._cache[name] = self._build(name)
        return self._cache[name]

    def _build(self, name: str) -> Ckpt:
        builders = {
            "all_dtypes": build_all_dtypes,
            "f6": build_f6,
            "empty_scalar": build_empty_scalar,
            "unaligned": build_unaligned,
            "many_tiny": build_many_tiny,
            "large": build_large,
            "metadata": build_metadata,
            "plain_dir": build_plain_dir,
        }
        if name in builders:
            return builders[name](self.root)
        shards = self._sharded_paths()
        d = shards[0].parent
        if name == "sharded_index":
            return Ckpt(name, str(d / "model.safetensors.index.json"), shards, "index")
        if name == "sharded_dir":
            return Ckpt(name, d, shards, "dir")
        if name == "sharded_list":
            return Ckpt(name, [str(shards[0]), shards[1], str(shards[2])], shards, "list")
        raise KeyError(name)


# --------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 tensor (a view when t is contiguous)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same_tensor(got, exp: torch.Tensor, name: str = "") -> None:
    assert isinstance(got, torch.Tensor), f"{name}: got {type(got).__name__}, not a torch.Tensor"
    assert got.dtype == exp.dtype, f"{name}: dtype {got.dtype} != {exp.dtype}"
    assert tuple(got.shape) == tuple(exp.shape), f"{name}: shape {tuple(got.shape)} != {tuple(exp.shape)}"
    gb, eb = byte_view(got), byte_view(exp)
    if not torch.equal(gb, eb):
        diff = (gb != eb).nonzero()
        first = int(diff[0]) if len(diff) else -1
        raise AssertionError(f"{name}: bytes differ ({len(diff)} of {eb.numel()} bytes, first at byte {first})")


def assert_same_array(got, exp: np.ndarray, name: str = "") -> None:
    assert isinstance(got, np.ndarray), f"{name}: got {type(got).__name__}, not a numpy array"
    assert got.dtype == exp.dtype, f"{name}: dtype {got.dtype} != {exp.dtype}"
    assert got.shape == exp.shape, f"{name}: shape {got.shape} != {exp.shape}"
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(exp).tobytes(), f"{name}: bytes differ"


def assert_same_dict(got, exp: Dict[str, torch.Tensor], what: str = "") -> None:
    assert isinstance(got, dict), f"{what}: got {type(got).__name__}, not a dict"
    assert sorted(got) == sorted(exp), f"{what}: keys differ: missing {sorted(set(exp) - set(got))[:10]}, " \
                                       f"extra {sorted(set(got) - set(exp))[:10]}"
    for k in exp:
        assert_same_tensor(got[k], exp[k], f"{what}[{k}]")


def collect_tensors(iterable) -> Dict[str, torch.Tensor]:
    """Drain tensors() into a dict, asserting no name is yielded twice."""
    out = {}
    for item in iterable:
        assert isinstance(item, tuple) and len(item) == 2, f"tensors() yielded {item!r}"
        name, t = item
        assert isinstance(name, str)
        assert name not in out, f"tensors() yielded {name!r} twice"
        out[name] = t
    return out


def scramble_(t: torch.Tensor) -> None:
    """Flip every byte of t in place (t must be a contiguous CPU tensor)."""
    if t.numel() == 0:
        return
    assert t.is_contiguous()
    byte_view(t).bitwise_not_()


def inverted_like(exp: torch.Tensor) -> torch.Tensor:
    """A fresh tensor of exp's dtype and shape whose every byte differs from exp's."""
    t = torch.empty(exp.shape, dtype=exp.dtype)
    if t.numel():
        byte_view(t).copy_(byte_view(exp).bitwise_not())
    return t


def msg_has_path(msg: str, path) -> bool:
    p = str(path)
    return p in msg or os.path.realpath(p) in msg


# --------------------------------------------------------------------------
# Backends, subprocesses
# --------------------------------------------------------------------------


@contextlib.contextmanager
def backend_guard(name: str, *, names_in_message: Optional[Sequence[str]] = None, required: Optional[bool] = None):
    """Run a load with a forced backend; a BackendError saying it is unusable here is a skip.

    With WEIGHTLIFT_REQUIRE_URING=1 a backend of REQUIRED_WITH_URING must work.
    """
    if required is None:
        required = name in REQUIRED_WITH_URING
    try:
        yield
    except weightlift.BackendError as e:
        msg = str(e)
        if os.environ.get("WEIGHTLIFT_REQUIRE_URING") == "1" and required:
            raise
        wanted = names_in_message if names_in_message is not None else [name]
        if wanted and not any(w in msg.upper() for w in wanted):
            raise AssertionError(f"BackendError for {name} does not say which backend is unusable: {msg}") from e
        pytest.skip(f"backend {name} is unusable here: {msg}")


def subprocess_env() -> dict:
    env = dict(os.environ)
    pkg = Path(weightlift.__file__).resolve().parent
    roots = [str(pkg.parent)] + [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env())


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

HELPERS = types.SimpleNamespace(
    weightlift=weightlift,
    CORPUS_DIR=CORPUS_DIR,
    BACKENDS=BACKENDS,
    REQUIRED_WITH_URING=REQUIRED_WITH_URING,
    ST_TO_TORCH=ST_TO_TORCH,
    F6_DTYPES=F6_DTYPES,
    NUMPY_DTYPES=NUMPY_DTYPES,
    NUMPY_LACKS=NUMPY_LACKS,
    MATRIX=MATRIX,
    Ckpt=Ckpt,
    write_raw=write_raw,
    write_sharded=write_sharded,
    write_sllm=write_sllm,
    random_tensor=random_tensor,
    random_bytes=random_bytes,
    nbytes_of=nbytes_of,
    read_header=read_header,
    byte_view=byte_view,
    assert_same_tensor=assert_same_tensor,
    assert_same_array=assert_same_array,
    assert_same_dict=assert_same_dict,
    collect_tensors=collect_tensors,
    scramble_=scramble_,
    inverted_like=inverted_like,
    msg_has_path=msg_has_path,
    backend_guard=backend_guard,
    subprocess_env=subprocess_env,
    run_python=run_python,
)


@pytest.fixture(scope="session")
def h():
    """The helpers of this file, as a namespace."""
    return HELPERS


@pytest.fixture
def standin(monkeypatch):
    """Map GPU devices (and load_into's CPU targets) to the host-memory
    device; returns a setter for its options ("host:delay_us=N,fail=N")."""
    real_device = weightlift._api._device

    def use(spec: str = "host") -> None:
        gpu = weightlift._api._Gpu(torch.device("cpu"), spec)

        def names_a_gpu(d) -> bool:
            if isinstance(d, bool):
                return False
            if isinstance(d, int):
                return d >= 0
            name = d if isinstance(d, str) else str(d)
            try:
                return weightlift._weightlift.placement(name)[0] == "cuda"
            except weightlift.DeviceError:
                return False

        monkeypatch.setattr(weightlift._api, "_device", lambda d: gpu if names_a_gpu(d) else real_device(d))
        monkeypatch.setattr(
            weightlift._api, "_pipeline_for", lambda targets: gpu if weightlift._api._straight_device(targets) is not None else None
        )

    use()
    return use


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> CkptStore:
    return CkptStore(tmp_path_factory.mktemp("ckpts"))


@pytest.fixture(params=MATRIX)
def ckpt(request, store) -> Ckpt:
    """Each checkpoint of the matrix in turn."""
    return store.get(request.param)


@pytest.fixture(params=BACKENDS)
def backend_name(request) -> str:
    return request.param


@pytest.fixture
def cuda_device():
    """'cuda:0', or a skip without a GPU (a failure when WEIGHTLIFT_REQUIRE_GPU=1)."""
    if not torch.cuda.is_available():
        if os.environ.get("WEIGHTLIFT_REQUIRE_GPU") == "1":
            pytest.fail("WEIGHTLIFT_REQUIRE_GPU=1 but torch.cuda.is_available() is False")
        pytest.skip("no CUDA GPU")
    return "cuda:0"
