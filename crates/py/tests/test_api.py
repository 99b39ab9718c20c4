"""safe_open's handle: sources, names, metadata, selection, sizes, lifetime, closing."""

import contextlib
import gc
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import weightlift


# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------


@pytest.mark.parametrize("as_type", [str, Path])
def test_single_file_str_or_path(store, h, as_type):
    ck = store.get("metadata")
    with weightlift.safe_open(as_type(ck.shards[0])) as f:
        h.assert_same_dict(f.get_tensors(), ck.expected, "file")
    h.assert_same_dict(weightlift.load_file(as_type(ck.shards[0])), ck.expected, "load_file")


@pytest.mark.parametrize("as_type", [str, Path])
def test_list_of_files(store, h, as_type):
    ck = store.get("sharded_list")
    with weightlift.safe_open([as_type(p) for p in ck.shards]) as f:
        assert f.keys() == ck.names
        h.assert_same_dict(f.get_tensors(), ck.expected, "list")


def test_list_order_is_shard_order(store, h):
    """offset_keys follows the list as given; keys() stays sorted; bytes are right."""
    ck = store.get("sharded_list")
    rev = list(reversed(ck.shards))
    with weightlift.safe_open(rev) as f:
        assert f.keys() == ck.names
        order = f.offset_keys()
        h.assert_same_dict(f.get_tensors(), ck.expected, "reversed list")
    assert sorted(order) == ck.names
    shard_of = [rev.index(ck.shard_of(k)) for k in order]
    assert shard_of == sorted(shard_of), "offset_keys() does not follow the order of the list"


@pytest.mark.parametrize("as_type", [str, Path])
@pytest.mark.parametrize("kind", ["sharded_dir", "sharded_index"], ids=["directory", "index"])
def test_directory_or_index(store, h, as_type, kind):
    ck = store.get(kind)
    with weightlift.safe_open(as_type(ck.source)) as f:
        assert f.keys() == ck.names
        h.assert_same_dict(f.get_tensors(), ck.expected, kind)
    h.assert_same_dict(weightlift.load(as_type(ck.source)), ck.expected, f"load({kind})")


def test_directory_without_index_takes_every_safetensors_file(store, h):
    ck = store.get("plain_dir")
    with weightlift.safe_open(ck.source) as f:
        assert f.keys() == ck.names
        assert f.metadata() == {"origin": "part-b"}
        h.assert_same_dict(f.get_tensors(), ck.expected, "plain dir")


def test_directory_with_index_ignores_other_files(tmp_path, h):
    """A directory holding one index opens through it: a stray consolidated file is not a shard."""
    shards = h.write_sharded(tmp_path / "ck", seed=21)
    h.write_raw(tmp_path / "ck" / "consolidated.safetensors", [("stray", "U8", [2], b"\x01\x02")])
    ref = h.Ckpt("x", tmp_path / "ck", shards, "index")
    with weightlift.safe_open(tmp_path / "ck") as f:
        assert "stray" not in f.keys()
        assert f.keys() == ref.names
        h.assert_same_dict(f.get_tensors(), ref.expected, "dir with stray file")


def test_context_manager_returns_handle(store):
    ck = store.get("metadata")
    f = weightlift.safe_open(ck.source)
    with f as g:
        assert g is f
        assert g.keys() == ck.names


# --------------------------------------------------------------------------
# Names and metadata
# --------------------------------------------------------------------------


def test_keys_sorted(ckpt):
    with weightlift.safe_open(ckpt.source) as f:
        keys = f.keys()
    assert isinstance(keys, list)
    assert keys == ckpt.names


def test_keys_same_as_safetensors(store):
    from safetensors import safe_open as st_safe_open

    ck = store.get("many_tiny")
    with st_safe_open(str(ck.shards[0]), "pt") as ref, weightlift.safe_open(ck.source) as f:
        assert f.keys() == list(ref.keys())


def test_offset_keys_in_file_order(ckpt):
    with weightlift.safe_open(ckpt.source) as f:
        order = f.offset_keys()
    assert isinstance(order, list)
    assert sorted(order) == ckpt.names and len(order) == len(set(order))
    positions = [ckpt.file_order_key(k) for k in order]
    assert positions == sorted(positions), "offset_keys() is not in (shard, offset) order"


def test_metadata(ckpt):
    with weightlift.safe_open(ckpt.source) as f:
        meta = f.metadata()
    assert meta == ckpt.metadata
    if meta is not None:
        assert isinstance(meta, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())


def test_metadata_none_without_any(store):
    ck = store.get("all_dtypes")
    with weightlift.safe_open(ck.source) as f:
        assert f.metadata() is None


def test_metadata_merged_over_shards(store):
    """Keys present in one shard only are kept; the index's own metadata (total_size) is not a shard's."""
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source) as f:
        assert f.metadata() == {"format": "pt", "only_in_first": "yes"}


def test_metadata_same_as_safetensors(store):
    from safetensors import safe_open as st_safe_open

    for name in ["metadata", "unaligned", "large"]:
        ck = store.get(name)
        with st_safe_open(str(ck.shards[0]), "pt") as ref, weightlift.safe_open(ck.source) as f:
            assert f.metadata() == ref.metadata(), name


def test_get_tensor_metadata(ckpt):
    with weightlift.safe_open(ckpt.source) as f:
        for name in ckpt.names[:200]:
            info = ckpt.infos[name]
            md = f.get_tensor_metadata(name)
            assert isinstance(md, weightlift.TensorMetadata)
            assert md.name == name
            assert md.dtype == info.dtype
            assert isinstance(md.shape, tuple) and md.shape == info.shape
            assert isinstance(md.file, str) and os.path.samefile(md.file, info.file), (md.file, info.file)
            assert tuple(md.data_offsets) == info.data_offsets
            assert md.offset == info.offset


def test_get_tensor_metadata_f6(store):
    ck = store.get("f6")
    with weightlift.safe_open(ck.source) as f:
        for name in ck.f6_names:
            md = f.get_tensor_metadata(name)
            assert (md.dtype, md.shape, tuple(md.data_offsets), md.offset) == (
                ck.infos[name].dtype, ck.infos[name].shape, ck.infos[name].data_offsets, ck.infos[name].offset)


# --------------------------------------------------------------------------
# get_tensor
# --------------------------------------------------------------------------


def test_get_tensor_twice_does_not_share_memory(ckpt, h):
    names = [k for k in ckpt.names if ckpt.infos[k].nbytes > 0][:50]
    with weightlift.safe_open(ckpt.source) as f:
        for k in names:
            a = f.get_tensor(k)
            b = f.get_tensor(k)
            h.assert_same_tensor(a, b, k)
            h.scramble_(a)
            h.assert_same_tensor(b, ckpt.expected[k], f"{k} after changing the first copy")
            c = f.get_tensor(k)
            h.assert_same_tensor(c, ckpt.expected[k], f"{k} fetched after changing a copy")


def test_get_tensor_after_tensors_changed(store, h):
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source) as f:
        for _, t in f.tensors():
            h.scramble_(t)
        got = {k: f.get_tensor(k) for k in f.keys()}
    h.assert_same_dict(got, ck.expected, "get_tensor after tensors() were changed")


def test_get_tensor_many_times_any_order(store, h):
    ck = store.get("all_dtypes")
    names = ck.names
    with weightlift.safe_open(ck.source) as f:
        for round_ in range(3):
            for k in (names if round_ % 2 else names[::-1]):
                h.assert_same_tensor(f.get_tensor(k), ck.expected[k], k)


@pytest.mark.parametrize("missing", ["nope", "", "model.norm.weigh", "__metadata__"])
def test_get_tensor_unknown_name(store, missing):
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source) as f:
        with pytest.raises(weightlift.TensorNotFoundError):
            f.get_tensor(missing)
        with pytest.raises(KeyError):
            f.get_tensor(missing)
        with pytest.raises(weightlift.TensorNotFoundError):
            f.get_slice(missing)
        with pytest.raises(weightlift.TensorNotFoundError):
            f.get_tensor_metadata(missing)


# --------------------------------------------------------------------------
# keys=: the selection
# --------------------------------------------------------------------------


SELECTORS = {
    "list": lambda names: [n for i, n in enumerate(names) if i % 2 == 0],
    "set": lambda names: {n for i, n in enumerate(names) if i % 3 != 1},
    "tuple": lambda names: tuple(names[-2:]),
}


@pytest.mark.parametrize("kind", sorted(SELECTORS))
@pytest.mark.parametrize("name", ["sharded_index", "all_dtypes", "many_tiny"])
def test_keys_collection(store, h, kind, name):
    ck = store.get(name)
    chosen = SELECTORS[kind](ck.names)
    want = sorted(chosen)
    with weightlift.safe_open(ck.source, keys=chosen) as f:
        assert f.keys() == want
        order = f.offset_keys()
        assert sorted(order) == want
        assert [ck.file_order_key(k) for k in order] == sorted(ck.file_order_key(k) for k in want)
        assert f.total_tensor_size == sum(ck.infos[k].nbytes for k in want)
        got = h.collect_tensors(f.tensors())
        h.assert_same_dict(got, {k: ck.expected[k] for k in want}, "tensors() with keys=")
        h.assert_same_dict(f.get_tensors(), {k: ck.expected[k] for k in want}, "get_tensors() with keys=")
        left_out = sorted(set(ck.names) - set(want))
        for k in left_out[:5]:
            with pytest.raises(weightlift.TensorNotFoundError):
                f.get_tensor(k)
            with pytest.raises(weightlift.TensorNotFoundError):
                f.get_slice(k)


def test_keys_predicate(store, h):
    ck = store.get("sharded_index")
    seen = []

    def pred(name):
        seen.append(name)
        return name.startswith("model.layers.")

    want = sorted(k for k in ck.names if k.startswith("model.layers."))
    with weightlift.safe_open(ck.source, keys=pred) as f:
        assert f.keys() == want
        h.assert_same_dict(h.collect_tensors(f.tensors()), {k: ck.expected[k] for k in want}, "predicate")
        with pytest.raises(weightlift.TensorNotFoundError):
            f.get_tensor("lm_head.weight")
    assert set(seen) <= set(ck.names)


def test_keys_in_load_functions(store, h):
    ck = store.get("sharded_index")
    want = ["lm_head.weight", "model.layers.0.mlp.counter"]
    h.assert_same_dict(weightlift.load(ck.source, keys=want), {k: ck.expected[k] for k in want}, "load keys=")
    ck1 = store.get("all_dtypes")
    got = weightlift.load_file(ck1.source, keys=lambda n: n.endswith("16"))
    h.assert_same_dict(got, {k: v for k, v in ck1.expected.items() if k.endswith("16")}, "load_file keys=")


@pytest.mark.parametrize("keys", [["nope"], ["lm_head.weight", "nope"]])
def test_keys_naming_absent_tensor(store, keys):
    ck = store.get("sharded_index")
    with pytest.raises(weightlift.TensorNotFoundError) as ei:
        weightlift.safe_open(ck.source, keys=keys)
    assert "nope" in str(ei.value)
    with pytest.raises(KeyError):
        weightlift.safe_open(ck.source, keys=keys)


# --------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------


def test_total_tensor_size(ckpt):
    with weightlift.safe_open(ckpt.source) as f:
        assert f.total_tensor_size == ckpt.total_size


def test_total_tensor_size_f6(store):
    ck = store.get("f6")
    with weightlift.safe_open(ck.source) as f:
        assert f.total_tensor_size == ck.total_size


def test_buffer_size_default(store):
    with weightlift.safe_open(store.get("metadata").source) as f:
        assert isinstance(f.buffer_size, int) and f.buffer_size > 0


def test_buffer_size_given(store, h):
    """A buffer smaller than the 64 MiB tensor: the load must still be right."""
    ck = store.get("large")
    size = 4 << 20
    with weightlift.safe_open(ck.source, buffer_size=size) as f:
        assert f.buffer_size == size
        h.assert_same_dict(h.collect_tensors(f.tensors()), ck.expected, "buffer_size=4MiB")


# --------------------------------------------------------------------------
# Lifetime and closing
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [None, "MMAP", "PREAD_BUFFERED"])
@pytest.mark.parametrize("name", ["all_dtypes", "large", "sharded_index"])
def test_tensors_outlive_the_handle(store, h, name, backend):
    ck = store.get(name)
    other = store.get("many_tiny")
    guard = h.backend_guard(backend) if backend else contextlib.nullcontext()
    with guard:
        with weightlift.safe_open(ck.source, backend=backend) as f:
            from_iter = h.collect_tensors(f.tensors())
            from_get = {k: f.get_tensor(k) for k in f.keys()}
            first = ck.names[0]
        g = weightlift.safe_open(ck.source, backend=backend)
        from_open = g.get_tensor(first)
        del f, g
        gc.collect()
        # Churn memory: other loads, freed, before looking again.
        for _ in range(2):
            d = weightlift.load_file(other.source, backend=backend)
            del d
            gc.collect()
    h.assert_same_dict(from_iter, ck.expected, "tensors() after close")
    h.assert_same_dict(from_get, ck.expected, "get_tensor() after close")
    h.assert_same_tensor(from_open, ck.expected[first], "get_tensor() after del")


CLOSED_CALLS = {
    "keys": lambda f, k: f.keys(),
    "offset_keys": lambda f, k: f.offset_keys(),
    "metadata": lambda f, k: f.metadata(),
    "tensors": lambda f, k: list(f.tensors()),
    "get_tensor": lambda f, k: f.get_tensor(k),
    "get_tensors": lambda f, k: f.get_tensors(),
    "get_slice": lambda f, k: f.get_slice(k),
    "get_tensor_metadata": lambda f, k: f.get_tensor_metadata(k),
}


@pytest.mark.parametrize("how", ["with", "close"])
@pytest.mark.parametrize("call", sorted(CLOSED_CALLS))
def test_closed_handle(store, call, how):
    ck = store.get("sharded_index")
    name = ck.names[0]
    if how == "with":
        with weightlift.safe_open(ck.source) as f:
            f.get_tensor(name)
    else:
        f = weightlift.safe_open(ck.source)
        f.get_tensor(name)
        f.close()
    with pytest.raises(weightlift.ClosedError):
        CLOSED_CALLS[call](f, name)


def test_closed_error_is_weightlift_error(store):
    f = weightlift.safe_open(store.get("metadata").source)
    f.close()
    with pytest.raises(weightlift.WeightliftError):
        f.keys()
