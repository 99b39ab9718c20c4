"""Checkpoints in S3 (moto's server on loopback) and over HTTP (a range
server in this file), loaded through every API and compared byte for byte
with safetensors' read of the local copy: safetensors files, shards with an
index, and ServerlessLLM checkpoints; across a gloo group of two ranks; and
the hostile corpora (tests/corpus), which must give the errors a local open
gives, also from servers that ignore Range or lie about Content-Length."""

import contextlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import weightlift
from test_cast import standin  # noqa: F401  (the host device standing in for a GPU)
from test_distributed import run_group

CORPUS_DIR = Path(__file__).resolve().parents[3] / "tests" / "corpus"

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")


def _tensors(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        out[f"layer.{seed}.{i}.weight"] = torch.randn(64 + 37 * i, 129, generator=g)
    out[f"layer.{seed}.bias"] = torch.arange(7, dtype=torch.int16)
    out[f"layer.{seed}.scalar"] = torch.tensor(3.5, dtype=torch.bfloat16)
    return out


def _same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k].view(torch.uint8) if got[k].dim() else got[k], want[k].view(torch.uint8) if want[k].dim() else want[k]), k


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    save_file(_tensors(1), str(d / "model.safetensors"), metadata={"format": "pt"})
    a, b = _tensors(2), _tensors(3)
    save_file(a, str(d / "model-00001-of-00002.safetensors"))
    save_file(b, str(d / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in a}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in b})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


@pytest.fixture(scope="module")
def sllm(checkpoint, h):
    """A ServerlessLLM checkpoint (several partitions, tied weights) in
    `checkpoint`/sllm, and what safetensors reads from the same tensors."""
    sd = _tensors(4, n=6)
    sd["tied"] = sd["layer.4.0.weight"]
    d = h.write_sllm(checkpoint / "sllm", sd, partition_limit=64 << 10)
    assert len(list(d.glob("tensor.data_*"))) >= 3
    ref = checkpoint / "sllm.safetensors.ref"
    save_file({k: v.clone() for k, v in sd.items()}, str(ref))
    return d, st_load_file(str(ref))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(checkpoint, sllm):
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    client.create_bucket(Bucket="models")
    client.upload_file(str(checkpoint / "model.safetensors"), "models", "one/model.safetensors")
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]:
        client.upload_file(str(checkpoint / name), "models", f"sharded/{name}")
    for p in sllm[0].iterdir():
        client.upload_file(str(p), "models", f"sllm/{p.name}")
    for d in (CORPUS_DIR / "sllm").iterdir():
        if d.is_dir():
            for p in d.iterdir():
                client.upload_file(str(p), "models", f"corpus/{d.name}/{p.name}")
    yield client
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_s3_file_through_every_api(s3, checkpoint):
    want = st_load_file(str(checkpoint / "model.safetensors"))
    url = "s3://models/one/model.safetensors"
    _same(weightlift.load_file(url), want)
    _same(weightlift.load(url), want)
    with weightlift.safe_open(url, framework="pt") as f:
        assert sorted(f.keys()) == sorted(want)
        assert f.metadata() == {"format": "pt"}
        k = sorted(want)[0]
        assert torch.equal(f.get_tensor(k), want[k])
        assert torch.equal(f.get_slice(k)[3:9], want[k][3:9])
        _same(dict(f.tensors()), want)
    targets = {k: torch.empty_like(v) for k, v in want.items()}
    weightlift.load_into(targets, url)
    _same(targets, want)


@pytest.mark.parametrize("where", ["s3://models/sharded/model.safetensors.index.json", "s3://models/sharded", "s3://models/sharded/"])
def test_s3_shards_by_index_and_prefix(s3, checkpoint, where):
    want = {}
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        want.update(st_load_file(str(checkpoint / name)))
    _same(weightlift.load_file(where), want)


def test_s3_replaced_object_is_an_error(s3, checkpoint):
    url = "s3://models/one/model.safetensors"
    with weightlift.safe_open(url, framework="pt") as f:
        s3.put_object(Bucket="models", Key="one/model.safetensors", Body=(checkpoint / "model-00001-of-00002.safetensors").read_bytes())
        try:
            with pytest.raises(weightlift.WeightliftError, match="changed since it was opened"):
                dict(f.tensors())
        finally:
            s3.upload_file(str(checkpoint / "model.safetensors"), "models", "one/model.safetensors")


def test_s3_missing_key_names_it(s3):
    with pytest.raises(weightlift.WeightliftError, match=r"s3://models/none\.safetensors.*404"):
        weightlift.load_file("s3://models/none.safetensors")


class _Ranges(http.server.SimpleHTTPRequestHandler):
    """Files with single byte ranges and ETags, as servers send them (416
    with `Content-Range: bytes */SIZE` for a range past the end, such as any
    range of an empty file). Subclasses ignore Range or lie about lengths."""

    ignore_range = False
    #: Bytes added to the Content-Length of a partial answer.
    lie = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        etag = f'"{len(data)}-{os.stat(path).st_mtime_ns}"'
        rng = None if self.ignore_range else self.headers.get("Range")
        if self.headers.get("If-Match") not in (None, etag):
            self.send_error(412)
            return
        if rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            a, b = int(a), min(int(b), len(data) - 1)
            if a >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            body = data[a : b + 1]
            announced = len(body) + self.lie
        else:
            self.send_response(200)
            body = data
            announced = len(body)
        self.send_header("Content-Length", str(announced))
        self.send_header("ETag", etag)
        if self.lie:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)


class _IgnoresRange(_Ranges):
    ignore_range = True


class _Lies(_Ranges):
    lie = 100


@contextlib.contextmanager
def _serving(directory, handler=_Ranges):
    """`directory` served over HTTP on loopback: its root URL."""
    make = lambda *a, **k: handler(*a, directory=str(directory), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def http_root(checkpoint):
    with _serving(checkpoint) as root:
        yield root


def test_http_file_and_index(http_root, checkpoint):
    _same(weightlift.load_file(f"{http_root}/model.safetensors"), st_load_file(str(checkpoint / "model.safetensors")))
    want = {}
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        want.update(st_load_file(str(checkpoint / name)))
    _same(weightlift.load_file(f"{http_root}/model.safetensors.index.json"), want)
    _same(weightlift.load(f"{http_root}/model.safetensors.index.json"), want)


def test_http_onto_a_device_through_staging(http_root, checkpoint, standin):
    want = st_load_file(str(checkpoint / "model.safetensors"))
    got = weightlift.load_file(f"{http_root}/model.safetensors", device="cuda:0")
    _same({k: v.cpu() for k, v in got.items()}, want)


def _check_sllm_every_api(h, where, want, device=None):
    h.assert_same_dict(weightlift.load_file(where, device=device or "cpu"), want, f"load_file {where}")
    h.assert_same_dict(weightlift.load(where, device=device or "cpu"), want, f"load {where}")
    with weightlift.safe_open(where, framework="pt", device=device or "cpu") as f:
        assert f.keys() == sorted(want)
        assert f.metadata() is None
        for k in f.keys():
            h.assert_same_tensor(f.get_tensor(k), want[k], f"get_tensor {k}")
        h.assert_same_dict(h.collect_tensors(f.tensors()), want, "tensors()")
        k = "layer.4.2.weight"
        h.assert_same_tensor(f.get_slice(k)[5:17], want[k][5:17], "slice")
    chosen = ["tied", "layer.4.bias", "layer.4.scalar"]
    with weightlift.safe_open(where, keys=chosen, device=device or "cpu") as f:
        h.assert_same_dict(h.collect_tensors(f.tensors()), {k: want[k] for k in chosen}, "keys=")
    targets = {k: torch.zeros_like(v) for k, v in want.items()}
    res = weightlift.load_into(targets, where)
    assert (res.missing_keys, res.unexpected_keys) == ([], [])
    h.assert_same_dict(targets, want, "load_into")


@pytest.mark.parametrize("where", ["s3://models/sllm/", "s3://models/sllm", "s3://models/sllm/tensor_index.json"])
def test_s3_serverlessllm_through_every_api(s3, sllm, h, where):
    _check_sllm_every_api(h, where, sllm[1])


def test_http_serverlessllm_by_its_index_through_every_api(http_root, sllm, h):
    _check_sllm_every_api(h, f"{http_root}/sllm/tensor_index.json", sllm[1])


def test_serverlessllm_onto_a_device_through_staging(s3, http_root, sllm, h, standin):
    for where in ["s3://models/sllm/", f"{http_root}/sllm/tensor_index.json"]:
        got = weightlift.load_file(where, device="cuda:0")
        h.assert_same_dict({k: v.cpu() for k, v in got.items()}, sllm[1], f"device {where}")


def test_http_serverlessllm_missing_partition_names_its_url(checkpoint, sllm, tmp_path, h):
    d = h.write_sllm(tmp_path / "m", {f"t{i}": torch.full((1000,), i, dtype=torch.int32) for i in range(4)},
                     partition_limit=4096)
    (d / "tensor.data_1").unlink()
    with _serving(tmp_path) as root:
        with pytest.raises(weightlift.HeaderError) as e:
            weightlift.load_file(f"{root}/m/tensor_index.json")
    msg = str(e.value)
    assert f"{root}/m/tensor.data_1 is missing, but {root}/m/tensor.data_2 exists" in msg, msg
    assert f"{root}/m/tensor_index.json" in msg, msg


def test_a_group_of_two_loads_a_remote_checkpoint(s3, http_root, checkpoint, sllm, h, tmp_path):
    """gloo, two ranks: each reads its part of the remote objects and the
    group exchanges, as with local files."""
    sharded = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    reports = run_group(
        h,
        2,
        """
        want = {}
        for name in args["sharded"]:
            want.update(st_load(os.path.join(args["dir"], name)))
        # Both ranks fill one cache directory at once, then read from it.
        got = weightlift.load_file(args["s3"], process_group=dist.group.WORLD, cache_dir=args["cache"])
        bad = [k for k in want if k not in got or not same(got[k], want[k])]
        got = weightlift.load_file(args["s3"], process_group=dist.group.WORLD, cache_dir=args["cache"])
        bad += [k for k in want if k not in got or not same(got[k], want[k])]
        sllm = st_load(args["sllm_ref"])
        shard = {"layer.4.0.weight": 0, "layer.4.3.weight": 1}
        with weightlift.safe_open(args["http"], process_group=dist.group.WORLD, shard=shard) as f:
            part = dict(f.tensors())
        for k, v in sllm.items():
            if k in shard:
                v = torch.tensor_split(v, world, shard[k])[rank].contiguous()
            if k not in part or not same(part[k], v):
                bad.append("shard " + k)
        targets = {k: torch.zeros_like(v) for k, v in sllm.items()}
        weightlift.load_into(targets, args["http"], process_group=dist.group.WORLD)
        bad += [k for k in sllm if not same(targets[k], sllm[k])]
        report(ok=not bad and sorted(got) == sorted(want), bad=bad)
        """,
        dir=str(checkpoint),
        sharded=sharded,
        s3="s3://models/sharded/",
        http=f"{http_root}/sllm/tensor_index.json",
        sllm_ref=str(checkpoint / "sllm.safetensors.ref"),
        cache=str(tmp_path / "shared-cache"),
    )
    for r, rep in enumerate(reports):
        assert rep.get("ok") is True, f"rank {r}: {rep}"
    copies = sorted(p.name for p in (tmp_path / "shared-cache").iterdir())
    assert len(copies) == 4 and not any(".part-" in c for c in copies), copies


# The hostile corpora over HTTP and S3: the outcome of every call is the
# local one, the location aside.


def _hex(t):
    return (str(t.dtype), list(t.shape), t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex())


def _outcome(path, at):
    """What opening and loading `path` gives, with `at` (the directory or
    URL prefix) written as <at>: per call, the tensors' bytes or the
    exception's type and message."""

    def err(e):
        return (type(e).__name__, str(e).replace(at, "<at>"))

    rec = {}
    try:
        with weightlift.safe_open(path) as f:
            rec["keys"] = f.keys()
            rec["metadata"] = f.metadata()
            tensors = {}
            for k in f.keys():
                try:
                    tensors[k] = _hex(f.get_tensor(k))
                except weightlift.WeightliftError as e:
                    tensors[k] = err(e)
            rec["tensors"] = tensors
    except weightlift.WeightliftError as e:
        rec["open"] = err(e)
    try:
        rec["load_file"] = {k: _hex(v) for k, v in weightlift.load_file(path).items()}
    except weightlift.WeightliftError as e:
        rec["load_file"] = err(e)
    return rec


SAFETENSORS_CORPUS = sorted(p.name for p in CORPUS_DIR.glob("*.safetensors"))
SLLM_CORPUS = sorted(p.name for p in (CORPUS_DIR / "sllm").iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def corpus_http():
    with _serving(CORPUS_DIR) as root:
        yield root


@pytest.fixture(scope="module")
def remote_limits():
    """Retries bounded to seconds, for servers that keep failing."""
    saved = os.environ.get("WEIGHTLIFT_REMOTE_RETRY_SECS")
    os.environ["WEIGHTLIFT_REMOTE_RETRY_SECS"] = "3"
    yield
    if saved is None:
        os.environ.pop("WEIGHTLIFT_REMOTE_RETRY_SECS", None)
    else:
        os.environ["WEIGHTLIFT_REMOTE_RETRY_SECS"] = saved


def test_the_safetensors_corpus_over_http_gives_the_local_outcomes(corpus_http):
    assert len(SAFETENSORS_CORPUS) >= 40
    for name in SAFETENSORS_CORPUS:
        local = _outcome(CORPUS_DIR / name, str(CORPUS_DIR))
        remote = _outcome(f"{corpus_http}/{name}", corpus_http)
        assert remote == local, name


def test_the_serverlessllm_corpus_over_http_and_s3_gives_the_local_outcomes(corpus_http, s3):
    assert len(SLLM_CORPUS) >= 30
    for name in SLLM_CORPUS:
        d = CORPUS_DIR / "sllm" / name
        local = _outcome(d / "tensor_index.json", str(d))
        remote = _outcome(f"{corpus_http}/sllm/{name}/tensor_index.json", f"{corpus_http}/sllm/{name}")
        assert remote == local, f"http {name}"
        local = _outcome(d, str(d))
        remote = _outcome(f"s3://models/corpus/{name}/", f"s3://models/corpus/{name}")
        assert remote == local, f"s3 {name}"
        if not name.startswith("valid-"):
            assert "open" in local and local["open"][0] == "HeaderError", (name, local)


def test_the_corpus_from_a_server_that_ignores_range(remote_limits):
    """Files no longer than the first range come whole and give the local
    outcome; longer ones are refused, naming the URL."""
    with _serving(CORPUS_DIR, _IgnoresRange) as root:
        for name in SAFETENSORS_CORPUS:
            url = f"{root}/{name}"
            if (CORPUS_DIR / name).stat().st_size <= 64 << 10:
                assert _outcome(url, root) == _outcome(CORPUS_DIR / name, str(CORPUS_DIR)), name
                continue
            with pytest.raises(weightlift.WeightliftError, match="ignores Range") as e:
                weightlift.safe_open(url)
            assert url in str(e.value), str(e.value)


def test_the_corpus_from_a_server_that_lies_about_content_length(remote_limits):
    """Every answer announces 100 bytes more than it sends: each open is an
    error naming the URL, never a header parsed from bytes that are not
    there (an empty file has no range to lie about)."""
    with _serving(CORPUS_DIR, _Lies) as root:
        for name in SAFETENSORS_CORPUS:
            url = f"{root}/{name}"
            if (CORPUS_DIR / name).stat().st_size == 0:
                assert _outcome(url, root) == _outcome(CORPUS_DIR / name, str(CORPUS_DIR)), name
                continue
            with pytest.raises(weightlift.WeightliftError, match="announced") as e:
                weightlift.safe_open(url)
            assert url in str(e.value), str(e.value)


# cache_dir=: local copies of remote shards.


class _Counting(_Ranges):
    """Records each GET's path and Range."""

    seen: list = []

    def do_GET(self):
        _Counting.seen.append((self.path, self.headers.get("Range")))
        super().do_GET()


def test_cache_dir_keeps_shards_that_later_loads_read_locally(checkpoint, sllm, tmp_path, h):
    cache = tmp_path / "cache"
    _, want = sllm
    with _serving(checkpoint, _Counting) as root:
        url = f"{root}/sllm/tensor_index.json"
        _Counting.seen.clear()
        h.assert_same_dict(weightlift.load_file(url, cache_dir=cache), want, "first load")
        parts = sorted(p.name for p in (checkpoint / "sllm").glob("tensor.data_*"))
        copies = sorted(p.name for p in cache.iterdir())
        assert len(copies) == 2 * len(parts) and not any(".part-" in c for c in copies), copies
        # Partitions longer than the first range were fetched past it.
        assert any(r != "bytes=0-65535" for _, r in _Counting.seen), _Counting.seen
        # Later: one ranged GET of each partition's start (its version),
        # the index, and the probe past the last partition; nothing else.
        _Counting.seen.clear()
        with weightlift.safe_open(url, cache_dir=cache) as f:
            h.assert_same_dict(h.collect_tensors(f.tensors()), want, "tensors() from the cache")
            k = "layer.4.2.weight"
            h.assert_same_tensor(f.get_tensor(k), want[k], "get_tensor from the cache")
        ranges = [r for _, r in _Counting.seen]
        assert all(r == "bytes=0-65535" for r in ranges), _Counting.seen
        assert len(ranges) == len(parts) + 3, _Counting.seen
        targets = {k: torch.zeros_like(v) for k, v in want.items()}
        weightlift.load_into(targets, url, cache_dir=cache)
        h.assert_same_dict(targets, want, "load_into from the cache")


def test_cache_dir_from_the_environment_and_a_replaced_object(s3, checkpoint, tmp_path, monkeypatch, h):
    cache = tmp_path / "env-cache"
    monkeypatch.setenv("WEIGHTLIFT_CACHE_DIR", str(cache))
    url = "s3://models/cached/model.safetensors"
    first = checkpoint / "model.safetensors"
    second = checkpoint / "model-00001-of-00002.safetensors"
    s3.upload_file(str(first), "models", "cached/model.safetensors")
    h.assert_same_dict(weightlift.load_file(url), st_load_file(str(first)), "first version")
    copies = sorted(p.name for p in cache.iterdir())
    assert len(copies) == 2 and copies[0].endswith("-model.safetensors"), copies
    assert (cache / copies[0]).read_bytes() == first.read_bytes()
    meta = (cache / copies[1]).read_text()
    assert f"url={url}\n" in meta and f"size={first.stat().st_size}\n" in meta, meta
    # Replaced remotely: the copy of the old version is not used, and goes.
    s3.upload_file(str(second), "models", "cached/model.safetensors")
    h.assert_same_dict(weightlift.load_file(url), st_load_file(str(second)), "second version")
    now = sorted(p.name for p in cache.iterdir())
    assert len(now) == 2 and copies[0] not in now, now
    assert (cache / now[0]).read_bytes() == second.read_bytes()
    # A copy cut short is fetched again.
    (cache / now[0]).write_bytes(second.read_bytes()[:100])
    h.assert_same_dict(weightlift.load_file(url), st_load_file(str(second)), "after truncation")
    assert (cache / now[0]).read_bytes() == second.read_bytes()



def test_a_local_path_with_multibyte_characters_is_not_taken_for_a_url(tmp_path, monkeypatch):
    """Telling a location from a local path compares its first bytes with
    "s3://", "http://" and "https://"; a local path whose fifth, seventh or
    eighth byte falls inside a character (a relative path into a directory
    named in Chinese) must load, not panic."""
    d = tmp_path / "模型"
    d.mkdir()
    t = {"w": torch.arange(6, dtype=torch.float32)}
    save_file(t, str(d / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    for path in ("模型/model.safetensors", "模型"):
        got = weightlift.load_file(path)
        assert torch.equal(got["w"], t["w"]), path
