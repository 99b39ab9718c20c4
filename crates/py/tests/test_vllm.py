"""`--load-format weightlift` inside vLLM itself, on the CPU.

vLLM's CUDA build (the one on PyPI) imports without a GPU but cannot run a
model: its kernels (`vllm._C`) need one. What it can do here is build its
own model classes on the CPU (with its CPU platform selected, as a CPU
build of vLLM selects it) and load their weights through its loader
machinery. So these tests start where `vllm serve --load-format weightlift`
starts: vLLM loads its general plug-ins (finding weightlift's entry point in
the installed wheel's metadata), resolves the load format to weightlift's
loader, and `load_model` builds vLLM's LlamaForCausalLM and fills it;
every parameter must equal, byte for byte, what vLLM's default safetensors
loader puts there from the same directory. With two ranks of tensor
parallelism (gloo), each rank's shards must equal the default loader's.

vLLM is not in the test command's environment (it is a multi-GB install):
`cargo xtask test --integrations` makes one with it and runs this file
with WEIGHTLIFT_REQUIRE_VLLM=1, so that a vLLM that does not import fails
instead of skipping.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

if os.environ.get("WEIGHTLIFT_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is installed by cargo xtask test --integrations")

import torch  # noqa: E402

# Run in a fresh interpreter per case: vLLM's distributed state and its
# current config are process-wide.
SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    import vllm.platforms as platforms
    from vllm.platforms.cpu import CpuPlatform

    platforms._current_platform = CpuPlatform()
    from vllm.plugins import load_general_plugins

    load_general_plugins()
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.model_loader import get_model_loader

    model_dir, out, rank, world, port, extra = sys.argv[1:7]
    rank, world = int(rank), int(world)
    states = {}
    for fmt in ("safetensors", "weightlift"):
        args = EngineArgs(
            model=model_dir, load_format=fmt, dtype="bfloat16", enforce_eager=True,
            max_model_len=64, tensor_parallel_size=world,
            model_loader_extra_config=json.loads(extra) if fmt == "weightlift" else {},
        )
        config = args.create_engine_config()
        with set_current_vllm_config(config):
            if not states:
                init_distributed_environment(
                    world_size=world, rank=rank, local_rank=rank,
                    distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo",
                )
                initialize_model_parallel(world, 1)
            loader = get_model_loader(config.load_config)
            model = loader.load_model(vllm_config=config, model_config=config.model_config)
        states[fmt] = (type(loader).__name__, {k: v.detach().clone() for k, v in model.state_dict().items()})
    torch.save(states, out)
    """
)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama with random bf16 weights, saved sharded with an index,
    and a `consolidated.safetensors` beside the shards that must be
    ignored (vLLM filters such files out too)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    d = tmp_path_factory.mktemp("llama")
    model.save_pretrained(str(d), max_shard_size="100KB")
    assert (d / "model.safetensors.index.json").exists()
    save_file({"stray": torch.ones(3)}, str(d / "consolidated.safetensors"))
    return d


def _run(model_dir, tmp_path, world, extra):
    port = _free_port()
    procs = []
    for rank in range(world):
        out = tmp_path / f"rank{rank}.pt"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(model_dir), str(out), str(rank), str(world), str(port),
             json.dumps(extra)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )))
    results = []
    for out, p in procs:
        try:
            log, _ = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for _, q in procs:
                q.kill()
            pytest.fail("vLLM did not load within 600 s")
        assert p.returncode == 0, log[-4000:]
        results.append(torch.load(out))
    return results


def _same(default, ours, rank):
    assert default.keys() == ours.keys()
    for name, t in default.items():
        o = ours[name]
        assert (o.dtype, o.shape) == (t.dtype, t.shape), f"rank {rank}: {name}"
        assert torch.equal(o.view(-1).view(torch.uint8), t.view(-1).view(torch.uint8)), f"rank {rank}: {name} differs"


@pytest.mark.slow
def test_vllm_loads_through_the_plugin_as_its_default_loader_does(model_dir, tmp_path):
    [states] = _run(model_dir, tmp_path, 1, {"progress": False})
    name, ours = states["weightlift"]
    assert name == "WeightliftModelLoader"
    _, default = states["safetensors"]
    assert len(default) > 10
    _same(default, ours, 0)


@pytest.mark.slow
@pytest.mark.dist
def test_vllm_tensor_parallel_ranks_load_their_shards(model_dir, tmp_path):
    # The ranks load through vLLM's tensor-parallel group (its gloo
    # communicator here): the group reads each byte once.
    ranks = _run(model_dir, tmp_path, 2, {"group": "cpu", "progress": False})
    for rank, states in enumerate(ranks):
        _same(states["safetensors"][1], states["weightlift"][1], rank)
    # Each rank holds its own part: the two ranks' shards of a split
    # parameter differ.
    q = [s["weightlift"][1]["model.layers.0.self_attn.qkv_proj.weight"] for s in ranks]
    assert q[0].shape == q[1].shape and not torch.equal(q[0], q[1])
