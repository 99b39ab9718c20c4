"""The hostile-header corpus (tests/corpus), each file checked in one subprocess so a crash shows.

Files named valid-* must open and load, matching safetensors where it can read
them (F6 tensors must give DtypeError); every other file must raise a
WeightliftError subclass from safe_open or while loading, and from load_file.
"""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open as st_safe_open

import weightlift

CORPUS_DIR = Path(__file__).resolve().parents[3] / "tests" / "corpus"
CORPUS = sorted(p.name for p in CORPUS_DIR.glob("*.safetensors"))
VALID = [n for n in CORPUS if n.startswith("valid-")]
HOSTILE = [n for n in CORPUS if not n.startswith("valid-")]

SCRIPT = textwrap.dedent(r"""
    import json, sys
    from pathlib import Path
    import torch
    import weightlift

    def describe(e):
        return {"exc": type(e).__name__, "msg": str(e)[:500],
                "is_wl": isinstance(e, weightlift.WeightliftError),
                "is_dtype": isinstance(e, weightlift.DtypeError)}

    def hexbytes(t):
        return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()

    for name in json.loads(sys.argv[2]):
        p = Path(sys.argv[1]) / name
        rec = {"file": name}
        try:
            with weightlift.safe_open(p) as f:
                rec["keys"] = f.keys()
                rec["offset_keys"] = f.offset_keys()
                rec["metadata"] = f.metadata()
                tensors = {}
                for k in f.keys():
                    try:
                        t = f.get_tensor(k)
                        tensors[k] = {"dtype": str(t.dtype), "shape": list(t.shape), "hex": hexbytes(t)}
                    except weightlift.DtypeError as e:
                        tensors[k] = {"error": describe(e)}
                rec["tensors"] = tensors
                rec["all"] = sorted(k for k, _ in f.tensors()) if not any(
                    "error" in v for v in tensors.values()) else None
            rec["open"] = "ok"
        except BaseException as e:
            rec["open"] = "error"
            rec["open_error"] = describe(e)
        try:
            rec["load_file"] = sorted(weightlift.load_file(p))
        except BaseException as e:
            rec["load_file_error"] = describe(e)
        print(json.dumps(rec), flush=True)
    print("DONE", flush=True)
""")


@pytest.fixture(scope="module")
def corpus_results(h):
    proc = h.run_python(SCRIPT, str(CORPUS_DIR), json.dumps(CORPUS), timeout=300)
    recs = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            recs[rec["file"]] = rec
    return proc, recs


def _rec(corpus_results, name):
    proc, recs = corpus_results
    rec = recs.get(name)
    assert rec is not None, (f"no result for {name}: the subprocess died (rc={proc.returncode})\n"
                             f"{proc.stderr[-3000:]}")
    return rec


def test_corpus_present():
    assert CORPUS_DIR.is_dir(), CORPUS_DIR
    assert len(VALID) >= 5 and len(HOSTILE) >= 40


def test_corpus_subprocess_exits_cleanly(corpus_results):
    proc, recs = corpus_results
    assert proc.returncode == 0 and "DONE" in proc.stdout, \
        f"rc={proc.returncode}\nstderr:\n{proc.stderr[-4000:]}"
    assert sorted(recs) == CORPUS


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_file_rejected(corpus_results, name):
    rec = _rec(corpus_results, name)
    if rec["open"] == "error":
        err = rec["open_error"]
    else:
        errs = [v["error"] for v in rec["tensors"].values() if "error" in v]
        assert errs, f"{name}: opened and loaded without an error (keys {rec.get('keys')})"
        err = errs[0]
    assert err["is_wl"], f"{name}: raised {err['exc']}, not a WeightliftError: {err['msg']}"
    assert "load_file_error" in rec, f"{name}: load_file returned {rec.get('load_file')}"
    lerr = rec["load_file_error"]
    assert lerr["is_wl"], f"{name}: load_file raised {lerr['exc']}, not a WeightliftError: {lerr['msg']}"


@pytest.mark.parametrize("name", VALID)
def test_valid_file_loads(corpus_results, h, name):
    rec = _rec(corpus_results, name)
    assert rec["open"] == "ok", f"{name}: {rec.get('open_error')}"
    path = CORPUS_DIR / name
    with st_safe_open(str(path), "pt") as ref:
        assert rec["keys"] == list(ref.keys())
        assert rec["metadata"] == ref.metadata()
        _, header, _ = h.read_header(path)
        starts = {k: e["data_offsets"] for k, e in header.items()}
        assert sorted(rec["offset_keys"]) == rec["keys"]
        assert [starts[k] for k in rec["offset_keys"]] == sorted(starts[k] for k in rec["offset_keys"])
        f6 = [k for k, e in header.items() if e["dtype"] in h.F6_DTYPES]
        for k in ref.keys():
            got = rec["tensors"][k]
            if k in f6:
                assert "error" in got and got["error"]["is_dtype"], f"{name}[{k}]: F6 must give DtypeError: {got}"
                assert k in got["error"]["msg"], got["error"]["msg"]
                continue
            assert "error" not in got, f"{name}[{k}]: {got.get('error')}"
            exp = ref.get_tensor(k)
            assert got["dtype"] == str(exp.dtype), (k, got["dtype"], exp.dtype)
            assert got["shape"] == list(exp.shape), (k, got["shape"], list(exp.shape))
            assert got["hex"] == h.byte_view(exp).numpy().tobytes().hex(), f"{name}[{k}]: bytes differ"
    if f6:
        err = rec.get("load_file_error")
        assert err is not None and err["is_dtype"], f"{name}: load_file must refuse F6: {rec.get('load_file')}"
    else:
        assert rec.get("load_file") == rec["keys"], f"{name}: load_file: {rec.get('load_file_error')}"
        assert rec.get("all") == rec["keys"]
