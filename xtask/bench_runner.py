#!/usr/bin/env python3
"""One measured load, for `cargo xtask bench`; also its H2D, chart and versions helpers.

The benchmark runs this script in a FRESH PROCESS for every measured load, so
no run inherits another's warm allocator, CUDA context, imported modules,
mapped files or page-cache side effects from within the process (the page
cache itself is the caller's to set up: cold or warm).

Commands (the Rust side depends on them; each prints one JSON line, last):

  load --loader NAME --device cpu|host|cuda:N [--backend B] [--digest] --model MODEL FILE [FILE ...]
      MODEL is the path the user gave (a file, a directory or an index);
      FILEs are its shards, in order. NAME is one of LOADERS below. `host`
      is weightlift's host-memory stand-in for a GPU (a wheel built with
      the test hooks); the other loaders load to the CPU beside it.
      -> {"seconds", "bytes", "tensors", "backend", "peak_rss", "base_rss",
          "peak_gpu", "digest", "checksum"}
  group --ranks N --spec all|tp --device cpu|cuda:0 --model MODEL
      one load by a torch.distributed group of N processes on this machine
      (gloo on the CPU, NCCL on GPUs 0..N-1), every rank loading every
      tensor (all) or its tensor-parallel part (tp, Megatron's layout);
      the clock runs from a barrier to each rank's last tensor
      -> {"seconds": the slowest rank's, "bytes": kept by all ranks,
          "ranks": [{"seconds", "storage_read", "kept", "stats", "checksum"}]}
  h2d --device cuda:N [--sizes N,N,...] [--streams N,N,...]
      host-to-device copy bandwidth, swept: for each size, pinned copies
      split over each number of streams, and one pageable copy; each way
      1 warm-up + 5 copies timed with CUDA events
      -> {"ways": [{"pinned", "bytes", "streams", "rates": [GB/s per copy]}]}
  chart --input SPEC.json --output OUT.png
      horizontal GB/s bars (median, min-max error bars, a dashed limit line)
      -> {"output": OUT.png}
  versions
      -> {package: installed version or null}
  serve --kind s3|http --root DIR [FILE ...]
      a server on 127.0.0.1 for remote loads: s3 is moto's S3 server with
      FILEs (paths under DIR) uploaded to the bucket `bench` under the same
      relative keys; http serves DIR with single byte ranges, ETags and
      If-Match. Prints {"endpoint": URL} once ready, then serves until its
      standard input closes (the bench holds it open for the run)

A loader that cannot run here (not installed, needs a GPU, device not
supported) prints {"unavailable": "why"} and exits with status 3; any other
failure raises (non-zero exit, traceback on stderr).

Method. Imports, argument checks and CUDA context creation happen before the
clock. The clock starts right before the load and stops once every tensor is
really there: on the host, one byte of every 4096-byte page of every tensor
has been read, so a loader that only maps the file (or hands out lazily
faulted memory) pays for the reads it deferred; on a GPU, after
torch.cuda.synchronize. Every tensor is still held in a dict when the clock
stops, so nothing has been freed early. The --digest hash (blake2b-128 over
each name, dtype and shape, then the tensor's bytes, names sorted) is taken after the
clock stops: it checks that every loader read the same bytes without
charging anyone for hashing.
"""

import argparse
import hashlib
import importlib
import json
import os
import re
import sys
import threading
import time

import torch

UNAVAILABLE = 3
PAGE = 4096


class Unavailable(Exception):
    """The loader cannot run here; the message says why, for a user."""


def _require(module, package):
    """Import `module` (from the PyPI `package`), or say it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module.split(".")[0]:
            raise Unavailable(f"{package} not installed: pip install {package}") from None
        raise Unavailable(f"{package} cannot be imported: {e}") from None
    except ImportError as e:
        raise Unavailable(f"{package} cannot be imported: {e}") from None


def _cuda_only(name, device):
    if device == "cpu":
        raise Unavailable(f"{name}: loads to CUDA devices only (device 'cpu' is not supported)")


# Loaders: each one imports and checks what it needs (untimed) and returns
# `load()`, the timed part, which gives ({name: tensor}, backend description).


def _host_standin():
    """Make `device="host"` name weightlift's host-memory stand-in for a GPU,
    as the wheel's own tests do: tensors torch allocates on the CPU, filled
    through registered staging slots with streams and events as on a GPU.
    The device exists only in a wheel built with the test hooks."""
    from weightlift import _api

    real = _api._device
    standin = _api._Gpu(torch.device("cpu"), "host")
    _api._device = lambda d: standin if d == "host" else real(d)


def weightlift(a):
    wl = _require("weightlift", "weightlift")
    if a.weightlift_device == "host":
        _host_standin()

    def load():
        # The streaming API; `f.backend` then names the backend the load used.
        try:
            f = wl.safe_open(a.model, device=a.weightlift_device, backend=a.backend)
        except (wl.DeviceError, wl.UnsupportedError) as e:
            # Refused when opened: no CUDA driver or device here. (Running
            # out of memory during the load is a failure.)
            if a.device == "cpu":
                raise
            raise Unavailable(f"weightlift: {e}") from None
        with f:
            try:
                tensors = dict(f.tensors())
            except wl.BackendError as e:
                # A backend asked for by name that this machine refuses
                # (io_uring disabled, say); the automatic choice must work.
                if a.backend is None:
                    raise
                raise Unavailable(f"weightlift {a.backend}: {e}") from None
            # "backend MMAP (queue depth 16, ...), files Cached": the name is the row's.
            return tensors, f.backend.removeprefix("backend ").split(" (")[0].split(",")[0]

    return load


def safetensors_load_file(a):
    st = _require("safetensors.torch", "safetensors")

    def load():
        tensors = {}
        for path in a.files:
            tensors.update(st.load_file(path, device=a.device))
        return tensors, "safetensors load_file"

    return load


def safetensors_safe_open(a):
    st = _require("safetensors", "safetensors")

    def load():
        tensors = {}
        for path in a.files:
            with st.safe_open(path, framework="pt", device=a.device) as h:
                for k in h.keys():
                    tensors[k] = h.get_tensor(k)
        return tensors, "safetensors safe_open"

    return load


def fastsafetensors(a):
    fst = _require("fastsafetensors", "fastsafetensors")

    def load():
        # nogds: a thread pool preads each file (O_DIRECT on local disks)
        # through host bounce buffers into one buffer per file on the device
        # (malloc'd for the host). Tensors are views that share ownership of
        # that buffer and stay valid after the `with` closes: nothing to clone.
        with fst.fastsafe_open(filenames=list(a.files), framework="pt", device=a.device, nogds=True) as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return tensors, "fastsafetensors nogds"

    return load


def runai(a):
    if any(f.startswith(("http://", "https://")) for f in a.files):
        raise Unavailable("Run:ai streamer: reads local files and s3://, gs:// and az:// objects, not HTTP URLs")
    rms = _require("runai_model_streamer", "runai-model-streamer")
    if any(f.startswith("s3://") for f in a.files):
        _require("runai_model_streamer_s3", "runai-model-streamer-s3")
    import inspect

    # From 0.17, stream_files(owned=True) (the default) hands every host tensor
    # over: its ring slot is replaced, never written again. Before, host
    # tensors were views into one buffer the streamer refills once the
    # checkpoint exceeds RUNAI_STREAMER_MEMORY_LIMIT, so a user who keeps
    # them must clone each one as it arrives.
    owned = "owned" in inspect.signature(rms.SafetensorsStreamer.stream_files).parameters
    clone = a.device == "cpu" and not owned

    def load():
        tensors = {}
        with rms.SafetensorsStreamer() as s:
            # For a GPU the streamer reads into its host ring and yields each
            # tensor `.to(device)` itself (the copy vLLM's weight loader makes),
            # reusing the ring since the host copy is never handed out.
            s.stream_files(list(a.files), device=a.device, **({"owned": True} if owned else {}))
            for name, t in s.get_tensors():
                tensors[name] = t.clone() if clone else t
        return tensors, "runai"

    return load


def instanttensor(a):
    _cuda_only("instanttensor", a.device)
    it = _require("instanttensor", "instanttensor")

    def load():
        tensors = {}
        # copy=True: each tensor is cloned out of the GPU ring and owns its memory.
        with it.safe_open(list(a.files), framework="pt", device=a.device, copy=True) as f:
            for name, t in f.tensors():
                tensors[name] = t
            return tensors, f"instanttensor {f.backend.name}"

    return load


LOADERS = {
    f.__name__: f
    for f in (weightlift, safetensors_load_file, safetensors_safe_open, fastsafetensors, runai, instanttensor)
}


def _proc_status(field):
    """A /proc/self/status field (kB there), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _cuda_ready(device, who):
    """Create the CUDA context (untimed), or say why there is none."""
    if not torch.cuda.is_available():
        raise Unavailable(f"{who}: needs CUDA (no GPU visible)")
    index = torch.device(device).index
    if index >= torch.cuda.device_count():
        raise Unavailable(f"{who}: no {device} (only {torch.cuda.device_count()} GPU(s) visible)")
    torch.cuda.init()
    torch.cuda.set_device(device)  # streams and events without a device argument use it
    torch.zeros(1, device=device)
    torch.cuda.synchronize(device)


class _GpuPeak:
    """Device memory used by the load: mem_get_info polled every ~2 ms (sees
    every allocator) and torch's own max_memory_allocated; the larger."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.allocated0 = torch.cuda.memory_allocated(self.device)
        self.used0 = self.peak = self._used()

    def _used(self):
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _poll(self):
        while not self.stop_flag.wait(0.002):
            self.peak = max(self.peak, self._used())

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_flag.set()
        self.thread.join()
        self.peak = max(self.peak, self._used())
        allocated = torch.cuda.max_memory_allocated(self.device) - self.allocated0
        return max(self.peak - self.used0, allocated, 0)


def _settle(tensors, device):
    """Make the load real before the clock stops; returns the page checksum."""
    want = torch.device(device)
    s = 0
    for name, t in tensors.items():
        if t.device != want:
            raise RuntimeError(f"{name} is on {t.device}, not {want}")
        if t.device.type == "cpu" and t.numel() > 0:
            b = t.detach().reshape(-1).contiguous().view(torch.uint8)
            s += int(b[::PAGE].sum()) + int(b[-1])  # every page, the last one too
    if want.type == "cuda":
        torch.cuda.synchronize(want)
    return s


def _digest(tensors):
    """A hash of every tensor: its name, dtype and shape, then its bytes (a
    loader that returns the right bytes under the wrong type or shape
    disagrees). The bytes are hashed tensor by tensor on every core
    (hashlib lets go of the GIL), so checking a checkpoint of many GiB
    costs seconds, not minutes."""
    from concurrent.futures import ThreadPoolExecutor

    def one(name):
        t = tensors[name]
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.digest()

    whole = hashlib.blake2b(digest_size=16)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for d in pool.map(one, sorted(tensors)):
            whole.update(d)
    return whole.hexdigest()


def cmd_load(a):
    a.weightlift_device = a.device
    if a.device == "host":
        # Every tensor the stand-in hands out is a CPU tensor.
        a.device = "cpu"
    if a.device != "cpu":
        _cuda_ready(a.device, a.loader)
    load = LOADERS[a.loader](a)
    gpu = _GpuPeak(a.device) if a.device != "cpu" else None
    if gpu:
        gpu.start()
    base_rss = _proc_status("VmRSS")
    t0 = time.perf_counter()
    tensors, backend = load()
    checksum = _settle(tensors, a.device)
    seconds = time.perf_counter() - t0
    peak_gpu = gpu.stop() if gpu else None
    peak_rss = _proc_status("VmHWM")
    return {
        "seconds": seconds,
        "bytes": sum(t.nbytes for t in tensors.values()),
        "tensors": len(tensors),
        "backend": backend,
        "peak_rss": peak_rss,
        "base_rss": base_rss,
        "peak_gpu": peak_gpu,
        "digest": _digest(tensors) if a.digest else None,
        "checksum": checksum,
    }


def _copy_rates(device, size, streams, pinned, reps=6):
    """GB/s of host-to-device copies of `size` bytes split over `streams`
    streams, from pinned or pageable host memory, timed with CUDA events
    (the first of `reps` is a warm-up)."""
    host = torch.empty(size, dtype=torch.uint8, pin_memory=pinned).fill_(1)
    dev = torch.empty(size, dtype=torch.uint8, device=device)
    side = [torch.cuda.Stream(device) for _ in range(streams)]
    current = torch.cuda.current_stream(device)
    chunk = -(-size // streams)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    rates = []
    for i in range(reps):
        start.record(current)
        for k, s in enumerate(side):
            s.wait_stream(current)
            with torch.cuda.stream(s):
                dev[k * chunk:(k + 1) * chunk].copy_(host[k * chunk:(k + 1) * chunk], non_blocking=True)
        for s in side:
            current.wait_stream(s)
        end.record(current)
        end.synchronize()
        if i:
            rates.append(size / (start.elapsed_time(end) / 1e3) / 1e9)
    if not torch.equal(dev[-1:].cpu(), host[-1:]):
        raise RuntimeError("the copy did not arrive")
    del host, dev
    return rates


def cmd_h2d(a):
    """The host-to-device copy's limit, found as for storage: a sweep of
    copy sizes and stream counts from pinned memory (and, for reference,
    from pageable memory), every way's rates."""
    _cuda_ready(a.device, "h2d")
    ways = []
    for size in a.sizes:
        for streams in a.streams:
            ways.append({"pinned": True, "bytes": size, "streams": streams,
                         "rates": _copy_rates(a.device, size, streams, True)})
        ways.append({"pinned": False, "bytes": size, "streams": 1,
                     "rates": _copy_rates(a.device, size, 1, False)})
    return {"ways": ways}


def cmd_chart(a):
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise Unavailable("matplotlib not installed: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(a.input) as f:
        spec = json.load(f)
    panels = [(p, [r for r in p["rows"] if r.get("median") is not None]) for p in spec["panels"]]
    heights = [max(len(rows), 1) * 0.45 + 1.1 for _, rows in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, sum(heights) + 0.6), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, (panel, rows) in zip(axes[:, 0], panels):
        ax.set_title(panel["title"], loc="left", fontsize=11)
        ax.set_xlabel("GB/s")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        limit = panel.get("limit")
        if not rows:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        med = [r["median"] for r in rows]
        lo = [r["median"] - (r.get("min") if r.get("min") is not None else r["median"]) for r in rows]
        hi = [(r.get("max") if r.get("max") is not None else r["median"]) - r["median"] for r in rows]
        colors = ["#1f6fb4" if r["name"].startswith("weightlift") else "#9aa5b1" for r in rows]
        y = range(len(rows))
        ax.barh(y, med, xerr=[lo, hi], color=colors, height=0.6, capsize=3,
                error_kw={"elinewidth": 1, "ecolor": "#333"})
        ax.set_yticks(list(y), [r["name"] for r in rows])
        ax.invert_yaxis()
        right = max(m + h for m, h in zip(med, hi))
        if limit:
            ax.axvline(limit["gbps"], color="#c0392b", linestyle="--", linewidth=1.5,
                       label=f"{limit['name']} ({limit['gbps']:.1f} GB/s)")
            ax.legend(loc="lower right", bbox_to_anchor=(1, 1), fontsize=9, frameon=False, borderaxespad=0.2)
            right = max(right, limit["gbps"])
        for i, (m, h) in enumerate(zip(med, hi)):
            ax.text(m + h + right * 0.01, i, f"{m:.2f}", va="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        ax.set_xlim(0, right * 1.12)
    fig.suptitle(spec.get("title", ""), fontsize=13, fontweight="bold")
    fig.tight_layout()
    fig.savefig(a.output, dpi=120)
    return {"output": a.output}


def cmd_versions(_a):
    from importlib import metadata

    out = {}
    for name in ("torch", "safetensors", "weightlift", "fastsafetensors",
                 "runai-model-streamer", "runai-model-streamer-s3", "instanttensor", "matplotlib", "moto"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _range_server(root, bucket=None):
    """A threaded HTTP/1.1 server of the files under `root`: GET and HEAD,
    one byte range per request (206 with Content-Range), a strong ETag and
    Last-Modified, If-Match answered with 412; bodies sent with sendfile, so
    the server costs little CPU next to the loaders on a small machine."""
    import email.utils
    import http.server

    root = os.path.realpath(root)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _file(self):
            target = self.path
            if target.startswith(("http://", "https://")):
                # The absolute form (RFC 9112, 3.2.2), which the AWS CRT sends.
                target = "/" + target.split("://", 1)[1].partition("/")[2]
            rel = target.split("?", 1)[0].lstrip("/")
            if bucket is not None:
                # S3 path-style addressing: /BUCKET/KEY.
                head, _, rel = rel.partition("/")
                if head != bucket:
                    return None, None
            path = os.path.realpath(os.path.join(root, rel))
            if not path.startswith(root + os.sep) or not os.path.isfile(path):
                return None, None
            return path, os.stat(path)

        def _answer(self, body):
            path, st = self._file()
            if path is None:
                self.send_error(404)
                return
            size = st.st_size
            etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
            if self.headers.get("If-Match") not in (None, etag, "*"):
                self.send_error(412)
                return
            start, end = 0, size - 1
            rng = self.headers.get("Range")
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
            if rng and m:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if body and end >= start:
                with open(path, "rb") as f:
                    self.wfile.flush()
                    self.connection.sendfile(f, start, end - start + 1)

        def do_GET(self):
            self._answer(True)

        def do_HEAD(self):
            self._answer(False)

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    return Server(("127.0.0.1", 0), Handler)


def cmd_serve(a):
    """Serve until standard input closes; the endpoint is printed first."""
    if a.kind in ("http", "s3-range"):
        server = _range_server(a.root, "bench" if a.kind == "s3-range" else None)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    else:
        import socket

        moto_server = _require("moto.server", "moto[server]")
        boto3 = _require("boto3", "boto3")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        import logging

        # A log line per request would cost the server time the loads wait for.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        for f in a.files:
            key = os.path.relpath(f, a.root)
            if key.startswith(".."):
                raise ValueError(f"{f} is not under {a.root}")
            client.upload_file(f, "bench", key)
    print(json.dumps({"endpoint": endpoint}), flush=True)
    sys.stdin.read()
    return None


def _tensor_parallel(name):
    """The dimension a tensor-parallel layout splits a Llama-shaped model's
    tensor along (Megatron's): column-parallel projections and the
    embedding and head by rows (dim 0), row-parallel ones by columns (dim
    1); norms whole (None)."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
        return 0
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        return 1
    if name.endswith(("embed_tokens.weight", "lm_head.weight")):
        return 0
    return None


def _storage_reads():
    """Bytes this process has had read from storage (/proc/self/io)."""
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("read_bytes:")).split()[1])


def cmd_group_rank(a):
    import datetime

    import torch.distributed as dist

    wl = _require("weightlift", "weightlift")
    backend = "nccl" if a.device != "cpu" else "gloo"
    if a.device != "cpu":
        _cuda_ready(a.device, "weightlift group")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank,
                            world_size=a.ranks, timeout=datetime.timedelta(seconds=120))
    shard = _tensor_parallel if a.spec == "tp" else None
    # Untimed: every rank is up, imports done.
    dist.barrier()
    read0 = _storage_reads()
    t0 = time.perf_counter()
    with wl.safe_open(a.model, device=a.device, process_group=dist.group.WORLD, shard=shard) as f:
        tensors = f.get_tensors()
        stats = f.group_stats()
    checksum = _settle(tensors, a.device)
    seconds = time.perf_counter() - t0
    read = _storage_reads() - read0
    dist.barrier()
    dist.destroy_process_group()
    return {"seconds": seconds, "storage_read": read, "kept": sum(t.nbytes for t in tensors.values()),
            "stats": stats[a.rank], "checksum": checksum}


def cmd_group(a):
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(a.ranks):
        device = a.device if a.device == "cpu" else f"cuda:{r}"
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "group-rank", "--rank", str(r), "--ranks", str(a.ranks), "--port", str(port),
             "--spec", a.spec, "--device", device, "--model", a.model],
            stdout=subprocess.PIPE, text=True))
    ranks = []
    for r, p in enumerate(procs):
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"rank {r} failed with status {p.returncode}")
        ranks.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": max(x["seconds"] for x in ranks), "ranks": ranks,
            "bytes": sum(x["kept"] for x in ranks)}


def _device(s):
    if not re.fullmatch(r"cpu|cuda:\d+", s):
        raise argparse.ArgumentTypeError(f"device must be cpu or cuda:N, not {s!r}")
    return s


def _load_device(s):
    # `host`: weightlift's host-memory stand-in for a GPU (a wheel built
    # with the test hooks); the other loaders load to the CPU beside it.
    return s if s == "host" else _device(s)


def _list(kind):
    def parse(s):
        try:
            values = [kind(v) for v in s.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, not {s!r}") from None
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected positive values, not {s!r}")
        return values
    return parse


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="one measured load")
    load.add_argument("--loader", required=True, choices=sorted(LOADERS))
    load.add_argument("--device", required=True, type=_load_device)
    load.add_argument("--backend", help="weightlift only: a backend name (default: its automatic choice)")
    load.add_argument("--digest", action="store_true", help="hash every tensor after the clock stops")
    load.add_argument("--model", required=True, help="the path the user gave")
    load.add_argument("files", nargs="+", help="the shard files, in order")
    h2d = sub.add_parser("h2d", help="host-to-device copy bandwidth: a sweep of sizes and streams")
    h2d.add_argument("--device", required=True, type=_device)
    h2d.add_argument("--sizes", type=_list(int), default=[1 << 20, 16 << 20, 256 << 20, 1 << 30])
    h2d.add_argument("--streams", type=_list(int), default=[1, 2, 4])
    group = sub.add_parser("group", help="one measured load by a torch.distributed group on this machine")
    group.add_argument("--ranks", required=True, type=int)
    group.add_argument("--spec", required=True, choices=["all", "tp"])
    group.add_argument("--device", required=True, type=_device)
    group.add_argument("--model", required=True)
    rank = sub.add_parser("group-rank", help="one rank of `group` (run by it)")
    rank.add_argument("--rank", required=True, type=int)
    rank.add_argument("--ranks", required=True, type=int)
    rank.add_argument("--port", required=True, type=int)
    rank.add_argument("--spec", required=True, choices=["all", "tp"])
    rank.add_argument("--device", required=True, type=_device)
    rank.add_argument("--model", required=True)
    chart = sub.add_parser("chart", help="draw a GB/s chart")
    chart.add_argument("--input", required=True)
    chart.add_argument("--output", required=True)
    sub.add_parser("versions", help="installed versions of torch, the loaders and matplotlib")
    serve = sub.add_parser("serve", help="an S3 (moto) or HTTP range server on loopback, until stdin closes")
    serve.add_argument("--kind", required=True, choices=["s3", "s3-range", "http"])
    serve.add_argument("--root", required=True, help="the directory served (http) or uploaded from (s3)")
    serve.add_argument("files", nargs="*", help="s3: the files to upload, under --root")
    return p


def main():
    p = _parser()
    a = p.parse_args()
    if a.command == "load" and a.backend and a.loader != "weightlift":
        p.error("--backend is for --loader weightlift only")
    command = {"load": cmd_load, "h2d": cmd_h2d, "group": cmd_group, "group-rank": cmd_group_rank,
               "chart": cmd_chart, "versions": cmd_versions, "serve": cmd_serve}[a.command]
    try:
        result = command(a)
    except Unavailable as e:
        print(json.dumps({"unavailable": str(e)}), flush=True)
        sys.exit(UNAVAILABLE)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
