"""load_into: in-place copies into preallocated tensors or an nn.Module, strict and not."""

import contextlib

import pytest
import torch
from torch import nn
from safetensors.torch import save_file

import weightlift


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.fc2 = nn.Linear(16, 4, bias=False)
        self.register_buffer("scale", torch.ones(4, dtype=torch.float64))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)  # not in state_dict


def _random_net(seed):
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, dtype=t.dtype))
        net.bn.num_batches_tracked.fill_(seed + 7)
    return net


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    src = _random_net(1)
    p = tmp_path_factory.mktemp("net") / "net.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(p))
    return p, {k: v.clone() for k, v in src.state_dict().items()}


def _target(exp, h):
    return {k: h.inverted_like(v) for k, v in exp.items()}


def test_load_into_module(net_file, h):
    path, exp = net_file
    net = _random_net(2)
    sd = net.state_dict()
    ptrs = {k: v.data_ptr() for k, v in sd.items()}
    params = dict(net.named_parameters())
    res = weightlift.load_into(net, path)
    assert isinstance(res, weightlift.IncompatibleKeys)
    assert list(res.missing_keys) == [] and list(res.unexpected_keys) == []
    after = net.state_dict()
    for k, v in after.items():
        assert v.data_ptr() == ptrs[k], f"{k}: memory replaced"
        h.assert_same_tensor(v, exp[k], k)
    for k, p in net.named_parameters():
        assert p is params[k] and isinstance(p, nn.Parameter) and p.requires_grad
    assert torch.equal(net.scratch, torch.zeros(3))


def test_load_into_module_non_strict_partial(tmp_path, net_file, h):
    _, exp = net_file
    part = {k: v for k, v in exp.items() if k.startswith("fc1.")}
    p = tmp_path / "part.safetensors"
    save_file(part, str(p))
    net = _random_net(3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = weightlift.load_into(net, p, strict=False)
    assert sorted(res.missing_keys) == sorted(set(exp) - set(part))
    assert list(res.unexpected_keys) == []
    for k, v in net.state_dict().items():
        h.assert_same_tensor(v, part[k] if k in part else before[k], k)


def test_load_into_sharded(store, h):
    for name in ["sharded_index", "sharded_list", "sharded_dir"]:
        ck = store.get(name)
        target = _target(ck.expected, h)
        ptrs = {k: t.data_ptr() for k, t in target.items()}
        res = weightlift.load_into(target, ck.source)
        assert tuple(res) == ([], [])
        assert {k: t.data_ptr() for k, t in target.items()} == ptrs
        h.assert_same_dict(target, ck.expected, name)


@pytest.mark.parametrize("backend", [None, "MMAP", "PREAD_BUFFERED", "PREAD"])
def test_load_into_backends(store, h, backend):
    ck = store.get("large")
    target = _target(ck.expected, h)
    ptrs = {k: t.data_ptr() for k, t in target.items()}
    guard = h.backend_guard(backend) if backend else contextlib.nullcontext()
    with guard:
        weightlift.load_into(target, ck.source, backend=backend)
    assert {k: t.data_ptr() for k, t in target.items()} == ptrs
    h.assert_same_dict(target, ck.expected, f"load_into backend={backend}")


def test_missing_strict(store, h):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    target["not.in.checkpoint"] = torch.zeros(3)
    with pytest.raises(weightlift.MismatchError) as ei:
        weightlift.load_into(target, ck.source)
    assert "not.in.checkpoint" in str(ei.value)


def test_missing_non_strict(store, h):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    target["not.in.checkpoint"] = torch.full((3,), 7.0)
    res = weightlift.load_into(target, ck.source, strict=False)
    assert list(res.missing_keys) == ["not.in.checkpoint"]
    assert list(res.unexpected_keys) == []
    assert torch.equal(target.pop("not.in.checkpoint"), torch.full((3,), 7.0))
    h.assert_same_dict(target, ck.expected, "non-strict with a missing name")


def test_unexpected_strict(store, h):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    del target["lm_head.weight"]
    with pytest.raises(weightlift.MismatchError) as ei:
        weightlift.load_into(target, ck.source)
    assert "lm_head.weight" in str(ei.value)


def test_unexpected_non_strict(store, h):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    del target["lm_head.weight"]
    del target["model.norm.weight"]
    res = weightlift.load_into(target, ck.source, strict=False)
    assert sorted(res.unexpected_keys) == ["lm_head.weight", "model.norm.weight"]
    assert list(res.missing_keys) == []
    h.assert_same_dict(target, {k: v for k, v in ck.expected.items() if k in target}, "non-strict, unexpected")


@pytest.mark.parametrize("strict", [True, False])
def test_shape_mismatch(store, h, strict):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    target["model.layers.0.mlp.counter"] = torch.zeros(8, dtype=torch.int64)  # the checkpoint has [7]
    with pytest.raises(weightlift.MismatchError) as ei:
        weightlift.load_into(target, ck.source, strict=strict)
    assert "model.layers.0.mlp.counter" in str(ei.value)


@pytest.mark.parametrize("strict", [True, False])
def test_dtype_mismatch(store, h, strict):
    ck = store.get("sharded_index")
    target = _target(ck.expected, h)
    target["lm_head.weight"] = torch.zeros(64, 32, dtype=torch.bfloat16)  # the checkpoint has F32
    with pytest.raises(weightlift.MismatchError) as ei:
        weightlift.load_into(target, ck.source, strict=strict)
    assert "lm_head.weight" in str(ei.value)


def test_module_shape_mismatch(tmp_path, net_file):
    _, exp = net_file
    bad = dict(exp)
    bad["fc2.weight"] = torch.zeros(5, 16)
    p = tmp_path / "bad.safetensors"
    save_file(bad, str(p))
    with pytest.raises(weightlift.MismatchError) as ei:
        weightlift.load_into(_random_net(4), p, strict=False)
    assert "fc2.weight" in str(ei.value)


def test_mismatch_error_is_weightlift_error():
    assert issubclass(weightlift.MismatchError, weightlift.WeightliftError)
