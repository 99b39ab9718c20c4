"""Byte-for-byte: every generated checkpoint through every API, against safetensors."""

import pytest
import torch

import weightlift


def open_ckpt(ckpt, **kw):
    return weightlift.safe_open(ckpt.source, **kw)


def test_tensors(ckpt, h):
    with open_ckpt(ckpt) as f:
        got = h.collect_tensors(f.tensors())
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} tensors()")


def test_tensors_twice(ckpt, h):
    """A second tensors() yields everything again, right, even after the first round was overwritten."""
    with open_ckpt(ckpt) as f:
        first = h.collect_tensors(f.tensors())
        for t in first.values():
            h.scramble_(t)
        second = h.collect_tensors(f.tensors())
    h.assert_same_dict(second, ckpt.expected, f"{ckpt.name} second tensors()")


def test_get_tensor(ckpt, h):
    with open_ckpt(ckpt) as f:
        got = {k: f.get_tensor(k) for k in f.keys()}
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} get_tensor")


def test_get_tensor_reverse_file_order(ckpt, h):
    """Any order: here last tensor of the last shard first."""
    names = sorted(ckpt.expected, key=ckpt.file_order_key, reverse=True)
    with open_ckpt(ckpt) as f:
        got = {k: f.get_tensor(k) for k in names}
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} get_tensor reversed")


def test_get_tensors(ckpt, h):
    with open_ckpt(ckpt) as f:
        got = f.get_tensors()
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} get_tensors()")


def test_load(ckpt, h):
    """load_file for a file, load for a directory, an index or a list of shards."""
    if ckpt.kind == "file":
        got = weightlift.load_file(ckpt.source)
    else:
        got = weightlift.load(ckpt.source)
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} load")


def test_load_file_matches_safetensors_load_file(store, h):
    from safetensors.torch import load_file as st_load_file

    for name in ["all_dtypes", "empty_scalar", "unaligned", "metadata"]:
        ck = store.get(name)
        h.assert_same_dict(weightlift.load_file(ck.source), st_load_file(str(ck.shards[0])), f"{name} load_file")


def _full_index(shape):
    # safetensors' get_slice refuses [:] on a 0-dim tensor; [...] is its whole-tensor index there
    return slice(None) if len(shape) else Ellipsis


def test_get_slice_whole(ckpt, h):
    from safetensors import safe_open as st_safe_open

    checked = 0
    with open_ckpt(ckpt) as f:
        for shard in ckpt.shards:
            with st_safe_open(str(shard), framework="pt") as ref:
                for k in ref.keys():
                    info = ckpt.infos[k]
                    s = f.get_slice(k)
                    assert s.get_shape() == list(ref.get_slice(k).get_shape()), k
                    assert all(type(d) is int for d in s.get_shape()), k
                    assert s.get_dtype() == ref.get_slice(k).get_dtype() == info.dtype, k
                    if info.dtype in h.F6_DTYPES or info.dtype == "F4":
                        continue  # safetensors' own get_slice cannot index these
                    idx = _full_index(info.shape)
                    h.assert_same_tensor(s[idx], ref.get_slice(k)[idx], f"{ckpt.name} get_slice({k})[:]")
                    checked += 1
    assert checked > 0


def test_load_into_dict(ckpt, h):
    target = {k: h.inverted_like(v) for k, v in ckpt.expected.items()}
    ptrs = {k: t.data_ptr() for k, t in target.items()}
    res = weightlift.load_into(target, ckpt.source)
    assert isinstance(res, weightlift.IncompatibleKeys)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    for k, t in target.items():
        assert t.data_ptr() == ptrs[k], f"{k}: load_into replaced the tensor's memory"
    h.assert_same_dict(target, ckpt.expected, f"{ckpt.name} load_into")


def test_numpy(ckpt, h):
    names = ckpt.numpy_names
    if not names:
        pytest.skip("no dtype numpy can represent")
    with weightlift.safe_open(ckpt.source, framework="np", keys=names) as f:
        got = h.collect_tensors(f.tensors())
        again = {k: f.get_tensor(k) for k in reversed(names)}
    assert sorted(got) == sorted(ckpt.expected_np)
    for k, exp in ckpt.expected_np.items():
        h.assert_same_array(got[k], exp, f"{ckpt.name} np tensors()[{k}]")
        h.assert_same_array(again[k], exp, f"{ckpt.name} np get_tensor({k})")


def test_numpy_lacking_dtypes_raise(ckpt, h):
    lacking = sorted(n for n, i in ckpt.infos.items() if i.dtype in h.NUMPY_LACKS)
    if not lacking:
        pytest.skip("every dtype has a numpy equivalent")
    with weightlift.safe_open(ckpt.source, framework="np") as f:
        for k in lacking[:5]:
            with pytest.raises(weightlift.DtypeError) as ei:
                f.get_tensor(k)
            assert k in str(ei.value) and ckpt.infos[k].dtype in str(ei.value), str(ei.value)
