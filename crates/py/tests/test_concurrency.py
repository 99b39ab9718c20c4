"""Threads loading at once, and Ctrl-C during a load."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import weightlift


def _load(ck, how):
    if how == "tensors":
        with weightlift.safe_open(ck.source) as f:
            return dict(f.tensors())
    if how == "get_tensor":
        with weightlift.safe_open(ck.source) as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    if ck.kind == "file":
        return weightlift.load_file(ck.source)
    return weightlift.load(ck.source)


def test_threads_each_loading_a_checkpoint(store, h):
    jobs = [("all_dtypes", "tensors"), ("many_tiny", "load"), ("sharded_index", "get_tensor"), ("large", "tensors"),
            ("unaligned", "load"), ("plain_dir", "tensors"), ("empty_scalar", "get_tensor"), ("metadata", "load")]
    cks = {name: store.get(name) for name, _ in jobs}
    for ck in cks.values():
        ck.expected  # compute the references before the threads start
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(name, how, pool.submit(_load, cks[name], how)) for name, how in jobs]
        results = [(name, how, fut.result(timeout=120)) for name, how, fut in futures]
    for name, how, got in results:
        h.assert_same_dict(got, cks[name].expected, f"{name} via {how} in a thread")


def test_threads_sharing_one_file(store, h):
    ck = store.get("sharded_index")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: weightlift.load(ck.source), range(8)))
    for got in results:
        h.assert_same_dict(got, ck.expected, "same checkpoint in 8 threads")


INTERRUPT_SCRIPT = textwrap.dedent(r"""
    import sys
    import weightlift
    path = sys.argv[1]
    weightlift.load_file(path)  # warm up: the first load is not the one interrupted
    print("started", flush=True)
    while True:
        d = weightlift.load_file(path)
        del d
""")


def test_ctrl_c_interrupts_a_load(tmp_path, h):
    path = tmp_path / "big.safetensors"
    # ~300 MB in 4 tensors, written with the raw writer from one reused buffer.
    chunk = np.arange(75 * (1 << 20) // 4, dtype=np.float32).tobytes()
    n = len(chunk) // 4
    h.write_raw(path, [(f"w{i}", "F32", [n], chunk) for i in range(4)], header_len_mod8=0)
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPT_SCRIPT, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=h.subprocess_env())
    try:
        line = proc.stdout.readline()
        assert line.strip() == "started", f"no 'started': {line!r}; stderr: {proc.stderr.read()[-3000:]}"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            _, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the process did not stop within 10 s of SIGINT")
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # An uncaught KeyboardInterrupt ends Python with -SIGINT (or 1); SIGSEGV, SIGABRT, SIGBUS are crashes.
    assert proc.returncode in (1, -signal.SIGINT, 128 + signal.SIGINT), \
        f"exit status {proc.returncode} (a crash?); stderr:\n{err[-3000:]}"
    assert "KeyboardInterrupt" in err, f"no KeyboardInterrupt in stderr:\n{err[-3000:]}"
    assert took < 10
