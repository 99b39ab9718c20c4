"""What the wheel does under hostile or unlucky conditions: nothing hangs,
nothing mixes versions of a file, nothing is silently skipped, nothing
panics into Python, and every misuse is a typed WeightliftError.

Cases that could hang or kill the interpreter run in a subprocess with a
time limit."""

import os
import textwrap
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open as st_safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save_file

import weightlift


def _checkpoint(path, n=8, rows=64):
    tensors = {f"t{i}": torch.full((rows, 256), float(i)) for i in range(n)}
    save_file(tensors, str(path))
    return tensors


def _rewrite_in_place(path, value):
    """Overwrite every tensor byte with `value` as float32, keeping the size
    and the header (past one clock tick of file systems without
    fine-grained timestamps)."""
    time.sleep(0.02)
    with st_safe_open(str(path), "pt") as f:
        names = list(f.keys())
    with open(path, "r+b") as out:
        header_len = int.from_bytes(out.read(8), "little")
        start = 8 + header_len
        size = os.path.getsize(path)
        out.seek(start)
        out.write(np.full((size - start) // 4, value, np.float32).tobytes())
    return names


# -- hangs and crashes -------------------------------------------------------


def test_a_fifo_is_refused_at_once_given_alone_or_in_a_directory(tmp_path, h):
    _checkpoint(tmp_path / "a.safetensors", n=1)
    fifo = tmp_path / "b.safetensors"
    os.mkfifo(fifo)
    code = textwrap.dedent(
        """
        import sys, weightlift
        for source in sys.argv[1:]:
            try:
                weightlift.load_file(source)
            except weightlift.WeightliftIOError as e:
                print("refused:", e)
            else:
                print("loaded", source)
        """
    )
    r = h.run_python(code, fifo, tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert line.startswith("refused:") and "b.safetensors" in line and "FIFO" in line, line


def test_a_pass_used_after_fork_raises_in_the_child_and_the_parent_goes_on(tmp_path, h):
    path = tmp_path / "m.safetensors"
    _checkpoint(path, n=40)
    code = textwrap.dedent(
        """
        import gc, os, sys, weightlift
        path = sys.argv[1]
        f = weightlift.safe_open(path, backend="PREAD_BUFFERED")
        it = f.tensors()
        next(it)
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                own = weightlift.load_file(path)   # the child's own load works
                assert len(own) == 40, len(own)
                try:
                    next(it)
                    print("child: the inherited pass went on")
                    status = 1
                except weightlift.WeightliftError as e:
                    assert "fork" in str(e) and "m.safetensors" in str(e), str(e)
                try:
                    f.get_tensor("t1")
                    status = 1
                except weightlift.WeightliftError:
                    pass
                f.close()      # nothing of the child's to close
                del it, f
                gc.collect()   # dropping the inherited handle waits for no thread
            except BaseException as e:
                print("child:", type(e).__name__, e)
                status = 1
            sys.stdout.flush()
            os._exit(status)
        _, status = os.waitpid(pid, 0)
        rest = sum(1 for _ in it)
        print("child", os.waitstatus_to_exitcode(status), "parent", rest + 1)
        """
    )
    r = h.run_python(code, path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "child 0 parent 40", r.stdout + r.stderr


def test_a_forked_child_exits_cleanly_holding_an_inherited_handle(tmp_path, h):
    path = tmp_path / "m.safetensors"
    _checkpoint(path, n=20)
    code = textwrap.dedent(
        """
        import os, sys, weightlift
        f = weightlift.safe_open(sys.argv[1], backend="PREAD_BUFFERED")
        it = f.tensors()
        next(it)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)    # interpreter shutdown drops the inherited handle
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status), "parent", 1 + sum(1 for _ in it))
        """
    )
    r = h.run_python(code, path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "child 0 parent 20", r.stdout + r.stderr
    assert "Panic" not in r.stderr, r.stderr


# -- wrong or missing data without an error ----------------------------------


@pytest.mark.parametrize("backend", ["PREAD_BUFFERED", "MMAP", None])
def test_a_file_rewritten_after_open_is_an_error_not_new_bytes(tmp_path, backend):
    path = tmp_path / "m.safetensors"
    _checkpoint(path)
    with weightlift.safe_open(path, backend=backend) as f:
        _rewrite_in_place(path, -1.0)
        with pytest.raises(weightlift.WeightliftIOError, match="m.safetensors") as e:
            f.get_tensor("t3")
        assert "modification time" in str(e.value)
        with pytest.raises(weightlift.WeightliftIOError, match="m.safetensors"):
            dict(f.tensors())


def test_a_shard_whose_name_is_not_utf8_is_loaded(tmp_path, h):
    odd = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.safetensors")
    _checkpoint(tmp_path / "a.safetensors", n=2)
    save_file({"other": torch.arange(12.0)}, os.fsdecode(odd))
    got = weightlift.load_file(tmp_path)
    assert sorted(got) == ["other", "t0", "t1"]
    # safetensors refuses such a path; it reads the same bytes given as bytes.
    with open(odd, "rb") as f:
        h.assert_same_tensor(got["other"], st_load(f.read())["other"], "other")


def test_load_into_a_module_on_the_meta_device_raises_naming_the_tensor(tmp_path):
    path = tmp_path / "lin.safetensors"
    save_file({"weight": torch.ones(3, 4)}, str(path))
    with torch.device("meta"):
        m = torch.nn.Linear(4, 3, bias=False)
    with pytest.raises(weightlift.MismatchError, match="'weight'.*meta"):
        weightlift.load_into(m, path)


def test_with_mmap_off_host_tensors_do_not_depend_on_the_file(tmp_path, h):
    path = tmp_path / "m.safetensors"
    expected = _checkpoint(path)
    code = textwrap.dedent(
        """
        import os, sys, torch, weightlift
        path = sys.argv[1]
        got = weightlift.load_file(path, backend=["MMAP", "PREAD_BUFFERED"], mmap=False)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(b"\\xff" * 4096)
            f.truncate(16)       # a mapping would raise SIGBUS when touched
        print(sum(float(t.sum()) for t in got.values()))
        """
    )
    with pytest.raises(weightlift.BackendError, match="MMAP: mapping is turned off"):
        weightlift.load_file(path, backend="MMAP", mmap=False)
    r = h.run_python(code, path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) == sum(float(t.sum()) for t in expected.values())


# -- errors that say too little -----------------------------------------------


def test_misuse_gets_a_typed_error_saying_what_was_wrong(tmp_path):
    path = tmp_path / "m.safetensors"
    _checkpoint(path, n=1, rows=3)
    cases = [
        (lambda: weightlift.safe_open(path, keys=123), weightlift.SettingError, "keys"),
        (lambda: weightlift.safe_open(path, backend=5), weightlift.BackendError, "backend"),
        (lambda: weightlift.safe_open(path, buffer_size=2**63), weightlift.SettingError, "buffer_size"),
        (lambda: weightlift.safe_open(path, buffer_size=2**64), weightlift.SettingError, "buffer_size"),
        (lambda: weightlift.safe_open(path, mmap=1), weightlift.InvalidArgumentError, "mmap"),
        (lambda: weightlift.safe_open(path).get_tensor(None), weightlift.InvalidArgumentError, "NoneType"),
        (lambda: weightlift.safe_open(path).get_slice(3), weightlift.InvalidArgumentError, "int"),
        (lambda: weightlift.load_into({"t0": [0.0] * 768}, path), weightlift.InvalidArgumentError, "'t0' is a list"),
        (
            lambda: weightlift.load_into({"t0": np.zeros((3, 256), np.float32)}, path),
            weightlift.InvalidArgumentError,
            "ndarray",
        ),
        (lambda: weightlift.load_into([1], path), weightlift.InvalidArgumentError, "list"),
    ]
    for call, cls, says in cases:
        with pytest.raises(cls, match=says):
            call()
    f = weightlift.safe_open(path)
    f.close()
    with pytest.raises(weightlift.ClosedError, match="m.safetensors"):
        f.get_tensor("t0")


def test_an_inference_tensor_target_is_refused_outside_inference_mode(tmp_path):
    path = tmp_path / "m.safetensors"
    _checkpoint(path, n=2, rows=3)
    with torch.inference_mode():
        target = torch.zeros(3, 256)
    with pytest.raises(weightlift.MismatchError, match="'t1'.*inference"):
        weightlift.load_into({"t1": target}, path, strict=False)
    assert float(target.sum()) == 0.0
    with torch.inference_mode():
        weightlift.load_into({"t1": target}, path, strict=False)
    assert float(target.sum()) == 3 * 256  # t1 is all ones


def test_load_into_non_strict_leaves_entries_it_does_not_write_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    _checkpoint(path, n=2, rows=3)
    target = {"t1": torch.zeros(3, 256), "other": [0.0], "meta": torch.empty(2, device="meta")}
    missing, unexpected = weightlift.load_into(target, path, strict=False)
    assert (sorted(missing), unexpected) == (["meta", "other"], ["t0"])
    assert float(target["t1"].sum()) == 3 * 256
