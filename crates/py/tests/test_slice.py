"""get_slice: indexing like safetensors' get_slice, compared with its own result."""

import numpy as np
import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import save_file

import weightlift

# (safetensors dtype, header shape) of the sliced tensors.
SPECS = {
    "f32_3d": ("F32", (6, 10, 8)),
    "bf16_2d": ("BF16", (12, 7)),
    "u8_1d": ("U8", (20,)),
    "bool_2d": ("BOOL", (4, 5)),
    "c64_2d": ("C64", (3, 4)),
    "f8_2d": ("F8_E4M3", (5, 6)),
    "i64_3d": ("I64", (2, 3, 4)),
    "f16_col": ("F16", (9, 1)),
}

E = Ellipsis
INDICES = {
    "[0:2]": slice(0, 2),
    "[0:10]": slice(0, 10),
    "[:]": slice(None),
    "[1]": 1,
    "[-1]": -1,
    "[-3:]": slice(-3, None),
    "[1:-1]": slice(1, -1),
    "[0:1000]": slice(0, 1000),
    "[5:5]": slice(5, 5),
    "[3:1]": slice(3, 1),
    "[...]": E,
    "[::2]": slice(None, None, 2),
    "[:, 5:]": (slice(None), slice(5, None)),
    "[..., 2:4]": (E, slice(2, 4)),
    "[2:5, 1:3]": (slice(2, 5), slice(1, 3)),
    "[1, 2:4]": (1, slice(2, 4)),
    "[:, -2]": (slice(None), -2),
    "[..., 0]": (E, 0),
    "[0, 0]": (0, 0),
    "[:, 1:9:3]": (slice(None), slice(1, 9, 3)),
    "[1:4, :, 7]": (slice(1, 4), slice(None), 7),
    "[1, 2, 3]": (1, 2, 3),
    "[..., 1, 2:4]": (E, 1, slice(2, 4)),
    "[1, ..., 2]": (1, E, 2),
    "[0:1, 0:1, 0:1]": (slice(0, 1), slice(0, 1), slice(0, 1)),
}


@pytest.fixture(scope="module")
def slice_file(tmp_path_factory, h):
    g = torch.Generator().manual_seed(11)
    tensors = {name: h.random_tensor(dt, shape, g) for name, (dt, shape) in SPECS.items()}
    p = tmp_path_factory.mktemp("slices") / "slices.safetensors"
    save_file(tensors, str(p))
    return p


def _ref(sl, idx):
    try:
        return sl[idx], None
    except Exception as e:  # the reference refuses this index for this tensor
        return None, e


@pytest.mark.parametrize("label", list(INDICES))
def test_get_slice_like_safetensors(slice_file, h, label):
    idx = INDICES[label]
    compared = 0
    with st_safe_open(str(slice_file), "pt") as ref, weightlift.safe_open(slice_file) as f:
        for name in SPECS:
            exp, err = _ref(ref.get_slice(name), idx)
            s = f.get_slice(name)
            if err is not None:
                with pytest.raises(Exception):
                    s[idx]
                continue
            got = s[idx]
            h.assert_same_tensor(got, exp, f"{name}{label}")
            compared += 1
    assert compared > 0


def test_get_slice_shape_and_dtype(slice_file):
    with st_safe_open(str(slice_file), "pt") as ref, weightlift.safe_open(slice_file) as f:
        for name, (dt, shape) in SPECS.items():
            s = f.get_slice(name)
            assert s.get_shape() == list(shape) == ref.get_slice(name).get_shape()
            assert s.get_dtype() == dt == ref.get_slice(name).get_dtype()


def test_get_slice_result_is_independent(slice_file, h):
    with weightlift.safe_open(slice_file) as f:
        a = f.get_slice("f32_3d")[1:3]
        b = f.get_slice("f32_3d")[1:3]
        full = f.get_tensor("f32_3d")
        h.scramble_(a)
        h.assert_same_tensor(b, full[1:3].contiguous(), "second slice after changing the first")


def test_get_slice_outlives_handle(slice_file, h):
    with st_safe_open(str(slice_file), "pt") as ref:
        exp = ref.get_slice("i64_3d")[:, 1:]
    with weightlift.safe_open(slice_file) as f:
        s = f.get_slice("i64_3d")
        got = s[:, 1:]
    h.assert_same_tensor(got, exp, "slice after close")


@pytest.mark.parametrize("idx", [100, -100, (0, 100)])
def test_get_slice_out_of_range(slice_file, idx):
    with weightlift.safe_open(slice_file) as f:
        with pytest.raises((IndexError, weightlift.WeightliftError)):
            f.get_slice("f32_3d")[idx]


@pytest.mark.parametrize("label", ["[0:2]", "[:, 5:]", "[1]", "[..., 2:4]", "[:]", "[1, 2:4]"])
def test_get_slice_numpy(slice_file, h, label):
    idx = INDICES[label]
    with st_safe_open(str(slice_file), "np") as ref, weightlift.safe_open(slice_file, framework="np") as f:
        for name in ["f32_3d", "u8_1d", "i64_3d", "bool_2d", "c64_2d"]:
            exp, err = _ref(ref.get_slice(name), idx)
            if err is not None:
                continue
            h.assert_same_array(np.asarray(f.get_slice(name)[idx]), np.asarray(exp), f"np {name}{label}")


def test_get_slice_on_scalar(store, h):
    ck = store.get("empty_scalar")
    with st_safe_open(str(ck.shards[0]), "pt") as ref, weightlift.safe_open(ck.source) as f:
        for name in ["scalar_f32", "scalar_i64", "scalar_bool"]:
            assert f.get_slice(name).get_shape() == []
            h.assert_same_tensor(f.get_slice(name)[...], ref.get_slice(name)[...], f"{name}[...]")
