#!/usr/bin/env bash
# The GPU proof in one command, on a machine with a GPU, Python and torch but
# no Rust toolchain and no package index. `cargo xtask device-bundle` builds
# the folder this script runs from; this script
#
#   1. installs the bundle's wheels (weightlift's, the peers') into a private
#      PYTHONPATH with pip's --target and no index;
#   2. records the machine (GPU, driver, CUDA, torch, CPUs, memory, storage);
#   3. runs the GPU crate's Rust tests, the Rust example loading onto the
#      device, and `pytest -m gpu`, with WEIGHTLIFT_REQUIRE_GPU=1 on a GPU;
#   4. benches with `xtask bench --installed`, every loader's tensors compared
#      with safetensors' (--verify), each beside the limits measured in the
#      same run (the host-to-device copy swept over sizes and streams, pinned
#      and pageable; the storage's ceiling swept as fio would; a memory copy):
#        shm      a Llama-shaped bf16 checkpoint in /dev/shm, warm;
#        tensors  a checkpoint of 100,000 tiny tensors in /dev/shm, warm;
#        disk     a Llama-shaped checkpoint on disk, cold (evicted, checked);
#      weightlift's automatic choice and CUFILE, InstantTensor,
#      fastsafetensors, the Run:ai streamer and safetensors in each.
#
# Under $OUT (default ./device-out), at most four files: run.log (everything
# printed), machine.txt, summary.md (each stage's outcome and each bench's
# table) and results.tar.gz (each bench's summary.md, raw.jsonl and
# chart.png, and every log). They are rewritten after every stage, so a run
# cut short keeps what it finished. The exit status is 0 only if every stage
# passed.
#
# Settings, from the environment:
#   WL_DEVICE     cuda:0 (default), or host: weightlift's host-memory stand-in
#                 for a GPU (a bundle built with --test-hooks), the other
#                 loaders onto the CPU; how CI runs this script
#   WL_PYTHON     the Python with torch and safetensors (python3)
#   WL_STAGES     which stages, in order (tests shm tensors disk)
#   WL_SHM_SIZE   the warm checkpoint (16GiB), in WL_SHM_DIR (/dev/shm/weightlift)
#   WL_DISK_SIZE  the cold checkpoint (8GiB), in WL_DISK_DIR (beside the bundle)
#   WL_TENSORS    the per-tensor checkpoint's tensors (100000)
#   WL_REPS       timed loads per loader and stage (2)
#   WL_LIMIT_<STAGE>  seconds a stage may take (TESTS 100, SHM 160, TENSORS 60,
#                 DISK 160: eight minutes in all, with the install) before it
#                 is stopped and counted as failed; a bench stopped part-way
#                 leaves its log but no table
set -uo pipefail

BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${OUT:-$PWD/device-out}
DEVICE=${WL_DEVICE:-cuda:0}
PY=${WL_PYTHON:-python3}
STAGES=${WL_STAGES:-tests shm tensors disk}
SHM_DIR=${WL_SHM_DIR:-/dev/shm/weightlift}
DISK_DIR=${WL_DISK_DIR:-$(dirname "$BUNDLE")/weightlift-disk}
SHM_SIZE=${WL_SHM_SIZE:-16GiB}
DISK_SIZE=${WL_DISK_SIZE:-8GiB}
TENSORS=${WL_TENSORS:-100000}
REPS=${WL_REPS:-2}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weightlift-device.XXXXXX")
# However the run ends, the generated checkpoints (16 GiB of /dev/shm by
# default) go with it.
trap 'rm -rf "$SHM_DIR" "$DISK_DIR"' EXIT
exec > >(tee -a "$OUT/run.log") 2>&1

XTASK=$BUNDLE/bin/xtask
# The bench finds its runner (xtask/bench_runner.py) under the bundle.
export WEIGHTLIFT_ROOT=$BUNDLE
export PYTHONUNBUFFERED=1
case $DEVICE in
cuda:*) export WEIGHTLIFT_REQUIRE_GPU=1 ;;
host) ;;
*)
    echo "WL_DEVICE=$DEVICE: expected cuda:N or host" >&2
    exit 2
    ;;
esac

outcomes=()
failed=0

# Everything so far into $OUT: summary.md and results.tar.gz.
pack() {
    {
        echo "# weightlift device run: $DEVICE"
        echo
        head -n 1 "$BUNDLE/MANIFEST"
        echo
        echo "## Stages"
        echo
        for o in "${outcomes[@]}"; do echo "- $o"; done
        for s in $STAGES; do
            if [ -f "$WORK/$s/summary.md" ]; then
                echo
                echo "## Stage $s"
                echo
                sed 's/^#/##/' "$WORK/$s/summary.md"
            fi
        done
    } >"$OUT/summary.md"
    cp "$WORK/machine.txt" "$OUT/machine.txt" 2>/dev/null
    tar -czf "$OUT/results.tar.gz.part" -C "$WORK" --exclude=site . &&
        mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
}

# stage NAME SECONDS FUNCTION: run it within SECONDS, log and record it.
stage() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "==> $name (at most ${limit} s)"
    local t0=$SECONDS rc
    # The stage runs in its own shell, so that timeout can stop it and
    # everything it started.
    timeout --kill-after=15 "$limit" bash -c "$*"
    rc=$?
    local took=$((SECONDS - t0))
    if [ $rc -eq 0 ]; then
        outcomes+=("$name: passed in $took s")
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        outcomes+=("$name: STOPPED after $took s (limit $limit s)")
        failed=1
    else
        outcomes+=("$name: FAILED (exit $rc) after $took s")
        failed=1
    fi
    pack
    return $rc
}

install() {
    local site=$WORK/site
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$BUNDLE"/wheels/weightlift-*.whl || return 1
    local w
    for w in "$BUNDLE"/wheels/peers/*.whl; do
        [ -e "$w" ] || continue
        "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$site" "$w" ||
            echo "note: $(basename "$w") does not install here; its rows will say so"
    done
}

machine() {
    {
        echo "date: $(date -u +%FT%TZ)"
        echo "kernel: $(uname -srm)"
        echo "cpus: $(nproc)"
        grep -m1 'model name' /proc/cpuinfo
        free -g
        echo
        if command -v nvidia-smi >/dev/null; then
            nvidia-smi
            nvidia-smi --format=csv --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max,pcie.link.gen.current,pcie.link.width.current,clocks.max.sm,clocks.max.mem
        else
            echo "no nvidia-smi"
        fi
        echo
        "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0])
print("torch", torch.__version__, "cuda", torch.version.cuda, "hip", torch.version.hip)
print("gpus", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
EOF
        "$PY" "$BUNDLE/xtask/bench_runner.py" versions
        echo "libcufile: ${CUFILE_LIB:-not found}"
        echo
        df -h "$BUNDLE" /dev/shm
        findmnt -T "$BUNDLE" || true
        lsblk -o NAME,SIZE,ROTA,TYPE,MOUNTPOINT,MODEL 2>/dev/null || true
        for q in /sys/block/*/queue; do
            echo "$q: rotational=$(cat "$q/rotational" 2>/dev/null) max_sectors_kb=$(cat "$q/max_sectors_kb" 2>/dev/null) nr_requests=$(cat "$q/nr_requests" 2>/dev/null)"
        done
    } >"$WORK/machine.txt" 2>&1
    cat "$WORK/machine.txt"
}

rust_tests() {
    local t rc=0
    mkdir -p "$WORK/tests"
    for t in "$BUNDLE"/rust-tests/*; do
        echo "--- $(basename "$t")"
        "$t" --test-threads=1 2>&1 | tee "$WORK/tests/rust-$(basename "$t").log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
    done
    # A Rust program loading onto the device on its own.
    "$XTASK" gen --out "$WORK/tiny" --size 64MiB --shards 2 >/dev/null || return 1
    echo "--- load_to_device $DEVICE"
    "$BUNDLE/bin/load_to_device" "$WORK/tiny" "$DEVICE" >"$WORK/tests/load_to_device.log" 2>&1 || {
        tail -5 "$WORK/tests/load_to_device.log"
        rc=1
    }
    tail -2 "$WORK/tests/load_to_device.log"
    return $rc
}

py_tests() {
    mkdir -p "$WORK/tests"
    (cd "$BUNDLE/crates/py" &&
        "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs tests --junitxml="$WORK/tests/pytest-gpu.xml")
}

tests() {
    local rc=0
    rust_tests || rc=1
    py_tests || rc=1
    return $rc
}

# bench NAME MODEL [ARGS...]: one `xtask bench` into $WORK/NAME.
bench() {
    local name=$1 model=$2
    shift 2
    "$XTASK" bench --installed --python "$PY" --device "$DEVICE" --model "$model" \
        --reps "$REPS" --verify --out "$WORK/$name" "$@"
}

# generated NAME DIR "GEN ARGS" BENCH ARGS...: write a checkpoint into DIR
# (`xtask gen` with GEN ARGS), bench it as NAME, and remove it.
generated() {
    local name=$1 dir=$2 gen=$3 rc
    shift 3
    # shellcheck disable=SC2086 # GEN ARGS are words
    "$XTASK" gen --out "$dir" $gen >/dev/null || return 1
    bench "$name" "$dir" "$@"
    rc=$?
    rm -rf "$dir"
    return $rc
}

shm() { generated shm "$SHM_DIR/llama" "--size $SHM_SIZE" --warm --backends CUFILE; }
per_tensor() { generated tensors "$SHM_DIR/tensors" "--tensors $TENSORS" --warm --backends none; }
disk() { generated disk "$DISK_DIR/llama" "--size $DISK_SIZE" --cold --backends CUFILE; }

export BUNDLE OUT DEVICE PY SHM_DIR DISK_DIR SHM_SIZE DISK_SIZE TENSORS REPS WORK XTASK
export -f install rust_tests py_tests tests bench generated shm per_tensor disk

echo "weightlift device run: bundle $BUNDLE, device $DEVICE, stages: $STAGES, out $OUT"
stage install 120 install || {
    echo "the wheels did not install: nothing else can run"
    exit 1
}
export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
# cuFile, where its pip package is (the loader finds libcufile at run time).
CUFILE_LIB=$("$PY" - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    for base in nvidia.__path__:
        for f in glob.glob(os.path.join(base, "*", "lib", "libcufile.so*")):
            print(os.path.dirname(f))
            raise SystemExit
except ImportError:
    pass
EOF
)
if [ -n "$CUFILE_LIB" ]; then
    export LD_LIBRARY_PATH=$CUFILE_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
machine
pack

for s in $STAGES; do
    case $s in
    tests) stage tests "${WL_LIMIT_TESTS:-100}" tests ;;
    shm) stage shm "${WL_LIMIT_SHM:-160}" shm ;;
    tensors) stage tensors "${WL_LIMIT_TENSORS:-60}" per_tensor ;;
    disk) stage disk "${WL_LIMIT_DISK:-160}" disk ;;
    *)
        outcomes+=("$s: FAILED (no such stage; expected tests, shm, tensors or disk)")
        failed=1
        ;;
    esac
done
pack
echo
cat "$OUT/summary.md"
# Let tee write the last lines to run.log before leaving.
exec >&- 2>&-
wait
exit $failed
