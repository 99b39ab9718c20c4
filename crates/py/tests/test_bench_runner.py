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


def _serve(*args):
    """Start `serve`; its process and the endpoint it printed."""
    p = subprocess.Popen([sys.executable, str(RUNNER), "serve", *map(str, args)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("{"), line
    return p, json.loads(line)["endpoint"]


def test_http_server_serves_ranges(tmp_path):
    """The bench's HTTP server: single ranges, ETag and If-Match, 416 past
    the end, nothing outside its root, and weightlift loads from it."""
    import urllib.error
    import urllib.request

    import torch
    from safetensors.torch import save_file

    want = {"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 5, dtype=torch.bfloat16)}
    (tmp_path / "srv" / "m").mkdir(parents=True)
    save_file(want, str(tmp_path / "srv" / "m" / "model.safetensors"))
    (tmp_path / "secret").write_text("not served")
    data = (tmp_path / "srv" / "m" / "model.safetensors").read_bytes()
    p, endpoint = _serve("--kind", "http", "--root", tmp_path / "srv")
    url = f"{endpoint}/m/model.safetensors"

    def get(headers, u=url):
        try:
            with urllib.request.urlopen(urllib.request.Request(u, headers=headers)) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), b""

    try:
        status, headers, body = get({"Range": "bytes=10-109"})
        assert status == 206 and body == data[10:110]
        assert headers["Content-Range"] == f"bytes 10-109/{len(data)}"
        etag = headers["ETag"]
        assert get({"Range": "bytes=5-", "If-Match": etag})[2] == data[5:]
        assert get({"Range": "bytes=0-3", "If-Match": '"other"'})[0] == 412
        assert get({"Range": f"bytes={len(data)}-"})[0] == 416
        assert get({})[2] == data
        assert get({}, f"{endpoint}/../secret")[0] == 404
        assert get({}, f"{endpoint}/m/none.safetensors")[0] == 404
        import weightlift

        got = weightlift.load_file(url)
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)
    finally:
        p.stdin.close()
        assert p.wait(timeout=30) == 0


def test_runai_refuses_http(store):
    ckpt = store.get("sharded_index")
    rc, out, _ = _run("load", "--loader", "runai", "--device", "cpu", "--model", "http://127.0.0.1:9/m.safetensors",
                      "http://127.0.0.1:9/m.safetensors")
    assert rc == 3 and "not HTTP" in out["unavailable"], out
