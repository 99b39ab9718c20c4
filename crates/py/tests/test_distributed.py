"""Loading across a torch.distributed group: real gloo process groups of 1
to 4 processes on loopback, started by the tests. Every rank checks what it
received byte for byte against safetensors (and torch.tensor_split of its
tensors) and reports; the tests check every rank's report.

The group reads each byte once: what each rank read from storage (the
schedule's count, and /proc/self/io's read_bytes on a cold cache) adds up
to the files' size."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import weightlift

pytest.importorskip("torch.distributed")

#: Seconds a collective waits for a peer before failing.
GROUP_TIMEOUT = 20

PRELUDE = textwrap.dedent(
    """
    import datetime, json, os, sys
    import torch, torch.distributed as dist
    import weightlift
    from safetensors.torch import load_file as st_load

    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    args = json.loads(sys.argv[4])
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=%d),
    )
    weightlift._group.ROUND_BYTES = args.get("round_bytes", weightlift._group.ROUND_BYTES)

    def same(a, b):
        return a.dtype == b.dtype and a.shape == b.shape and a.is_contiguous() and \\
            torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))

    def report(**result):
        print("RESULT " + json.dumps(result), flush=True)

    def reference(directory):
        # Every tensor of the directory's .safetensors files, as safetensors reads them.
        expected = {}
        for name in sorted(os.listdir(directory)):
            if name.endswith(".safetensors"):
                expected.update(st_load(os.path.join(directory, name)))
        return expected
    """
    % GROUP_TIMEOUT
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(h, world: int, body: str, timeout: float = 120, **args):
    """Run `body` on `world` ranks; every rank's report (a dict), or its
    exit status and output when it reported nothing."""
    port = _free_port()
    code = PRELUDE + textwrap.dedent(body)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(r), str(world), str(port), json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=h.subprocess_env(),
        )
        for r in range(world)
    ]
    reports = []
    for r, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank {r} of {world} did not finish within {timeout} s")
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        reports.append(json.loads(lines[-1][7:]) if lines else {"status": p.returncode, "stderr": err[-3000:]})
    return reports


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A sharded checkpoint (two files and an index) whose dimensions do not
    divide by 3 or 4, with every dtype the splits need."""
    d = tmp_path_factory.mktemp("group-model")
    g = torch.Generator().manual_seed(3)
    first = {
        "embed": torch.randn(101, 48, generator=g),
        "w.0": torch.randn(70, 33, generator=g).to(torch.bfloat16),
        "w.1": torch.randn(9, 10, 7, generator=g).to(torch.float16),
        "norm": torch.randn(48, generator=g),
    }
    second = {
        "head": torch.randint(0, 255, (37, 29), generator=g, dtype=torch.uint8),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 5),
        "big": torch.randn(300, 1000, generator=g),
    }
    save_file(first, str(d / "model-00001-of-00002.safetensors"))
    save_file(second, str(d / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in first}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in second})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def _evicted(model) -> bool:
    """Drop the checkpoint's pages from the page cache; whether it could
    (not on tmpfs or ramfs, which keep files in memory; not without
    /proc/self/io to count what is read)."""
    if not Path("/proc/self/io").exists():
        return False
    best, fs = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, kind = line.split()[:3]
            if str(model).startswith(point) and len(point) > len(best):
                best, fs = point, kind
    if fs in ("tmpfs", "ramfs"):
        return False
    for p in model.glob("*.safetensors"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _ok(reports, world):
    assert len(reports) == world
    for r, rep in enumerate(reports):
        assert rep.get("ok") is True, f"rank {r}: {rep}"


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """Two shards of 32 MiB each: large enough that what the interpreter
    itself pages in while loading is lost in the count of bytes read."""
    d = tmp_path_factory.mktemp("group-large")
    g = torch.Generator().manual_seed(4)
    for k in range(2):
        save_file(
            {f"layer{k}.{i}": torch.randn(1024, 1024, generator=g) for i in range(8)},
            str(d / f"model-{k}.safetensors"),
        )
    return d


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_receives_every_tensor_and_the_group_reads_each_byte_once(h, large, world):
    model = large
    cold = _evicted(model)
    reports = run_group(
        h,
        world,
        """
        def storage_reads():
            with open("/proc/self/io") as io:
                return int(next(l for l in io if l.startswith("read_bytes:")).split()[1])

        # The code paths first, on a file too small to matter (each rank
        # its own copy, under the same name).
        warm = os.path.join(args["dir"], "warm-%d" % rank)
        os.makedirs(warm, exist_ok=True)
        small = os.path.join(warm, "small.safetensors")
        from safetensors.torch import save_file
        save_file({"x": torch.zeros(4)}, small)
        weightlift.load_file(small, process_group=dist.group.WORLD)
        before = storage_reads()
        with weightlift.safe_open(
            [os.path.join(args["dir"], "model-%d.safetensors" % k) for k in range(2)],
            process_group=dist.group.WORLD,
        ) as f:
            got = dict(f.tensors())
            stats = f.group_stats()
        read = storage_reads() - before
        expected = {}
        for k in range(2):
            expected.update(st_load(os.path.join(args["dir"], "model-%d.safetensors" % k)))
        os.remove(small)
        os.rmdir(warm)
        bad = [k for k in expected if k not in got or not same(got[k], expected[k])]
        report(ok=not bad and sorted(got) == sorted(expected), bad=bad, stats=stats, read=read)
        """,
        dir=str(model),
    )
    _ok(reports, world)
    size = sum(p.stat().st_size for p in model.glob("model-*.safetensors"))
    if cold:
        # Cold: what the ranks read from storage adds up to the files, once.
        total = sum(rep["read"] for rep in reports)
        assert 0.9 * size <= total <= 1.1 * size, ([rep["read"] for rep in reports], size)
    stats = reports[0]["stats"]
    assert all(rep["stats"] == stats for rep in reports), "ranks computed different schedules"
    read = sum(s["read"] for s in stats)
    # Each byte once: the data sections, aligned to 4096 bytes per read.
    assert size * 0.9 < read < size + 2 * 4096 * 4, (read, size)
    if world > 1:
        assert all(s["read"] < size for s in stats), stats


def test_per_rank_keys_and_shards_on_dims_0_and_1_that_do_not_divide(h, model):
    world = 3
    reports = run_group(
        h,
        world,
        """
        expected = reference(args["dir"])
        shard = {"embed": 0, "w.0": 1, "w.1": 2, "big": 1, "head": 0}
        mine = [k for i, k in enumerate(sorted(expected)) if i % world != (rank + 1) % world] + ["big"]
        mine = sorted(set(mine))
        with weightlift.safe_open(args["dir"], process_group=dist.group.WORLD, keys=mine, shard=shard) as f:
            got = dict(f.tensors())
            part = f.get_sharded("big", -1)
            whole = f.get_tensor("big")
            stats = f.group_stats()
        bad = []
        for k in mine:
            exp = expected[k]
            if k in shard:
                exp = torch.tensor_split(exp, world, shard[k])[rank].contiguous()
            if k not in got or not same(got[k], exp):
                bad.append(k)
        if not same(part, torch.tensor_split(expected["big"], world, 1)[rank].contiguous()):
            bad.append("get_sharded")
        if not same(whole, expected["big"]):
            bad.append("get_tensor")
        report(ok=not bad and sorted(got) == mine, bad=bad, got=sorted(got), stats=stats)
        """,
        dir=str(model),
        round_bytes=64 << 10,
    )
    _ok(reports, world)


def test_a_subgroup_loads_while_the_other_ranks_do_not(h, model):
    world = 4
    reports = run_group(
        h,
        world,
        """
        sub = dist.new_group([0, 2])
        if rank in (0, 2):
            got = weightlift.load_file(args["dir"], process_group=sub, shard={"big": 0})
            exp = st_load(os.path.join(args["dir"], "model-00002-of-00002.safetensors"))["big"]
            me = [0, 2].index(rank)
            report(ok=same(got["big"], torch.tensor_split(exp, 2, 0)[me].contiguous()) and len(got) == 8)
        else:
            report(ok=True)
        """,
        dir=str(model),
    )
    _ok(reports, world)


def test_load_into_with_shards_writes_each_ranks_part_in_place(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        exp = st_load(os.path.join(args["dir"], "model-00002-of-00002.safetensors"))
        part = torch.tensor_split(exp["big"], world, 1)[rank].contiguous()
        target = {"big": torch.zeros_like(part), "head": torch.zeros(37, 29, dtype=torch.uint8)}
        ptr = target["big"].data_ptr()
        missing, unexpected = weightlift.load_into(
            target, args["dir"], strict=False, process_group=dist.group.WORLD, shard={"big": 1})
        report(ok=same(target["big"], part) and same(target["head"], exp["head"])
               and target["big"].data_ptr() == ptr and missing == [] and len(unexpected) == 6)
        """,
        dir=str(model),
    )
    _ok(reports, world)


def test_dtype_converts_each_ranks_floats_after_the_exchange(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        expected = reference(args["dir"])
        half = lambda t: t.to(torch.float16) if t.is_floating_point() else t
        got = weightlift.load_file(args["dir"], process_group=dist.group.WORLD, shard={"big": 1}, dtype=torch.float16)
        bad = [k for k, t in expected.items()
               if not same(got[k], half(torch.tensor_split(t, world, 1)[rank].contiguous() if k == "big" else t))]
        target = {k: torch.empty_like(half(t)) for k, t in expected.items()}
        weightlift.load_into(target, args["dir"], process_group=dist.group.WORLD, dtype=torch.float16)
        bad += [k + " (load_into)" for k, t in expected.items() if not same(target[k], half(t))]
        report(ok=not bad, bad=bad)
        """,
        dir=str(model),
    )
    _ok(reports, world)


def test_a_target_of_the_wrong_shape_on_one_rank_fails_every_rank(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        rows = 150 if rank == 0 else 149   # rank 1's part of 300 rows is 150
        target = {"big": torch.zeros(rows, 1000)}
        try:
            weightlift.load_into(target, args["dir"], strict=False, process_group=dist.group.WORLD, shard={"big": 0})
            report(ok=False)
        except weightlift.MismatchError as e:
            report(ok="rank 1" in str(e) and "rank 0" not in str(e).split("failed")[1], msg=str(e))
        """,
        dir=str(model),
    )
    _ok(reports, world)


def _copies(model, tmp_path, world):
    """A copy of the checkpoint per rank, under the same names."""
    dirs = []
    for r in range(world):
        d = tmp_path / f"rank{r}"
        d.mkdir()
        for p in model.iterdir():
            (d / p.name).write_bytes(p.read_bytes())
        dirs.append(str(d))
    return dirs


def test_one_rank_missing_its_files_fails_every_rank_naming_it(h, model, tmp_path):
    world = 3
    dirs = _copies(model, tmp_path, world)
    dirs[1] = str(tmp_path / "nowhere")
    reports = run_group(
        h,
        world,
        """
        try:
            weightlift.load_file(args["dirs"][rank], process_group=dist.group.WORLD)
            report(ok=False)
        except weightlift.MissingFileError as e:
            report(ok="rank 1" in str(e) and "nowhere" in str(e), msg=str(e))
        """,
        dirs=dirs,
    )
    _ok(reports, world)


def test_ranks_that_open_different_checkpoints_fail_at_open(h, model, tmp_path):
    world = 2
    dirs = _copies(model, tmp_path, world)
    # The same names in rank 1's second shard, one of another shape.
    other = os.path.join(dirs[1], "model-00002-of-00002.safetensors")
    tensors = weightlift.load_file(other)
    tensors["big"] = torch.zeros(300, 999)
    save_file(tensors, other)
    reports = run_group(
        h,
        world,
        """
        try:
            weightlift.safe_open(args["dirs"][rank], process_group=dist.group.WORLD)
            report(ok=False)
        except weightlift.HeaderError as e:
            report(ok="[1]" in str(e), msg=str(e))
        """,
        dirs=dirs,
    )
    _ok(reports, world)


def test_one_rank_whose_file_is_cut_mid_load_fails_every_rank_naming_it(h, model, tmp_path):
    world = 3
    dirs = _copies(model, tmp_path, world)
    reports = run_group(
        h,
        world,
        """
        path = os.path.join(args["dirs"][rank], "model-00002-of-00002.safetensors")
        got = 0
        try:
            with weightlift.safe_open(args["dirs"][rank], process_group=dist.group.WORLD) as f:
                for name, t in f.tensors():
                    got += 1
                    if got == 1 and rank == 1:
                        os.truncate(path, 4096)
            report(ok=False)
        except weightlift.WeightliftIOError as e:
            report(ok="rank 1" in str(e) and "model-00002-of-00002" in str(e), msg=str(e), got=got)
        """,
        dirs=dirs,
        round_bytes=64 << 10,
    )
    _ok(reports, world)


def test_a_rank_asking_for_a_tensor_that_is_not_there_fails_every_rank(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        keys = ["norm", "nothing"] if rank == 1 else ["norm"]
        try:
            with weightlift.safe_open(args["dir"], process_group=dist.group.WORLD, keys=keys) as f:
                dict(f.tensors())
            report(ok=False)
        except weightlift.TensorNotFoundError as e:
            assert "rank 1" in str(e) and "nothing" in str(e), str(e)
        try:
            def shard(name):
                if rank == 0:
                    raise ValueError("no rule for " + name)
                return None
            with weightlift.safe_open(args["dir"], process_group=dist.group.WORLD, shard=shard) as f:
                dict(f.tensors())
            report(ok=False)
        except weightlift.WeightliftError as e:
            report(ok="rank 0" in str(e) and "no rule" in str(e), msg=str(e))
        """,
        dir=str(model),
    )
    _ok(reports, world)


def test_keys_on_one_rank_only_and_a_rank_that_stops_early(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        expected = reference(args["dir"])
        keys = ["big", "norm"] if rank == 0 else None
        with weightlift.safe_open(args["dir"], process_group=dist.group.WORLD, keys=keys) as f:
            it = f.tensors()
            got = {}
            for name, t in it:
                got[name] = t
                if rank == 0:
                    break          # rank 1 must still get everything
            it.close()
        want = ["big", "norm"][:1] if rank == 0 else sorted(expected)
        bad = [k for k, t in got.items() if not same(t, expected[k])]
        report(ok=not bad and (len(got) == 1 if rank == 0 else sorted(got) == want), got=sorted(got))
        """,
        dir=str(model),
        round_bytes=64 << 10,
    )
    _ok(reports, world)


def test_a_dtype_one_rank_cannot_represent_fails_every_rank_before_any_exchange(h, model):
    world = 2
    reports = run_group(
        h,
        world,
        """
        keys = ["w.0", "norm"] if rank == 0 else ["norm"]   # numpy has no bfloat16
        try:
            with weightlift.safe_open(args["dir"], "np", process_group=dist.group.WORLD, keys=keys) as f:
                dict(f.tensors())
            report(ok=False)
        except weightlift.DtypeError as e:
            report(ok="rank 0" in str(e) and "w.0" in str(e), msg=str(e))
        """,
        dir=str(model),
    )
    _ok(reports, world)


def test_a_rank_that_dies_makes_the_others_raise_within_the_timeout(h, model):
    world = 3
    reports = run_group(
        h,
        world,
        """
        f = weightlift.safe_open(args["dir"], process_group=dist.group.WORLD)
        if rank == 1:
            os._exit(3)
        try:
            dict(f.tensors())
            report(ok=False)
        except weightlift.WeightliftError as e:
            report(ok="failed or left" in str(e), msg=str(e))
        """,
        timeout=GROUP_TIMEOUT * 4,
        dir=str(model),
    )
    assert reports[1].get("status") == 3, reports[1]
    for r in (0, 2):
        assert reports[r].get("ok") is True, f"rank {r}: {reports[r]}"


def test_shard_without_a_group_and_bad_shard_specs_are_typed_errors(model):
    with pytest.raises(weightlift.SettingError, match="process_group"):
        weightlift.safe_open(model, shard={"big": 0})
    with pytest.raises(weightlift.InvalidArgumentError, match="shard"):
        weightlift._api._shard_rule(["big"])
    with pytest.raises(weightlift.InvalidArgumentError, match="shard"):
        weightlift._api._shard_rule({"big": "0"})
    with weightlift.safe_open(model) as f:
        assert torch.equal(f.get_sharded("norm", 0), f.get_tensor("norm"))
