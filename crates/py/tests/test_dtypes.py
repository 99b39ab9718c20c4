"""Every dtype of the format: torch and numpy, against safetensors; F6 refused with DtypeError."""

import pytest
import torch
from safetensors import safe_open as st_safe_open

import weightlift

TORCH_DTYPES = ["BOOL", "U8", "I8", "U16", "I16", "F16", "BF16", "U32", "I32", "F32", "U64", "I64", "F64", "C64",
                "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F4"]
NUMPY_OK = ["BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64", "F64", "C64"]
NUMPY_LACKS = ["BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F4"]


@pytest.mark.parametrize("dtype", TORCH_DTYPES)
def test_torch_dtype(store, h, dtype):
    ck = store.get("all_dtypes")
    name = f"t_{dtype.lower()}"
    assert ck.infos[name].dtype == dtype
    exp = ck.expected[name]
    assert exp.dtype == h.ST_TO_TORCH[dtype]
    with weightlift.safe_open(ck.source) as f:
        got = f.get_tensor(name)
        assert f.get_slice(name).get_dtype() == dtype
        assert f.get_tensor_metadata(name).dtype == dtype
    h.assert_same_tensor(got, exp, name)
    got2 = weightlift.load_file(ck.source, keys=[name])[name]
    h.assert_same_tensor(got2, exp, f"load_file {name}")


def test_f4_last_dimension_halved(store, h):
    """F4 [5, 8] in the header is float4_e2m1fn_x2 [5, 4], as safetensors gives it."""
    ck = store.get("all_dtypes")
    assert ck.infos["t_f4"].shape == (5, 8)
    with weightlift.safe_open(ck.source) as f:
        t = f.get_tensor("t_f4")
        assert f.get_slice("t_f4").get_shape() == [5, 8]
        assert f.get_tensor_metadata("t_f4").shape == (5, 8)
    assert t.dtype == torch.float4_e2m1fn_x2
    assert tuple(t.shape) == (5, 4)
    with st_safe_open(str(ck.shards[0]), "pt") as ref:
        assert tuple(ref.get_tensor("t_f4").shape) == (5, 4)


def test_f4_empty(store, h):
    ck = store.get("empty_scalar")
    with weightlift.safe_open(ck.source) as f:
        t = f.get_tensor("empty_f4")
    h.assert_same_tensor(t, ck.expected["empty_f4"], "empty_f4")


@pytest.mark.parametrize("dtype", NUMPY_OK)
def test_numpy_dtype(store, h, dtype):
    ck = store.get("all_dtypes")
    name = f"t_{dtype.lower()}"
    with weightlift.safe_open(ck.source, framework="np") as f:
        got = f.get_tensor(name)
    h.assert_same_array(got, ck.expected_np[name], name)


@pytest.mark.parametrize("dtype", NUMPY_LACKS)
def test_numpy_lacks_dtype(store, dtype):
    ck = store.get("all_dtypes")
    name = f"t_{dtype.lower()}"
    with pytest.raises(weightlift.DtypeError) as ei:
        with weightlift.safe_open(ck.source, framework="np") as f:
            f.get_tensor(name)
    msg = str(ei.value)
    assert dtype in msg, f"the error does not name the dtype {dtype}: {msg}"
    assert name in msg, f"the error does not name the tensor {name}: {msg}"
    with pytest.raises(TypeError):
        with weightlift.safe_open(ck.source, framework="np") as f:
            f.get_tensor(name)


@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2"])
def test_numpy_f6(store, dtype):
    ck = store.get("f6")
    name = dtype.lower()
    with pytest.raises(weightlift.DtypeError) as ei:
        with weightlift.safe_open(ck.source, framework="np") as f:
            f.get_tensor(name)
    assert dtype in str(ei.value) and name in str(ei.value), str(ei.value)


@pytest.mark.parametrize("name", ["f6_e2m3", "f6_e3m2"])
def test_f6_get_tensor_raises(store, name):
    ck = store.get("f6")
    with weightlift.safe_open(ck.source) as f:
        with pytest.raises(weightlift.DtypeError) as ei:
            f.get_tensor(name)
        assert name in str(ei.value), str(ei.value)
        # The handle still works after the refusal.
        assert f.get_tensor("a_u8").dtype == torch.uint8


def test_f6_others_load(store, h):
    ck = store.get("f6")
    with weightlift.safe_open(ck.source) as f:
        assert f.keys() == ck.names
        for k in ck.loadable_names:
            h.assert_same_tensor(f.get_tensor(k), ck.expected[k], k)
        assert f.get_slice("f6_e2m3").get_dtype() == "F6_E2M3"
        assert f.get_slice("f6_e2m3").get_shape() == [2, 4]


def test_f6_left_out_by_keys(store, h):
    ck = store.get("f6")
    with weightlift.safe_open(ck.source, keys=ck.loadable_names) as f:
        h.assert_same_dict(h.collect_tensors(f.tensors()), ck.expected, "tensors() without F6")
    h.assert_same_dict(weightlift.load_file(ck.source, keys=lambda n: not n.startswith("f6")), ck.expected,
                       "load_file without F6")


@pytest.mark.parametrize("api", ["tensors", "get_tensors", "load_file"])
def test_f6_whole_load_raises(store, api):
    ck = store.get("f6")
    with pytest.raises(weightlift.DtypeError) as ei:
        if api == "load_file":
            weightlift.load_file(ck.source)
        else:
            with weightlift.safe_open(ck.source) as f:
                if api == "tensors":
                    list(f.tensors())
                else:
                    f.get_tensors()
    assert any(n in str(ei.value) for n in ck.f6_names), str(ei.value)


def test_safetensors_refuses_f6_too(store):
    """The reference behaviour the F6 tests follow."""
    ck = store.get("f6")
    with st_safe_open(str(ck.shards[0]), "pt") as ref:
        with pytest.raises(Exception):
            ref.get_tensor("f6_e2m3")


def test_bool_values(store):
    ck = store.get("all_dtypes")
    with weightlift.safe_open(ck.source) as f:
        t = f.get_tensor("t_bool")
    assert t.dtype == torch.bool
    assert torch.equal(t, ck.expected["t_bool"])


def test_scalars_and_empty(store, h):
    ck = store.get("empty_scalar")
    with weightlift.safe_open(ck.source) as f:
        for k in ck.names:
            t = f.get_tensor(k)
            h.assert_same_tensor(t, ck.expected[k], k)
            if k.startswith("scalar_"):
                assert t.dim() == 0 and t.shape == torch.Size([])
            if k.startswith("empty_"):
                assert t.numel() == 0
