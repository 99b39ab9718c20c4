"""The integrations: transformers (against transformers' own
from_pretrained, on tiny models generated here), and what the vLLM and
SGLang loaders do without those frameworks installed (the entry point
in the wheel's metadata, option parsing, file selection, the weights
iterator). vLLM and SGLang themselves are not installed by the test
command; these tests do not stand in for them."""

import importlib.metadata
import importlib.util
import json
import os

import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import save_file

import weightlift
from weightlift.integrations import _weights
from weightlift.integrations._weights import LoaderOptions, checkpoint_files

transformers = pytest.importorskip("transformers", reason="transformers is installed by cargo xtask test")


def _bytes(t):
    return t.contiguous().view(-1).view(torch.uint8) if t.numel() and t.dtype != torch.bool else t


def _configs():
    from transformers import LlamaConfig, MixtralConfig

    small = dict(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    return {
        # Tied input and output embeddings: saved once, loaded into one parameter.
        "llama": LlamaConfig(intermediate_size=48, tie_word_embeddings=True, **small),
        # Per-expert weights in the checkpoint, fused per layer in the model.
        "mixtral": MixtralConfig(intermediate_size=24, num_local_experts=4, num_experts_per_tok=2, **small),
    }


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def model_dir(request, tmp_path_factory):
    """A tiny model with random weights, saved sharded with an index."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_configs()[request.param])
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(str(d), max_shard_size="40KB")
    shards = sorted(d.glob("*.safetensors"))
    assert len(shards) > 1 and (d / "model.safetensors.index.json").exists(), "the model must be saved sharded"
    return request.param, d


def _state(model):
    out = dict(model.named_parameters(remove_duplicate=False))
    out.update(model.named_buffers(remove_duplicate=False))
    return out


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_transformers_same_model_as_from_pretrained(model_dir, dtype):
    from transformers import AutoModelForCausalLM
    from weightlift.integrations.transformers import from_pretrained

    kind, d = model_dir
    want = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
    got = from_pretrained(AutoModelForCausalLM, d, dtype=dtype)
    assert type(got) is type(want)
    ws, gs = _state(want), _state(got)
    assert sorted(gs) == sorted(ws), f"{kind}: parameters and buffers differ in name"
    for name, w in ws.items():
        g = gs[name]
        assert (g.dtype, tuple(g.shape), g.device) == (w.dtype, tuple(w.shape), w.device), (
            f"{kind}: {name} is {g.dtype} {tuple(g.shape)} on {g.device}, from_pretrained's {w.dtype} "
            f"{tuple(w.shape)} on {w.device}"
        )
        assert torch.equal(_bytes(g), _bytes(w)), f"{kind}: {name} differs from from_pretrained's byte for byte"
        assert type(g) is type(w), f"{kind}: {name} is a {type(g).__name__}, from_pretrained's a {type(w).__name__}"
    assert not got.training
    if kind == "llama":
        assert got.lm_head.weight is got.model.embed_tokens.weight, "tied weights must stay one parameter"
    else:
        # The conversion path ran: the checkpoint's per-expert names are not the model's.
        with open(d / "model.safetensors.index.json") as f:
            stored = set(json.load(f)["weight_map"])
        assert stored - set(gs), "the MoE checkpoint should hold names transformers converts"
    x = torch.randint(0, 96, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(got(x).logits, want(x).logits), f"{kind}: logits differ"


def test_transformers_concrete_class_and_strictness(model_dir, tmp_path):
    from transformers import LlamaForCausalLM, MixtralForCausalLM
    from weightlift.integrations.transformers import from_pretrained

    kind, d = model_dir
    cls = LlamaForCausalLM if kind == "llama" else MixtralForCausalLM
    model = from_pretrained(cls, d)
    assert type(model) is cls
    # A checkpoint missing a tensor is refused, naming it.
    broken = tmp_path / "broken"
    broken.mkdir()
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        with st_safe_open(str(f), "pt") as r:
            tensors.update({k: r.get_tensor(k) for k in r.keys()})
    dropped = "model.norm.weight"
    del tensors[dropped]
    save_file(tensors, str(broken / "model.safetensors"))
    (broken / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(weightlift.MismatchError, match=dropped):
        from_pretrained(cls, broken)


# --- vLLM and SGLang, without them ---


def test_vllm_entry_point_is_in_the_wheels_metadata():
    found = [ep for ep in importlib.metadata.entry_points(group="vllm.general_plugins") if ep.name == "weightlift"]
    assert found, "the installed weightlift wheel declares no vllm.general_plugins entry point"
    (ep,) = found
    assert ep.value == "weightlift.integrations.vllm:register"
    register = ep.load()
    if importlib.util.find_spec("vllm") is None:
        assert register() is None  # a no-op without vLLM
        import weightlift.integrations.vllm as wv

        with pytest.raises(ImportError):
            wv.WeightliftModelLoader
    if importlib.util.find_spec("sglang") is None:
        import weightlift.integrations.sglang as ws

        with pytest.raises(ImportError):
            ws.WeightliftModelLoader


def test_loader_options():
    assert LoaderOptions.parse(None) == LoaderOptions()
    assert LoaderOptions.parse({}) == LoaderOptions()
    o = LoaderOptions.parse(
        '{"backend": ["URING", "PREAD"], "pinned_bytes": 1048576, "fill_threads": 4, "buffer_size": 65536,'
        ' "progress": false, "group": "cpu", "mmap": false}'
    )
    assert o == LoaderOptions(
        backend=["URING", "PREAD"], buffer_size=65536, pinned_bytes=1 << 20, fill_threads=4,
        progress=False, group="cpu", mmap=False,
    )
    for bad, words in [
        ({"pinned": 1}, "unknown weightlift loader option"),
        ({"pinned_bytes": "1M"}, "'pinned_bytes'"),
        ({"fill_threads": True}, "'fill_threads'"),
        ({"backend": 3}, "'backend'"),
        ({"progress": "yes"}, "'progress'"),
        ({"group": "world"}, "'group'"),
        ("{not json", "not JSON"),
        ("[1]", "JSON object"),
    ]:
        with pytest.raises(weightlift.SettingError, match=words):
            LoaderOptions.parse(bad)


def _tensors(seed, names):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(3, 5, generator=g) for n in names}


def test_file_selection(tmp_path):
    # Shards with an index, and a consolidated file of the same weights
    # beside them (as Mistral's repositories ship): only the shards.
    d = tmp_path / "indexed"
    d.mkdir()
    a, b = _tensors(1, ["x.a", "x.b"]), _tensors(2, ["y"])
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    save_file({**a, **b}, str(d / "consolidated.safetensors"))
    index = {"weight_map": {"x.a": "model-00001-of-00002.safetensors", "x.b": "model-00001-of-00002.safetensors",
                            "y": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert checkpoint_files(d) == [str(d / "model-00001-of-00002.safetensors"), str(d / "model-00002-of-00002.safetensors")]
    # Without an index: every *.safetensors, sorted.
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(b, str(plain / "b.safetensors"))
    save_file(a, str(plain / "a.safetensors"))
    (plain / "notes.txt").write_text("not weights")
    assert checkpoint_files(plain) == [str(plain / "a.safetensors"), str(plain / "b.safetensors")]
    # An index naming a missing shard, an empty directory, no directory.
    os.remove(d / "model-00002-of-00002.safetensors")
    with pytest.raises(weightlift.MissingFileError, match="model-00002-of-00002"):
        checkpoint_files(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(weightlift.MissingFileError, match="no \\*.safetensors"):
        checkpoint_files(empty)
    with pytest.raises(weightlift.MissingFileError, match="not a directory"):
        checkpoint_files(tmp_path / "nowhere")


class _Counter:
    def __init__(self, total):
        self.total, self.done, self.closed = total, 0, False

    def update(self, n):
        self.done += n

    def close(self):
        self.closed = True


@pytest.mark.parametrize("options", [{}, {"backend": "PREAD_BUFFERED", "mmap": False}])
def test_weights_iterator(tmp_path, options):
    a, b = _tensors(3, ["p", "q"]), _tensors(4, ["r"])
    save_file(a, str(tmp_path / "one.safetensors"))
    save_file(b, str(tmp_path / "two.safetensors"))
    files = checkpoint_files(tmp_path)
    bars = []

    def bar(total):
        bars.append(_Counter(total))
        return bars[-1]

    got = dict(_weights.weights(files, LoaderOptions.parse(options), "cpu", bar))
    want = {**a, **b}
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(got[k], want[k]), f"tensor {k!r} differs from what was saved"
    (counted,) = bars
    assert counted.closed and counted.done == counted.total == sum(t.nbytes for t in want.values())
