"""ServerlessLLM checkpoints (tensor_index.json beside tensor.data_<n>), read natively.

A state dict is written in ServerlessLLM's layout (``h.write_sllm``, which
mirrors its ``save_dict``: several partitions, 8-byte padded records, a
shared storage written once) and, as the reference, with
``safetensors.torch.save_file``; weightlift's tensors from the ServerlessLLM
directory must equal, byte for byte, what ``safetensors`` reads from the
reference file, through every API, every CPU backend and the device path
(the host stand-in). The hostile corpus (tests/corpus/sllm) must give a
HeaderError naming the index and the tensor.
"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import weightlift

SLLM_CORPUS = Path(__file__).resolve().parents[3] / "tests" / "corpus" / "sllm"


def _state_dict():
    gen = torch.Generator().manual_seed(17)

    def rnd(dtype, *shape):
        n = 1
        for d in shape:
            n *= d
        size = torch.empty((), dtype=dtype).element_size()
        raw = torch.randint(0, 256, (n * size,), dtype=torch.uint8, generator=gen)
        if dtype == torch.bool:
            raw = raw & 1
        return raw.view(dtype).reshape(shape).clone()

    sd = {
        "model.embed_tokens.weight": rnd(torch.bfloat16, 96, 64),
        "model.layers.0.attn.weight": rnd(torch.float16, 33, 17),
        "model.layers.0.norm.weight": rnd(torch.float32, 1000),
        "model.layers.0.positions": rnd(torch.int64, 7, 3),
        "model.layers.0.mask": rnd(torch.bool, 5, 5),
        "model.scale": rnd(torch.float32),
        "model.step": rnd(torch.int64),
        "model.empty": rnd(torch.float16, 0, 4),
        "model.layers.1.mlp.weight": rnd(torch.bfloat16, 300, 128),
        "model.layers.1.bias": rnd(torch.float64, 9),
        "model.layers.1.tiny": rnd(torch.int8, 3),
        "model.tail_empty": rnd(torch.int8, 0),
    }
    # Tied weights: one tensor under two names, as model.state_dict() gives them.
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


@pytest.fixture
def sllm(tmp_path, h):
    """(ServerlessLLM directory, safetensors reference file, expected tensors)."""
    root = tmp_path
    sd = _state_dict()
    # 32 KiB partitions: the 75 KiB matrix takes one alone, the rest spread.
    d = h.write_sllm(root / "model", sd, partition_limit=32 << 10)
    parts = sorted(p.name for p in d.glob("tensor.data_*"))
    assert len(parts) >= 3, parts
    ref = root / "model.safetensors"
    save_file({k: v.clone() for k, v in sd.items()}, str(ref))
    expected = st_load_file(str(ref))
    return d, ref, expected


def test_the_layout_is_serverlessllms(sllm):
    d, _, expected = sllm
    index = json.loads((d / "tensor_index.json").read_text())
    assert set(index) == set(expected)
    assert index["lm_head.weight"] == index["model.embed_tokens.weight"]
    sizes = [p.stat().st_size for p in sorted(d.glob("tensor.data_*"), key=lambda p: int(p.name[12:]))]
    assert all(s % 4096 == 0 for s in sizes)
    # Offsets run across partitions: some tensor starts past the first one.
    assert max(e[0] for e in index.values()) > sizes[0]
    assert all(e[4].startswith("torch.") for e in index.values())


@pytest.mark.parametrize("source", ["dir", "index"])
def test_safe_open_every_call(sllm, h, source):
    d, _, expected = sllm
    path = d if source == "dir" else d / "tensor_index.json"
    with weightlift.safe_open(path, framework="pt") as f:
        assert f.keys() == sorted(expected)
        assert f.metadata() is None
        for k in f.keys():
            h.assert_same_tensor(f.get_tensor(k), expected[k], f"get_tensor {k}")
        h.assert_same_dict(h.collect_tensors(f.tensors()), expected, "tensors()")
        h.assert_same_dict(f.get_tensors(), expected, "get_tensors()")
        meta = f.get_tensor_metadata("model.layers.0.positions")
        assert (meta.dtype, list(meta.shape)) == ("I64", [7, 3])
        s = f.get_slice("model.layers.1.mlp.weight")
        h.assert_same_tensor(s[10:20], expected["model.layers.1.mlp.weight"][10:20], "slice")


def test_keys_selection(sllm, h):
    d, _, expected = sllm
    chosen = ["lm_head.weight", "model.scale", "model.empty", "model.layers.1.bias"]
    with weightlift.safe_open(d, keys=chosen) as f:
        assert f.keys() == sorted(chosen)
        h.assert_same_dict(h.collect_tensors(f.tensors()), {k: expected[k] for k in chosen}, "keys=")


def test_load_file_and_load(sllm, h):
    d, _, expected = sllm
    h.assert_same_dict(weightlift.load_file(d), expected, "load_file")
    h.assert_same_dict(weightlift.load(d / "tensor_index.json"), expected, "load")


def test_every_backend(sllm, h, backend_name):
    d, _, expected = sllm
    with h.backend_guard(backend_name):
        got = weightlift.load_file(d, backend=backend_name)
    h.assert_same_dict(got, expected, backend_name)


def test_tied_names_are_separate_tensors(sllm, h):
    """Two names for one record load as two tensors: writing one leaves the
    other as read, as with safetensors."""
    d, _, expected = sllm
    for backend in (None, "MMAP"):
        got = weightlift.load_file(d, backend=backend)
        got["lm_head.weight"].zero_()
        h.assert_same_tensor(got["model.embed_tokens.weight"], expected["model.embed_tokens.weight"], str(backend))


def test_a_tied_name_is_whole_before_the_first_is_handed_out(tmp_path):
    """The first of two names for one record is handed out as a view of the
    bytes read, the later one as a copy of them. The copy must be made
    before the view reaches the caller: a caller writing the first tensor
    as soon as it arrives (tensors() yields as each lands) must not change
    the second. Large enough that the copy takes a while, and spanning
    several extents, so that with MMAP's threads the two names' last
    pieces can land on different threads."""
    w = torch.arange(8 << 20, dtype=torch.float32)
    d = tmp_path / "m"
    d.mkdir()
    raw = w.numpy().tobytes()
    (d / "tensor.data_0").write_bytes(raw)
    entry = [0, len(raw), [w.numel()], [1], "torch.float32"]
    (d / "tensor_index.json").write_text(json.dumps({"a": entry, "tied": entry}))
    for backend in (None, "MMAP"):
        for attempt in range(4):
            got = {}
            with weightlift.safe_open(d, backend=backend) as f:
                for name, t in f.tensors():
                    if name == "a":
                        t.fill_(-1.0)
                    got[name] = t
            assert torch.equal(got["tied"], w), f"{backend}, attempt {attempt}: the copy saw the first name's writes"


def test_load_into(sllm, h):
    d, _, expected = sllm
    targets = {k: torch.zeros_like(v) for k, v in expected.items()}
    res = weightlift.load_into(targets, d)
    assert (res.missing_keys, res.unexpected_keys) == ([], [])
    h.assert_same_dict(targets, expected, "load_into")


def test_device_through_the_host_standin(sllm, h, standin):
    d, _, expected = sllm
    with weightlift.safe_open(d, device="cuda:0") as f:
        h.assert_same_dict(h.collect_tensors(f.tensors()), expected, "device tensors()")
        h.assert_same_tensor(f.get_tensor("model.step"), expected["model.step"], "device get_tensor")
    h.assert_same_dict(weightlift.load_file(d, device="cuda:0"), expected, "device load_file")
    targets = {k: torch.zeros_like(v) for k, v in expected.items()}
    weightlift.load_into(targets, d)
    h.assert_same_dict(targets, expected, "device load_into")


def test_a_transposed_tensor_is_refused_by_name(tmp_path, h):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    d = h.write_sllm(tmp_path / "m", {"w.t": w.t(), "b": torch.ones(2)})
    with pytest.raises(weightlift.HeaderError) as e:
        weightlift.safe_open(d)
    msg = str(e.value)
    assert '"w.t"' in msg and "contiguous" in msg and h.msg_has_path(msg, d / "tensor_index.json"), msg


def test_a_missing_partition_is_named(tmp_path, h):
    sd = {f"t{i}": torch.full((1000,), i, dtype=torch.int32) for i in range(4)}
    d = h.write_sllm(tmp_path / "m", sd, partition_limit=4096)
    (d / "tensor.data_1").unlink()
    with pytest.raises(weightlift.HeaderError) as e:
        weightlift.load_file(d)
    assert "tensor.data_1" in str(e.value), str(e.value)


def _corpus():
    return sorted(p.name for p in SLLM_CORPUS.iterdir() if p.is_dir())


@pytest.mark.parametrize("name", _corpus())
def test_hostile_corpus(name, h):
    d = SLLM_CORPUS / name
    if name.startswith("valid-"):
        with weightlift.safe_open(d) as f:
            for k in f.keys():
                f.get_tensor(k)
        return
    with pytest.raises(weightlift.HeaderError) as e:
        weightlift.safe_open(d)
    assert h.msg_has_path(str(e.value), d / "tensor_index.json"), str(e.value)
