"""Checkpoints in S3 (moto's server on loopback) and over HTTP (a range
server in this file), loaded through every API and compared byte for byte
with safetensors' read of the local copy."""

import http.server
import os
import socket
import threading

import pytest
import torch
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save_file

import weightlift
from test_cast import standin  # noqa: F401  (the host device standing in for a GPU)

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
    import json

    weight_map = {k: "model-00001-of-00002.safetensors" for k in a}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in b})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(checkpoint):
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
    """Files with single byte ranges and ETags, as servers send them."""

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
        rng = self.headers.get("Range")
        if self.headers.get("If-Match") not in (None, etag):
            self.send_error(412)
            return
        if rng and rng.startswith("bytes="):
            a, b = rng[6:].split("-")
            a, b = int(a), min(int(b), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {a}-{b}/{len(data)}")
            body = data[a : b + 1]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_root(checkpoint):
    handler = lambda *a, **k: _Ranges(*a, directory=str(checkpoint), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_file_and_index(http_root, checkpoint):
    _same(weightlift.load_file(f"{http_root}/model.safetensors"), st_load_file(str(checkpoint / "model.safetensors")))
    want = {}
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]:
        want.update(st_load_file(str(checkpoint / name)))
    _same(weightlift.load_file(f"{http_root}/model.safetensors.index.json"), want)


def test_http_onto_a_device_through_staging(http_root, checkpoint, standin):
    want = st_load_file(str(checkpoint / "model.safetensors"))
    got = weightlift.load_file(f"{http_root}/model.safetensors", device="cuda:0")
    _same({k: v.cpu() for k, v in got.items()}, want)
