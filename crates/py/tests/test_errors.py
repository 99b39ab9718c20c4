"""Errors: the exception hierarchy, missing files, bad headers and indexes, files truncated mid-way."""

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import weightlift

HIERARCHY = {
    "HeaderError": (ValueError,),
    "WeightliftIOError": (OSError,),
    "MissingFileError": (weightlift.WeightliftIOError, FileNotFoundError, OSError),
    "TensorNotFoundError": (KeyError,),
    "DtypeError": (TypeError,),
    "BackendError": (RuntimeError,),
    "DeviceError": (RuntimeError,),
    "ClosedError": (ValueError,),
    "MismatchError": (RuntimeError,),
    "WeightliftMemoryError": (MemoryError,),
}


@pytest.mark.parametrize("name", sorted(HIERARCHY))
def test_exception_hierarchy(name):
    cls = getattr(weightlift, name)
    assert isinstance(cls, type)
    assert issubclass(cls, weightlift.WeightliftError)
    for base in HIERARCHY[name]:
        assert issubclass(cls, base), f"{name} is not a {base.__name__}"


def test_weightlift_error_is_exception():
    assert issubclass(weightlift.WeightliftError, Exception)


def test_module_surface():
    assert isinstance(weightlift.__version__, str) and weightlift.__version__
    assert {b.name for b in weightlift.Backend} >= {
        "URING", "URING_BUFFERED", "AIO", "AIO_BUFFERED", "PREAD", "PREAD_BUFFERED", "MMAP", "CUFILE"}
    assert weightlift.Backend.MMAP.value == "MMAP"
    assert weightlift.BackendPolicy.DIRECT.value == "DIRECT"
    assert weightlift.BackendPolicy.BUFFERED.value == "BUFFERED"
    assert weightlift.IncompatibleKeys([], ["x"]).unexpected_keys == ["x"]
    for fn in ["safe_open", "load_file", "load", "load_into"]:
        assert callable(getattr(weightlift, fn))


# --------------------------------------------------------------------------
# Missing files
# --------------------------------------------------------------------------


def _check_missing(ei, path):
    e = ei.value
    assert isinstance(e, weightlift.MissingFileError)
    assert isinstance(e, FileNotFoundError) and isinstance(e, weightlift.WeightliftIOError)
    assert isinstance(e, weightlift.WeightliftError)
    assert str(path) in str(e), f"the message does not name {path}: {e}"


@pytest.mark.parametrize("as_type", [str, Path])
def test_missing_file_safe_open(tmp_path, as_type):
    p = tmp_path / "nope.safetensors"
    with pytest.raises(weightlift.MissingFileError) as ei:
        weightlift.safe_open(as_type(p))
    _check_missing(ei, p)


def test_missing_file_load_file(tmp_path):
    p = tmp_path / "absent" / "model.safetensors"
    with pytest.raises(FileNotFoundError) as ei:
        weightlift.load_file(str(p))
    _check_missing(ei, p)


def test_missing_directory(tmp_path):
    p = tmp_path / "no_such_dir"
    with pytest.raises(weightlift.MissingFileError) as ei:
        weightlift.load(p)
    _check_missing(ei, p)


def test_missing_index(tmp_path):
    p = tmp_path / "model.safetensors.index.json"
    with pytest.raises(weightlift.MissingFileError) as ei:
        weightlift.safe_open(p)
    _check_missing(ei, p)


def test_missing_file_in_list(store, tmp_path):
    ck = store.get("sharded_list")
    p = tmp_path / "model-00004-of-00003.safetensors"
    with pytest.raises(weightlift.MissingFileError) as ei:
        weightlift.safe_open([ck.shards[0], p, ck.shards[1]])
    _check_missing(ei, p)


def test_index_names_missing_shard(tmp_path, h):
    shards = h.write_sharded(tmp_path / "ck", seed=31)
    shards[1].unlink()
    with pytest.raises(weightlift.MissingFileError) as ei:
        weightlift.safe_open(tmp_path / "ck" / "model.safetensors.index.json")
    assert shards[1].name in str(ei.value), str(ei.value)


def test_load_into_missing_file(tmp_path):
    with pytest.raises(weightlift.MissingFileError):
        weightlift.load_into({"a": torch.zeros(2)}, tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------
# Bad headers and indexes
# --------------------------------------------------------------------------


def test_not_a_safetensors_file(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"this is not a safetensors file at all, just text\n" * 3)
    with pytest.raises(weightlift.HeaderError) as ei:
        weightlift.safe_open(p)
    assert isinstance(ei.value, ValueError)


def test_truncated_before_open_is_header_error(tmp_path, store):
    src = store.get("metadata").shards[0]
    p = tmp_path / "cut.safetensors"
    p.write_bytes(src.read_bytes()[:-3])
    with pytest.raises(weightlift.WeightliftError):
        with weightlift.safe_open(p) as f:
            f.get_tensors()


def test_index_disagrees_with_shards(tmp_path, h):
    shards = h.write_sharded(tmp_path / "ck", seed=32)
    idx_path = tmp_path / "ck" / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    idx["weight_map"]["lm_head.weight"] = shards[0].name  # it is in the third shard
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(weightlift.HeaderError) as ei:
        weightlift.safe_open(idx_path)
    assert "lm_head.weight" in str(ei.value)


def test_index_lists_absent_tensor(tmp_path, h):
    shards = h.write_sharded(tmp_path / "ck", seed=33)
    idx_path = tmp_path / "ck" / "model.safetensors.index.json"
    idx = json.loads(idx_path.read_text())
    idx["weight_map"]["ghost.weight"] = shards[2].name
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(weightlift.HeaderError) as ei:
        weightlift.safe_open(idx_path)
    assert "ghost.weight" in str(ei.value)


def test_tensor_in_two_shards(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.zeros(2), "y": torch.ones(1)}, str(a))
    save_file({"x": torch.ones(2)}, str(b))
    with pytest.raises(weightlift.WeightliftError):
        with weightlift.safe_open([a, b]) as f:
            f.get_tensors()


# --------------------------------------------------------------------------
# A file truncated after safe_open, in a subprocess (a crash must show)
# --------------------------------------------------------------------------

TRUNCATE_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    import weightlift

    for sc in json.loads(sys.argv[1]):
        rec = {"id": sc["id"]}
        try:
            f = weightlift.safe_open(sc["path"], backend=sc["backend"])
            os.truncate(sc["path"], sc["cut"])
            if sc["api"] == "get_tensor":
                f.get_tensor("w_cut")
            else:
                for _ in f.tensors():
                    pass
            rec["result"] = "no error"
        except weightlift.BackendError as e:
            rec.update(result="backend error", msg=str(e))
        except BaseException as e:
            rec.update(result="error", exc=type(e).__name__, msg=str(e),
                       is_io=isinstance(e, weightlift.WeightliftIOError),
                       is_wl=isinstance(e, weightlift.WeightliftError))
        print(json.dumps(rec), flush=True)
    print("DONE", flush=True)
""")

TRUNCATE_BACKENDS = [None, "PREAD_BUFFERED", "PREAD", "URING", "MMAP"]  # MMAP last: a SIGBUS would end the run
TRUNCATE_CASES = [(api, b) for b in TRUNCATE_BACKENDS for api in ["get_tensor", "tensors"]]


def _case_id(api, backend):
    return f"{api}-{backend or 'auto'}"


@pytest.fixture(scope="module")
def truncation_results(tmp_path_factory, h):
    d = tmp_path_factory.mktemp("truncate")
    g = torch.Generator().manual_seed(41)
    src = d / "src.safetensors"
    save_file({"w_head": h.random_tensor("F32", (256, 1024), g), "w_cut": h.random_tensor("U8", (1 << 20,), g)},
              str(src))
    info = h.Ckpt("t", src, [src], "file").infos
    assert info["w_head"].offset < info["w_cut"].offset
    cut = info["w_cut"].offset + 1000  # "w_head" whole, "w_cut" cut short
    scenarios = []
    for api, backend in TRUNCATE_CASES:
        cid = _case_id(api, backend)
        p = d / f"{cid}.safetensors"
        shutil.copyfile(src, p)
        scenarios.append({"id": cid, "path": str(p), "api": api, "backend": backend, "cut": cut})
    proc = h.run_python(TRUNCATE_SCRIPT, json.dumps(scenarios), timeout=180)
    recs = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            recs[rec["id"]] = rec
    return proc, recs, {s["id"]: s for s in scenarios}


def test_truncation_subprocess_exits_cleanly(truncation_results):
    proc, _, _ = truncation_results
    assert proc.returncode == 0 and "DONE" in proc.stdout, \
        f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("api,backend", TRUNCATE_CASES, ids=[_case_id(a, b) for a, b in TRUNCATE_CASES])
def test_truncated_after_open(truncation_results, h, api, backend):
    proc, recs, scenarios = truncation_results
    cid = _case_id(api, backend)
    rec = recs.get(cid)
    assert rec is not None, f"no result for {cid}: the subprocess died (rc={proc.returncode})\n{proc.stderr[-3000:]}"
    if rec["result"] == "backend error":
        if os.environ.get("WEIGHTLIFT_REQUIRE_URING") == "1" and backend in h.REQUIRED_WITH_URING:
            pytest.fail(f"backend {backend} unusable: {rec['msg']}")
        assert backend is not None, rec["msg"]
        pytest.skip(f"backend {backend} is unusable here: {rec['msg']}")
    assert rec["result"] == "error", f"{cid}: reading a truncated file raised nothing"
    assert rec["is_io"], f"{cid}: raised {rec['exc']}, not a WeightliftIOError: {rec['msg']}"
    path = scenarios[cid]["path"]
    assert h.msg_has_path(rec["msg"], path), f"{cid}: the message does not name the file: {rec['msg']}"
    names = ["w_cut"] if api == "get_tensor" else ["w_head", "w_cut"]
    assert any(n in rec["msg"] for n in names), f"{cid}: the message does not name the tensor: {rec['msg']}"
