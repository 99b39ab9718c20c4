"""Backends (forced, by policy, by environment), devices, process groups, progress."""

import pytest
import torch

import weightlift

ALL_NAMES = ["URING", "URING_BUFFERED", "AIO", "AIO_BUFFERED", "PREAD", "PREAD_BUFFERED", "MMAP", "CUFILE"]


def _names_in(desc):
    return [n for n in ALL_NAMES if n in desc]


def _both_raise(exc, path, **kw):
    """safe_open (on its first load) and load_file both raise `exc`."""
    with pytest.raises(exc):
        with weightlift.safe_open(path, **kw) as f:
            f.get_tensors()
    with pytest.raises(exc):
        weightlift.load_file(path, **kw)


# --------------------------------------------------------------------------
# Every backend, every checkpoint: byte-identical
# --------------------------------------------------------------------------


def test_backend_matrix(ckpt, backend_name, h):
    with h.backend_guard(backend_name):
        with weightlift.safe_open(ckpt.source, backend=weightlift.Backend[backend_name]) as f:
            got = h.collect_tensors(f.tensors())
            desc = f.backend
            last = max(ckpt.expected, key=ckpt.file_order_key)
            again = f.get_tensor(last)
    assert isinstance(desc, str) and backend_name in desc, f"f.backend = {desc!r}"
    h.assert_same_dict(got, ckpt.expected, f"{ckpt.name} with {backend_name}")
    h.assert_same_tensor(again, ckpt.expected[last], f"{last} again with {backend_name}")


@pytest.mark.parametrize("name", ["all_dtypes", "sharded_index", "large"])
def test_backend_by_string_in_load(store, backend_name, h, name):
    ck = store.get(name)
    with h.backend_guard(backend_name):
        if ck.kind == "file":
            got = weightlift.load_file(ck.source, backend=backend_name)
        else:
            got = weightlift.load(ck.source, backend=backend_name)
    h.assert_same_dict(got, ck.expected, f"{name} load backend={backend_name}")


def test_backend_numpy(store, backend_name, h):
    ck = store.get("unaligned")
    with h.backend_guard(backend_name):
        with weightlift.safe_open(ck.source, framework="np", backend=backend_name, keys=ck.numpy_names) as f:
            got = f.get_tensors()
    for k, exp in ck.expected_np.items():
        h.assert_same_array(got[k], exp, f"np {k} with {backend_name}")


# --------------------------------------------------------------------------
# The forms of backend=
# --------------------------------------------------------------------------


def test_backend_none_before_any_load(store):
    ck = store.get("metadata")
    with weightlift.safe_open(ck.source) as f:
        assert f.backend is None
        f.get_tensor("w")
        assert isinstance(f.backend, str) and _names_in(f.backend), f.backend


def test_backend_default_reported_after_tensors(store, h):
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source) as f:
        h.assert_same_dict(h.collect_tensors(f.tensors()), ck.expected, "auto")
        assert isinstance(f.backend, str) and _names_in(f.backend), f.backend


@pytest.mark.parametrize("form", ["enum", "str"])
def test_backend_mmap_forms(store, h, form):
    ck = store.get("all_dtypes")
    arg = weightlift.Backend.MMAP if form == "enum" else "MMAP"
    with h.backend_guard("MMAP"):
        with weightlift.safe_open(ck.source, backend=arg) as f:
            h.assert_same_dict(f.get_tensors(), ck.expected, f"MMAP as {form}")
            assert "MMAP" in f.backend


@pytest.mark.parametrize("form", ["enum", "str"])
def test_backend_policy_buffered(store, h, form):
    ck = store.get("sharded_index")
    arg = weightlift.BackendPolicy.BUFFERED if form == "enum" else "BUFFERED"
    with weightlift.safe_open(ck.source, backend=arg) as f:
        h.assert_same_dict(f.get_tensors(), ck.expected, "BUFFERED")
        assert isinstance(f.backend, str) and _names_in(f.backend), f.backend


@pytest.mark.parametrize("form", ["enum", "str"])
def test_backend_policy_direct(store, h, form):
    ck = store.get("large")
    arg = weightlift.BackendPolicy.DIRECT if form == "enum" else "DIRECT"
    with h.backend_guard("DIRECT", names_in_message=["URING", "AIO", "PREAD", "DIRECT"], required=True):
        with weightlift.safe_open(ck.source, backend=arg) as f:
            h.assert_same_dict(f.get_tensors(), ck.expected, "DIRECT")
            desc = f.backend
    assert isinstance(desc, str) and _names_in(desc), desc


def test_backend_list(store, h):
    ck = store.get("sharded_index")
    arg = [weightlift.Backend.MMAP, "PREAD_BUFFERED"]
    with weightlift.safe_open(ck.source, backend=arg) as f:
        h.assert_same_dict(f.get_tensors(), ck.expected, "list of backends")
        assert "MMAP" in f.backend or "PREAD_BUFFERED" in f.backend, f.backend


def test_backend_list_with_policy(store, h):
    ck = store.get("all_dtypes")
    with weightlift.safe_open(ck.source, backend=[weightlift.BackendPolicy.DIRECT, "MMAP"]) as f:
        h.assert_same_dict(f.get_tensors(), ck.expected, "DIRECT then MMAP")


@pytest.mark.parametrize("arg", ["NOPE", "MMAPP", ["MMAP", "NOPE"]], ids=["NOPE", "MMAPP", "list"])
def test_unknown_backend(store, arg):
    ck = store.get("metadata")
    _both_raise(weightlift.BackendError, ck.source, backend=arg)


# --------------------------------------------------------------------------
# WEIGHTLIFT_BACKEND
# --------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["MMAP", "PREAD_BUFFERED"])
def test_env_backend(store, h, monkeypatch, env):
    ck = store.get("sharded_index")
    monkeypatch.setenv("WEIGHTLIFT_BACKEND", env)
    with h.backend_guard(env):
        with weightlift.safe_open(ck.source) as f:
            h.assert_same_dict(f.get_tensors(), ck.expected, f"WEIGHTLIFT_BACKEND={env}")
            assert env in f.backend, f.backend


def test_env_backend_comma_list(store, h, monkeypatch):
    ck = store.get("all_dtypes")
    monkeypatch.setenv("WEIGHTLIFT_BACKEND", "PREAD_BUFFERED,MMAP")
    with weightlift.safe_open(ck.source) as f:
        h.assert_same_dict(f.get_tensors(), ck.expected, "WEIGHTLIFT_BACKEND list")
        assert "PREAD_BUFFERED" in f.backend or "MMAP" in f.backend, f.backend


def test_explicit_backend_overrides_env(store, h, monkeypatch):
    ck = store.get("all_dtypes")
    monkeypatch.setenv("WEIGHTLIFT_BACKEND", "MMAP")
    with h.backend_guard("PREAD_BUFFERED"):
        with weightlift.safe_open(ck.source, backend="PREAD_BUFFERED") as f:
            h.assert_same_dict(f.get_tensors(), ck.expected, "explicit over env")
            assert "PREAD_BUFFERED" in f.backend, f.backend


def test_env_unknown_backend(store, monkeypatch):
    ck = store.get("metadata")
    monkeypatch.setenv("WEIGHTLIFT_BACKEND", "NOT_A_BACKEND")
    with pytest.raises(weightlift.BackendError):
        with weightlift.safe_open(ck.source) as f:
            f.get_tensors()


# --------------------------------------------------------------------------
# Devices and process groups
# --------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=["str", "torch.device"])
def test_device_cpu(store, h, device):
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source, device=device) as f:
        got = f.get_tensors()
    assert all(t.device.type == "cpu" for t in got.values())
    h.assert_same_dict(got, ck.expected, f"device={device!r}")
    got = weightlift.load(ck.source, device=device)
    h.assert_same_dict(got, ck.expected, f"load device={device!r}")
    ck1 = store.get("metadata")
    h.assert_same_dict(weightlift.load_file(ck1.source, device=device), ck1.expected, "load_file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="only without a GPU")
@pytest.mark.parametrize("device", ["cuda:0", 0, "cuda", torch.device("cuda:0")],
                         ids=["cuda:0", "int 0", "cuda", "torch.device"])
def test_device_without_gpu(store, device):
    ck = store.get("metadata")
    _both_raise(weightlift.DeviceError, ck.source, device=device)


def test_process_group_not_supported(store):
    ck = store.get("metadata")
    with pytest.raises(weightlift.WeightliftError):
        with weightlift.safe_open(ck.source, process_group=object()) as f:
            f.get_tensors()
    with pytest.raises(weightlift.WeightliftError):
        with weightlift.safe_open(ck.source, "pt", "cpu", object()) as f:
            f.get_tensors()


# --------------------------------------------------------------------------
# progress=True
# --------------------------------------------------------------------------


def test_progress_load_file(store, h, capfd):
    ck = store.get("large")
    got = weightlift.load_file(ck.source, progress=True)
    h.assert_same_dict(got, ck.expected, "progress=True")
    err = capfd.readouterr().err
    assert err.strip(), "progress=True wrote nothing to stderr"


def test_progress_safe_open(store, h, capfd):
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source, progress=True) as f:
        got = h.collect_tensors(f.tensors())
    h.assert_same_dict(got, ck.expected, "safe_open progress=True")
    assert capfd.readouterr().err.strip(), "progress=True wrote nothing to stderr"



@pytest.mark.skipif(torch.cuda.is_available(), reason="only without a GPU")
def test_device_error_says_what_is_missing(store):
    """Without a GPU, the error names the missing driver or the failing call."""
    ck = store.get("metadata")
    with pytest.raises(weightlift.DeviceError, match="libcuda|result") as ei:
        weightlift.load_file(ck.source, device="cuda:0")
    assert "device='cpu'" in str(ei.value)
