"""Loading onto a device through staging, on machines without a GPU.

GPU devices are mapped to the host-memory device that stands in for one
(the ``standin`` fixture; the device name ``host`` exists only in a wheel
built with the ``test-hooks`` feature, as ``cargo xtask test`` builds it):
tensors are allocated by torch (on the CPU here), read into registered
staging slots and copied out with streams and events exactly as on a GPU,
and handed out when their copies complete. Every tensor is compared byte for
byte with what safetensors reads from the same file. The same calls on a real
GPU are in test_gpu.py.
"""

import os
import time
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import weightlift
from weightlift import _api, _weightlift


@pytest.fixture
def small_staging(monkeypatch):
    """Two 4 KiB staging slots: every checkpoint needs many launches and slot reuse."""
    # 8192 bytes of budget: slots of max(8192 / 4, 4096) bytes, two of them.
    monkeypatch.setenv("WEIGHTLIFT_PINNED_BYTES", "8192")


def _loadable(ck):
    return ck.loadable_names if ck.f6_names else None


def test_load_file_onto_a_device_equals_safetensors(standin, h, ckpt):
    got = weightlift.load_file(ckpt.source, device="cuda:0", keys=_loadable(ckpt))
    h.assert_same_dict(got, ckpt.expected, f"load_file({ckpt.name}, cuda:0)")


@pytest.mark.parametrize("name", ["all_dtypes", "many_tiny", "large", "unaligned", "empty_scalar"])
def test_small_staging_and_slow_copies(standin, small_staging, h, store, name):
    # Copies that sleep keep slots in flight while later tensors are staged.
    standin("host:delay_us=20")
    ck = store.get(name)
    got = weightlift.load_file(ck.source, device=0, keys=_loadable(ck))
    h.assert_same_dict(got, ck.expected, name)


@pytest.mark.parametrize("form", ["cuda", "cuda:0", "int", "torch.device"])
def test_every_device_form_and_call(standin, h, store, form):
    device = {"cuda": "cuda", "cuda:0": "cuda:0", "int": 0, "torch.device": torch.device("cuda", 0)}[form]
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source, device=device) as f:
        got = h.collect_tensors(f.tensors())
        again = f.get_tensors()
        one = f.get_tensor("lm_head.weight")
        rows = f.get_slice("lm_head.weight")[1:3]
    h.assert_same_dict(got, ck.expected, "tensors()")
    h.assert_same_dict(again, ck.expected, "get_tensors()")
    h.assert_same_tensor(one, ck.expected["lm_head.weight"], "get_tensor")
    h.assert_same_tensor(rows, ck.expected["lm_head.weight"][1:3], "get_slice")


def test_get_tensor_one_by_one(standin, small_staging, h, store):
    ck = store.get("all_dtypes")
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        for name in reversed(ck.loadable_names):
            h.assert_same_tensor(f.get_tensor(name), ck.expected[name], name)


def test_walking_the_keys_streams_onto_the_device(standin, small_staging, h, store):
    # get_tensor in name order: the second request starts a stream of the
    # rest onto the device (through the staging), and the rest come from it.
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        first = f.keys()[0]
        h.assert_same_tensor(f.get_tensor(first), ck.expected[first], first)
        assert "single tensors" in f.backend and "staging" in f.backend, f.backend
        for k in f.keys()[1:]:
            h.assert_same_tensor(f.get_tensor(k), ck.expected[k], k)
        assert "single tensors" not in f.backend and "staging" in f.backend, f.backend
        # A pass after the walk reads everything again, onto the device.
        h.assert_same_dict(dict(f.tensors()), ck.expected, "a pass after a walk")


def test_keys_select_what_is_loaded(standin, h, store):
    ck = store.get("many_tiny")
    keys = ck.names[::7]
    got = weightlift.load_file(ck.source, device="cuda:0", keys=keys)
    h.assert_same_dict(got, {k: ck.expected[k] for k in keys}, "keys=")


def test_tensors_own_their_memory(standin, store):
    ck = store.get("many_tiny")
    got = weightlift.load_file(ck.source, device="cuda:0")
    ptrs = [t.data_ptr() for t in got.values() if t.numel()]
    assert len(set(ptrs)) == len(ptrs), "two tensors share memory"
    for t in got.values():
        assert t.is_contiguous()
        assert t.untyped_storage().nbytes() == t.nbytes, "a tensor views a larger buffer"


def test_stopping_early_then_loading_again(standin, small_staging, h, store):
    ck = store.get("many_tiny")
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        it = f.tensors()
        first = [next(it) for _ in range(3)]
        it.close()  # waits for the copies in flight
        for name, t in first:
            h.assert_same_tensor(t, ck.expected[name], name)
        h.assert_same_dict(dict(f.tensors()), ck.expected, "second pass")
    with pytest.raises(weightlift.ClosedError):
        with weightlift.safe_open(ck.source, device="cuda:0") as f:
            pass
        f.get_tensor(ck.names[0])


def test_a_failed_copy_names_file_and_tensor_and_the_next_load_works(standin, small_staging, h, store):
    ck = store.get("many_tiny")
    standin("host:fail=5")
    with pytest.raises(weightlift.DeviceError) as ei:
        weightlift.load_file(ck.source, device="cuda:0")
    msg = str(ei.value)
    assert h.msg_has_path(msg, ck.shards[0]), msg
    assert "tensor" in msg and "failed" in msg, msg
    assert any(repr(n) in msg or f'"{n}"' in msg for n in ck.names), msg
    standin("host")
    h.assert_same_dict(weightlift.load_file(ck.source, device="cuda:0"), ck.expected, "after a failure")


def test_out_of_memory_is_a_device_error_and_the_next_load_works(standin, monkeypatch, h, store):
    ck = store.get("all_dtypes")
    real_empty = torch.empty
    calls = []

    def empty(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", empty)
    with pytest.raises(weightlift.DeviceError, match="out of memory") as ei:
        weightlift.load_file(ck.source, device="cuda:0", keys=ck.loadable_names)
    msg = str(ei.value)
    assert h.msg_has_path(msg, ck.shards[0]), msg
    assert "tensor" in msg, msg
    monkeypatch.setattr(torch, "empty", real_empty)
    h.assert_same_dict(weightlift.load_file(ck.source, device="cuda:0", keys=ck.loadable_names), ck.expected, "")


def test_a_destination_of_the_wrong_size_is_refused(standin, store):
    ck = store.get("large")
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        def alloc(name, dtype, shape, file):
            t = torch.empty(8, dtype=torch.uint8)
            return t, t.data_ptr(), t.nbytes

        with pytest.raises(weightlift.MismatchError, match="destination holds 8 bytes"):
            for _ in f._session.upload("host", alloc):
                pass


def test_pinned_budget_setting(standin, monkeypatch, store):
    ck = store.get("large")
    monkeypatch.setenv("WEIGHTLIFT_PINNED_BYTES", "12")
    with pytest.raises(weightlift.SettingError, match="WEIGHTLIFT_PINNED_BYTES"):
        weightlift.load_file(ck.source, device="cuda:0")


def test_numpy_cannot_go_to_a_device(standin, store):
    with pytest.raises(weightlift.SettingError, match="framework"):
        weightlift.safe_open(store.get("large").source, framework="np", device="cuda:0")


def test_unknown_devices(standin, store):
    src = store.get("large").source
    for bad in ["cuda:x", "tpu:0", "cuda:-1", True]:
        with pytest.raises(weightlift.DeviceError):
            weightlift.load_file(src, device=bad)
    with pytest.raises(weightlift.DeviceError, match="ROCm"):
        weightlift.load_file(src, device="hip:0")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(32, 8, bias=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def test_load_into_writes_straight_into_the_targets(standin, small_staging, tmp_path, h):
    torch.manual_seed(3)
    src = _Net()
    with torch.no_grad():
        src.steps.fill_(41)
    p = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    dst = _Net()
    before = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    result = weightlift.load_into(dst, p)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in dst.state_dict().items():
        assert v.data_ptr() == before[k], f"{k} was replaced, not written"
        h.assert_same_tensor(v, src.state_dict()[k], k)


def test_load_into_targets_sharing_memory_are_filled_one_by_one(standin, tmp_path, h):
    base = torch.zeros(20)
    targets = {"x": base[:12], "y": base[8:]}  # overlapping views
    p = tmp_path / "tied.safetensors"
    save_file({"x": torch.arange(12.0), "y": torch.arange(12.0)}, str(p))
    assert _api._pipeline_for(list(targets.values())) is None
    weightlift.load_into(targets, p)
    h.assert_same_tensor(targets["y"], torch.arange(12.0), "y, written last")


def test_many_tiny_tensors_through_one_slot(standin, monkeypatch, tmp_path, h):
    # 20,000 tensors of a few bytes, one 4 KiB slot: thousands of tensors per launch.
    monkeypatch.setenv("WEIGHTLIFT_PINNED_BYTES", "4096")
    g = torch.Generator().manual_seed(11)
    tensors = {f"e.{i}": torch.randint(0, 1000, (i % 5,), generator=g, dtype=torch.int32) for i in range(20_000)}
    p = tmp_path / "tiny.safetensors"
    save_file(tensors, str(p))
    got = weightlift.load_file(p, device="cuda:0")
    h.assert_same_dict(got, tensors, "20,000 tiny tensors")


def test_several_fill_threads(standin, monkeypatch, h, store):
    monkeypatch.setenv("WEIGHTLIFT_FILL_THREADS", "3")
    ck = store.get("large")
    h.assert_same_dict(weightlift.load_file(ck.source, device="cuda:0"), ck.expected, "3 fill threads")
    monkeypatch.setenv("WEIGHTLIFT_FILL_THREADS", "0")
    with pytest.raises(weightlift.SettingError, match="WEIGHTLIFT_FILL_THREADS"):
        weightlift.load_file(ck.source, device="cuda:0")


def test_cufile_serves_gpu_devices_only(store):
    ck = store.get("large")
    with pytest.raises(weightlift.BackendError, match="CUFILE.*GPU devices"):
        weightlift.load_file(ck.source, backend=weightlift.Backend.CUFILE)


@pytest.mark.parametrize("name", ["all_dtypes", "many_tiny", "large", "unaligned", "sharded_index", "empty_scalar"])
def test_cufile_reads_straight_into_device_memory(standin, h, store, name):
    # On the stand-in, "straight into device memory" is pread into the
    # tensors torch allocated: the same threads, chunks, order and errors.
    ck = store.get(name)
    keys = _loadable(ck)
    got = weightlift.load_file(ck.source, device="cuda:0", backend="CUFILE", keys=keys)
    h.assert_same_dict(got, ck.expected, f"CUFILE {name}")
    with weightlift.safe_open(ck.source, device="cuda:0", backend="CUFILE", keys=keys) as f:
        for k in list(ck.expected)[:5]:
            h.assert_same_tensor(f.get_tensor(k), ck.expected[k], k)
        assert f.backend.startswith("backend CUFILE (reads straight into device memory"), f.backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with weightlift.safe_open(ck.source, device="cuda:0", backend="CUFILE", copy=False, buffer_size=4096,
                                  keys=keys) as f:
            for k, t in f.tensors():
                h.assert_same_tensor(t, ck.expected[k], k)


def test_cufile_refuses_a_file_that_changed_naming_it(standin, tmp_path, h):
    p = tmp_path / "t.safetensors"
    save_file({"a": torch.arange(1000.0), "b": torch.arange(2000.0)}, str(p))
    with weightlift.safe_open(p, device="cuda:0", backend="CUFILE") as f:
        with open(p, "r+b") as fh:
            fh.truncate(p.stat().st_size - 100)
        with pytest.raises(weightlift.WeightliftIOError) as ei:
            f.get_tensors()
    msg = str(ei.value)
    assert h.msg_has_path(msg, p) and "changed" in msg, msg


def test_cufile_without_libcufile_is_a_backend_error_naming_it(standin, store):
    # A real CUDA device name: opening cuFile (or the CUDA driver behind it)
    # fails before any GPU is touched.
    ck = store.get("large")
    with weightlift.safe_open(ck.source, device="cuda:0", backend="CUFILE") as f:
        with pytest.raises((weightlift.BackendError, weightlift.DeviceError)) as ei:
            f._session.upload("cuda:0", lambda *a: None)
    assert "libcufile" in str(ei.value) or "libcuda" in str(ei.value), str(ei.value)



def test_load_into_falls_back_to_copy_for_tensors_bytes_cannot_fill(standin, tmp_path, h):
    # A lazily conjugated view holds the conjugate of what it shows: raw
    # bytes would load conj(z); copy_ writes z.
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    p = tmp_path / "z.safetensors"
    save_file({"z": z}, str(p))
    target = {"z": torch.zeros(2, dtype=torch.complex64).conj()}
    assert _api._pipeline_for(list(target.values())) is None
    weightlift.load_into(target, p)
    assert torch.equal(target["z"].resolve_conj(), z)


def test_load_into_bumps_autograd_versions(standin, tmp_path):
    p = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(4)}, str(p))
    w = nn.Parameter(torch.zeros(4))
    before = w._version
    assert _api._pipeline_for([w]) is not None
    weightlift.load_into({"w": w}, p)
    assert w._version > before
    assert torch.equal(w.detach(), torch.ones(4))


@pytest.mark.parametrize("name", ["many_tiny", "all_dtypes", "sharded_index", "large"])
def test_copy_false_yields_views_into_a_reused_buffer(standin, small_staging, h, store, name):
    standin("host:delay_us=20")
    ck = store.get(name)
    keys = _loadable(ck)
    seen = set()
    ptrs = []
    with weightlift.safe_open(ck.source, device="cuda:0", copy=False, buffer_size=4096, keys=keys) as f:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name_, t in f.tensors():
                # Checked before asking for the next: that is all copy=False promises.
                h.assert_same_tensor(t, ck.expected[name_], name_)
                assert name_ not in seen
                seen.add(name_)
                if t.numel() and t.nbytes <= 4096:
                    ptrs.append(t.data_ptr())
        said = [str(w.message) for w in caught if "valid only until the next" in str(w.message)]
        reused = f._session.buffer_needed(f.buffer_size) > f.buffer_size
        assert len(said) == (1 if reused else 0), said
        kept = f.get_tensors()
    assert seen == set(ck.expected)
    assert len(set(ptrs)) < len(ptrs) or len(ptrs) < 2, "the buffer was never reused"
    h.assert_same_dict(kept, ck.expected, "get_tensors() with copy=False owns its tensors")


@pytest.mark.parametrize("slow", [False, True])
def test_copy_false_without_a_warning_keeps_every_tensor(standin, tmp_path, h, slow):
    # 64 tensors of 4 bytes in a 64 KiB buffer: room for all, aligned, so no
    # warning, and every view stays right after the pass (kept, not
    # cloned), also when the ring empties between tensors (slow copies).
    if slow:
        standin("host:delay_us=300")
    ts = {f"t{i}": torch.full((1,), i, dtype=torch.int32) for i in range(64)}
    p = tmp_path / "small.safetensors"
    save_file(ts, str(p))
    with weightlift.safe_open(p, device="cuda:0", copy=False, buffer_size=64 << 10) as f:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = dict(f.tensors())
    h.assert_same_dict(got, ts, "copy=False, one buffer for everything")
    # 4 KiB cannot hold 64 aligned tensors: a warning.
    with weightlift.safe_open(p, device="cuda:0", copy=False, buffer_size=4096) as f:
        with pytest.warns(UserWarning, match="valid only until the next"):
            for _ in f.tensors():
                pass


def test_copy_false_waits_for_room_and_stays_correct(standin, tmp_path, h):
    # 200 tensors of about 1 KiB through an 8 KiB buffer: all of them land in
    # one read, so the buffer is full most of the time, and the pass hands
    # back what is in flight before it places more.
    g = torch.Generator().manual_seed(1)
    ts = {f"t{i}": torch.randint(0, 255, (1000 + i,), generator=g, dtype=torch.uint8) for i in range(200)}
    p = tmp_path / "r.safetensors"
    save_file(ts, str(p))
    standin("host:delay_us=50")
    ptrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with weightlift.safe_open(p, device="cuda:0", copy=False, buffer_size=8192) as f:
            n = 0
            for name, t in f.tensors():
                h.assert_same_tensor(t, ts[name], name)
                ptrs.append(t.data_ptr())
                n += 1
    assert n == len(ts)
    # About eight tensors fit at once: regions were reused many times over.
    assert len(set(ptrs)) < len(ptrs) / 4, "the buffer was never full: the test proves nothing"


@pytest.mark.parametrize("runtime,library", [("cuda", "libcuda"), ("hip", "libamdhip64")])
def test_the_gpu_runtime_is_found_at_run_time_or_named_missing(runtime, library):
    from weightlift import _weightlift

    try:
        found = _weightlift.gpu_driver(runtime)
    except weightlift.DeviceError as e:
        assert library in str(e) or "result" in str(e), str(e)
    else:
        assert "device" in found, found
    with pytest.raises(weightlift.DeviceError, match="unknown GPU runtime"):
        _weightlift.gpu_driver("tpu")


def test_staging_arguments_win_and_are_observable(standin, monkeypatch, h, store):
    monkeypatch.setenv("WEIGHTLIFT_PINNED_BYTES", str(64 << 20))
    ck = store.get("large")
    with weightlift.safe_open(ck.source, device="cuda:0", pinned_bytes=1 << 20, fill_threads=2) as f:
        h.assert_same_dict(dict(f.tensors()), ck.expected, "1 MiB staging, 2 fill threads")
        assert "staging 4 pinned slots of 256 KiB, 2 fill threads, 2 streams" in f.backend, f.backend
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        f.get_tensor("tail")
        assert "staging 4 pinned slots of 16384 KiB" in f.backend, f.backend
    with weightlift.safe_open(ck.source) as f:
        f.get_tensor("tail")
        assert "staging" not in f.backend, "host loads have no staging"
    for bad in [{"pinned_bytes": 100}, {"fill_threads": 0}, {"fill_threads": 1000}, {"pinned_bytes": 1.5}]:
        with pytest.raises(weightlift.SettingError, match=next(iter(bad))):
            weightlift.load_file(ck.source, device="cuda:0", **bad)


def test_an_allocator_that_never_finds_room_is_a_device_error(standin, store):
    ck = store.get("large")
    with weightlift.safe_open(ck.source, device="cuda:0") as f:
        with pytest.raises(weightlift.DeviceError, match="no device memory was given"):
            for _ in f._session.upload("host", lambda *a: None):
                pass
    session = _weightlift._Session([str(ck.source)], device="host", alloc=lambda *a: None)
    with pytest.raises(weightlift.DeviceError, match="no device memory was given"):
        session.get_into("tail")
    with pytest.raises(weightlift.DeviceError, match="no device memory was given"):
        for _ in session.stream():
            pass


def test_a_file_rewritten_during_a_pass_fails_it_and_nothing_mixes_versions(standin, small_staging, tmp_path):
    # A reused 128 KiB buffer and 8 KiB of staging: the pass cannot read
    # far ahead of the tensors handed out, so most reads come after the
    # rewrite.
    path = tmp_path / "m.safetensors"
    tensors = {f"t{i:02}": torch.full((64, 256), float(i)) for i in range(16)}
    save_file(tensors, str(path))
    seen = {}
    with pytest.raises(weightlift.WeightliftIOError, match="m.safetensors.*changed during the load"):
        with weightlift.safe_open(path, device="cuda:0", copy=False, buffer_size=128 << 10) as f:
            for name, t in f.tensors():
                seen[name] = t.clone()
                if len(seen) == 1:
                    time.sleep(0.02)  # past one clock tick of coarse timestamps
                    with open(path, "r+b") as out:
                        start = 8 + int.from_bytes(out.read(8), "little")
                        out.seek(start)
                        out.write(b"\xff" * (os.path.getsize(path) - start))
    assert 1 <= len(seen) < len(tensors)
    for name, t in seen.items():
        assert torch.equal(t, tensors[name]), f"{name} holds bytes of the rewritten file"
