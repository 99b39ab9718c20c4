"""dtype=: floating-point tensors converted as they land, byte for byte
what `.to(dtype)` of safetensors' tensor gives; other tensors untouched.
Through safe_open, load_file and load_into, on the host and through the
host device that stands in for a GPU (`standin`, from
test_device_pipeline.py's fixture, copied here)."""

import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import save_file

import weightlift
from weightlift import _api, _weightlift


@pytest.fixture
def standin(monkeypatch):
    """GPU device names (and load_into's CPU targets) mapped to the host device."""
    gpu = _api._Gpu(torch.device("cpu"), "host")
    real_device = _api._device

    def names_a_gpu(d) -> bool:
        if isinstance(d, bool):
            return False
        if isinstance(d, int):
            return d >= 0
        try:
            return _weightlift.placement(d if isinstance(d, str) else str(d))[0] == "cuda"
        except weightlift.DeviceError:
            return False

    monkeypatch.setattr(_api, "_device", lambda d: gpu if names_a_gpu(d) else real_device(d))
    monkeypatch.setattr(
        _api, "_pipeline_for", lambda targets: gpu if _api._straight_device(targets) is not None else None
    )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two shards with an index: every floating dtype torch converts, and
    tensors that must pass untouched (ints, bool, complex)."""
    g = torch.Generator().manual_seed(7)
    wide = torch.randn(33, 17, generator=g, dtype=torch.float64) * 1e3  # some overflow fp16
    tensors = {
        "f64": wide,
        "f32": wide.float(),
        "bf16": wide.to(torch.bfloat16),
        "f16": torch.randn(5, 7, generator=g).half(),
        "f8": torch.randn(64, generator=g).to(torch.float8_e4m3fn),
        "tiny": torch.tensor([1e-30, -1e-42, float("inf"), float("nan")], dtype=torch.float32),
        "scalar": torch.tensor(3.25, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "i64": torch.randint(-(2**40), 2**40, (9,), generator=g),
        "i8": torch.randint(-128, 127, (3, 3), generator=g, dtype=torch.int8),
        "flag": torch.tensor([True, False, True]),
        "c64": torch.randn(4, generator=g, dtype=torch.complex64),
    }
    d = tmp_path_factory.mktemp("mixed")
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, str(d / fname))
        weight_map.update({k: fname for k in part})
    import json

    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def _reference(d, dtype):
    """What safetensors reads, each floating tensor `.to(dtype)`."""
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with st_safe_open(str(f), "pt") as r:
            for k in r.keys():
                t = r.get_tensor(k)
                out[k] = t.to(dtype) if t.is_floating_point() else t
    return out


def _same(got, want, what):
    assert sorted(got) == sorted(want), what
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == w.dtype, f"{what}: tensor {k!r} is {g.dtype}, safetensors' .to gives {w.dtype}"
        assert tuple(g.shape) == tuple(w.shape), f"{what}: tensor {k!r} shape {tuple(g.shape)} != {tuple(w.shape)}"
        gb = g.contiguous().view(-1).view(torch.uint8) if g.numel() else g
        wb = w.contiguous().view(-1).view(torch.uint8) if w.numel() else w
        assert torch.equal(gb, wb), f"{what}: tensor {k!r} differs from safetensors' .to({w.dtype}) byte for byte"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_load_file_converts_floats_only(mixed, dtype):
    _same(weightlift.load_file(mixed, dtype=dtype), _reference(mixed, dtype), f"load_file(dtype={dtype})")
    _same(weightlift.load_file(mixed, dtype=dtype, mmap=False), _reference(mixed, dtype), "mmap=False")


def test_every_safe_open_call_converts(mixed):
    want = _reference(mixed, torch.float16)
    with weightlift.safe_open(mixed, dtype="float16") as f:
        _same(dict(f.tensors()), want, "tensors()")
        _same(f.get_tensors(), want, "get_tensors()")
        _same({k: f.get_tensor(k) for k in f.keys()}, want, "get_tensor in order")
        _same({k: f.get_tensor(k) for k in reversed(f.keys())}, want, "get_tensor out of order")
        _same({"f32": f.get_slice("f32")[2:5]}, {"f32": want["f32"][2:5]}, "get_slice")
        # A dtype that does not change anything leaves tensors as stored.
    with weightlift.safe_open(mixed, dtype=torch.float32) as f:
        assert f.get_tensor("i64").dtype == torch.int64


def test_onto_a_device_converted_after_the_copy(standin, mixed):
    want = _reference(mixed, torch.bfloat16)
    _same(weightlift.load_file(mixed, device="cuda:0", dtype=torch.bfloat16), want, "load_file onto a device")
    with weightlift.safe_open(mixed, device="cuda:0", dtype=torch.bfloat16) as f:
        _same({k: f.get_tensor(k) for k in reversed(f.keys())}, want, "get_tensor onto a device")
    with weightlift.safe_open(mixed, device="cuda:0", dtype=torch.bfloat16, copy=False) as f:
        got = {k: t.clone() for k, t in f.tensors()}
    _same(got, want, "copy=False onto a device")


@pytest.mark.parametrize("where", ["host", "device"])
def test_load_into_converts_into_targets_of_that_dtype(request, mixed, where):
    if where == "device":
        request.getfixturevalue("standin")
    want = _reference(mixed, torch.float16)
    targets = {k: torch.full_like(v, 1) if v.dtype != torch.bool else torch.zeros_like(v) for k, v in want.items()}
    before = {k: t.data_ptr() for k, t in targets.items()}
    weightlift.load_into(targets, mixed, dtype=torch.float16)
    _same(targets, want, f"load_into(dtype=float16) on the {where}")
    assert {k: t.data_ptr() for k, t in targets.items()} == before, "load_into must write in place"


def test_load_into_dtype_checks(mixed):
    want = _reference(mixed, torch.float16)
    # Without dtype=, a float target of another dtype is refused, as before.
    targets = {k: torch.empty_like(v) for k, v in want.items()}
    with pytest.raises(weightlift.MismatchError, match=r"is (F64|F32|BF16|F8_E4M3) .*but the target's is torch.float16"):
        weightlift.load_into(targets, mixed)
    # With dtype=, a float target must be of that dtype...
    targets["f32"] = torch.empty(33, 17, dtype=torch.float32)
    with pytest.raises(weightlift.MismatchError, match=r"'f32'.*converted to torch.float16.*torch.float32"):
        weightlift.load_into(targets, mixed, dtype=torch.float16)
    # ...and an integer target keeps its tensor's dtype.
    targets = {k: torch.empty_like(v) for k, v in want.items()}
    targets["i64"] = torch.empty(9, dtype=torch.float16)
    with pytest.raises(weightlift.MismatchError, match="'i64'.*I64"):
        weightlift.load_into(targets, mixed, dtype=torch.float16)


def test_dtype_argument_errors(mixed):
    for bad in (torch.int32, "int8", "nope", 3):
        with pytest.raises(weightlift.InvalidArgumentError, match="floating-point torch.dtype"):
            weightlift.load_file(mixed, dtype=bad)
    with pytest.raises(weightlift.SettingError, match="framework='np'"):
        weightlift.safe_open(mixed, "np", dtype=torch.float16)
