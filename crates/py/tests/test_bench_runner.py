"""The benchmark's runner (xtask/bench_runner.py) keeps its contract with
`cargo xtask bench`: one JSON line per load, every loader that runs here
returns the same bytes, and a loader that cannot run says why with status 3."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[3] / "xtask" / "bench_runner.py"
LOADERS = ["weightlift", "safetensors_load_file", "safetensors_safe_open"]


def _run(*args):
    p = subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=300)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
    return p.returncode, json.loads(last) if last.startswith("{") else None, p.stderr


def _load(ckpt, loader, *extra):
    return _run("load", "--loader", loader, "--device", "cpu", *extra, "--model", ckpt.source, *ckpt.shards)


@pytest.mark.parametrize("kind", ["sharded_index", "many_tiny"])
def test_loaders_agree(store, kind):
    ckpt = store.get(kind)
    payload = sum(i.nbytes for i in ckpt.infos.values())
    digests = {}
    for loader in LOADERS:
        rc, out, err = _load(ckpt, loader, "--digest")
        assert rc == 0, f"{loader}: {err}"
        assert out["tensors"] == len(ckpt.infos), (loader, out)
        assert out["bytes"] == payload, (loader, out)
        assert out["seconds"] > 0 and out["peak_rss"] >= out["base_rss"] > 0, (loader, out)
        digests[loader] = out["digest"]
    assert len(set(digests.values())) == 1, digests


def test_backend_is_named(store):
    ckpt = store.get("sharded_index")
    rc, out, err = _load(ckpt, "weightlift", "--backend", "PREAD_BUFFERED")
    assert rc == 0, err
    assert out["backend"] == "PREAD_BUFFERED"


def test_unavailable_says_why(store):
    ckpt = store.get("sharded_index")
    rc, out, _ = _load(ckpt, "instanttensor")
    assert rc == 3 and out["unavailable"], out


def test_chart(tmp_path):
    pytest.importorskip("matplotlib")
    spec = {"title": "t", "panels": [
        {"title": "cold", "limit": {"name": "raw", "gbps": 1.5},
         "rows": [{"name": "a", "median": 1.2, "min": 1.0, "max": 1.4}]},
        {"title": "warm", "limit": None, "rows": []},
    ]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    rc, out, err = _run("chart", "--input", tmp_path / "spec.json", "--output", tmp_path / "c.png")
    assert rc == 0, err
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
