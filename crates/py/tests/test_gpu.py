"""Loads onto a CUDA GPU through the upload pipeline, against safetensors loading to the same
device (skipped without a GPU; a failure instead when WEIGHTLIFT_REQUIRE_GPU=1)."""

import pytest
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import weightlift

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["all_dtypes", "large", "empty_scalar"])
def test_load_file_cuda(store, h, cuda_device, name):
    ck = store.get(name)
    path = str(ck.shards[0])
    exp = st_load_file(path, device=cuda_device)
    got = weightlift.load_file(ck.source, device=cuda_device)
    assert sorted(got) == sorted(exp)
    for k, t in got.items():
        assert t.device == torch.device(cuda_device), (k, t.device)
        h.assert_same_tensor(t, exp[k], k)


@pytest.mark.parametrize("device", ["cuda:0", 0, "torch.device"])
def test_safe_open_cuda_forms(store, h, cuda_device, device):
    if device == "torch.device":
        device = torch.device(cuda_device)
    ck = store.get("sharded_index")
    with weightlift.safe_open(ck.source, device=device) as f:
        got = h.collect_tensors(f.tensors())
        one = f.get_tensor("lm_head.weight")
    assert one.device.type == "cuda"
    h.assert_same_tensor(one, ck.expected["lm_head.weight"], "get_tensor on cuda")
    for k, t in got.items():
        assert t.device.type == "cuda" and t.device.index == 0, (k, t.device)
    h.assert_same_dict(got, ck.expected, "tensors() on cuda")


def test_memory_comes_from_torch_and_is_accounted(store, h, cuda_device):
    ck = store.get("large")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(cuda_device)
    got = weightlift.load_file(ck.source, device=cuda_device)
    after = torch.cuda.memory_allocated(cuda_device)
    assert after - before >= ck.total_size, (before, after, ck.total_size)
    h.assert_same_dict(got, ck.expected, "large")
    del got
    assert torch.cuda.memory_allocated(cuda_device) == before, "tensors are freed with the last reference"


def test_100k_tiny_tensors(tmp_path, h, cuda_device):
    g = torch.Generator().manual_seed(5)
    tensors = {f"m.{i}": torch.randint(0, 1 << 30, (i % 7,), generator=g, dtype=torch.int32) for i in range(100_000)}
    p = tmp_path / "tiny.safetensors"
    save_file(tensors, str(p))
    exp = st_load_file(str(p), device=cuda_device)
    got = weightlift.load_file(p, device=cuda_device)
    h.assert_same_dict(got, exp, "100,000 tiny tensors")


def test_larger_than_every_buffer(store, h, cuda_device, monkeypatch):
    monkeypatch.setenv("WEIGHTLIFT_PINNED_BYTES", str(1 << 20))
    ck = store.get("large")
    with weightlift.safe_open(ck.source, device=cuda_device, buffer_size=1 << 20) as f:
        assert f.total_tensor_size > 8 * f.buffer_size
        got = h.collect_tensors(f.tensors())
    h.assert_same_dict(got, ck.expected, "large through 1 MiB of buffers")


def test_out_of_memory_then_the_device_is_usable(store, h, cuda_device):
    ck = store.get("large")
    free, _ = torch.cuda.mem_get_info(cuda_device)
    # Leave less free than the checkpoint needs.
    filler = torch.empty(max(free - ck.total_size // 2, 0), dtype=torch.uint8, device=cuda_device)
    try:
        with pytest.raises(weightlift.DeviceError, match="out of memory") as ei:
            weightlift.load_file(ck.source, device=cuda_device)
        assert h.msg_has_path(str(ei.value), ck.shards[0]), str(ei.value)
    finally:
        del filler
        torch.cuda.empty_cache()
    h.assert_same_dict(weightlift.load_file(ck.source, device=cuda_device), ck.expected, "after OOM")


def test_load_into_waits_for_work_queued_on_the_target(tmp_path, h, cuda_device):
    # The target is written by a kernel still queued behind a long sleep on
    # torch's current stream; the load must land after it, not under it.
    src = torch.arange(1 << 22, dtype=torch.float32)
    p = tmp_path / "w.safetensors"
    save_file({"w": src}, str(p))
    target = {"w": torch.empty(1 << 22, dtype=torch.float32, device=cuda_device)}
    torch.cuda._sleep(200_000_000)  # about 0.1 s of GPU time
    target["w"].fill_(-1.0)
    ptr = target["w"].data_ptr()
    weightlift.load_into(target, p)
    torch.cuda.synchronize()
    assert target["w"].data_ptr() == ptr
    h.assert_same_tensor(target["w"], src, "w")


def test_load_into_a_cuda_module(tmp_path, h, cuda_device):
    torch.manual_seed(2)
    src = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 64))
    p = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    dst = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 64)).to(cuda_device)
    weightlift.load_into(dst, p)
    for k, v in dst.state_dict().items():
        assert v.device.type == "cuda"
        h.assert_same_tensor(v, src.state_dict()[k], k)


def test_copy_false_views_are_right_until_the_next(store, h, cuda_device):
    import warnings

    ck = store.get("sharded_index")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with weightlift.safe_open(ck.source, device=cuda_device, copy=False, buffer_size=1 << 16) as f:
            n = 0
            for name, t in f.tensors():
                assert t.device.type == "cuda"
                h.assert_same_tensor(t, ck.expected[name], name)
                n += 1
    assert n == len(ck.expected)


def test_the_current_device_is_left_alone(store, cuda_device):
    before = torch.cuda.current_device()
    last = f"cuda:{torch.cuda.device_count() - 1}"
    weightlift.load_file(store.get("large").source, device=last)
    assert torch.cuda.current_device() == before


def test_cufile_reads_straight_into_gpu_memory(store, h, cuda_device):
    ck = store.get("sharded_index")
    try:
        got = weightlift.load_file(ck.source, device=cuda_device, backend="CUFILE")
    except weightlift.BackendError as e:
        pytest.skip(f"GPUDirect Storage is not usable here: {e}")
    h.assert_same_dict(got, ck.expected, "CUFILE")
    for t in got.values():
        assert t.device.type == "cuda"
