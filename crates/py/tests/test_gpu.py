"""Loads onto a CUDA GPU, against safetensors (skipped without a GPU unless WEIGHTLIFT_REQUIRE_GPU=1)."""

import pytest
import torch
from safetensors.torch import load_file as st_load_file

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
