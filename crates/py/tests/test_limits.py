"""Memory limits: a header too large for the memory the process may have.

A header of 1,000,000 tiny tensors (69 MB of JSON) is opened in a child
process whose address space (RLIMIT_AS) leaves only a little room above what
it already maps. The child must end with an exception it can catch (a
WeightliftMemoryError naming the file and the bytes asked for, or Python's
MemoryError), exit normally and promptly: never die by a signal, panic into
Python, or hang.
"""

import json
import struct
import subprocess
import sys
import textwrap

import pytest

TENSORS = 1_000_000
MB = 1 << 20
# Each child opens the file in about a second; far longer is a hang.
TIMEOUT = 60

CHILD = textwrap.dedent(r"""
    import json, resource, sys
    path, with_torch, case, extra = sys.argv[1], sys.argv[2] == "torch", sys.argv[3], int(sys.argv[4])
    if with_torch:
        import torch
    import weightlift

    def vm_size():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    _, hard = resource.getrlimit(resource.RLIMIT_AS)

    def limit(extra):
        # The soft limit only: it can be raised again up to the hard one.
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + extra, hard))

    def unlimit():
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    def outcome(call):
        try:
            value = call()
        except BaseException as e:
            unlimit()
            return {"exc": type(e).__name__, "msg": str(e)[:500],
                    "memory": isinstance(e, MemoryError),
                    "weightlift": isinstance(e, weightlift.WeightliftError)}
        unlimit()
        return {"ok": len(value) if value is not None else None}

    out = {}
    if case == "safe_open":
        def opened():
            with weightlift.safe_open(path) as f:
                return f.keys()
        limit(extra)
        out["call"] = outcome(opened)
    elif case == "load_file":
        limit(extra)
        out["call"] = outcome(lambda: weightlift.load_file(path))
    else:
        # Opened with room to spare; then lists and dicts are built under
        # a limit too tight for them.
        with weightlift.safe_open(path) as f:
            for name in ["keys", "offset_keys", "metadata"]:
                limit(extra)
                out[name] = outcome(getattr(f, name))
            out["after"] = len(f.keys())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """A valid file of TENSORS one-byte tensors, and its header's length."""
    entries = ",".join(
        '"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1) for i in range(TENSORS)
    )
    header = ('{"__metadata__":{"format":"pt"},' + entries + "}").encode()
    path = tmp_path_factory.mktemp("limits") / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.write(bytes(TENSORS))
    return path, len(header)


def run_child(h, path, torch, case, extra):
    cmd = [sys.executable, "-c", CHILD, str(path), torch, case, str(extra)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=h.subprocess_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{case} under a memory limit hung (no exit in {TIMEOUT} s); stderr: {e.stderr!r:.2000}")
    assert done.returncode == 0, (
        f"{case} under a memory limit ended with status {done.returncode} "
        f"(a negative status is a signal); stderr:\n{done.stderr[-3000:]}"
    )
    assert "panicked" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_refused(got, path, header_len):
    """A typed error naming the file and the memory asked for."""
    assert "exc" in got, f"expected a refusal, got {got}"
    assert got["exc"] == "WeightliftMemoryError", got
    assert got["memory"] and got["weightlift"], got
    assert str(path) in got["msg"], got
    assert f"header of {header_len} bytes needs about" in got["msg"], got


@pytest.mark.parametrize("torch", ["torch", "no-torch"])
@pytest.mark.parametrize("case", ["safe_open", "load_file"])
@pytest.mark.parametrize("extra_mb", [50, 300])
def test_open_under_a_memory_limit_is_an_exception(h, huge, torch, case, extra_mb):
    # 50 MB is too little for the header's text itself; 300 MB holds the
    # text but not what parsing a million entries builds.
    path, header_len = huge
    got = run_child(h, path, torch, case, extra_mb * MB)
    check_refused(got["call"], path, header_len)


@pytest.mark.parametrize("torch", ["torch", "no-torch"])
@pytest.mark.parametrize("extra_mb", [4, 80])
def test_python_lists_under_a_memory_limit_are_memory_errors(h, huge, torch, extra_mb):
    # 4 MB is less than the list of a million names needs (8 MB of
    # pointers alone): building it must raise MemoryError. 80 MB is about
    # what the list and its strings take: it may be built or refused, but
    # only with MemoryError. Either way the handle stays usable once memory
    # is available again.
    path, _ = huge
    got = run_child(h, path, torch, "lists", extra_mb * MB)
    for name in ["keys", "offset_keys"]:
        if extra_mb == 4:
            assert got[name].get("exc") == "MemoryError", got
        else:
            assert got[name] == {"ok": TENSORS} or got[name].get("exc") == "MemoryError", got
    assert got["metadata"] == {"ok": 1} or got["metadata"].get("exc") == "MemoryError", got
    assert got["after"] == TENSORS, got

