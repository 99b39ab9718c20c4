//! Failures while reading: an injected read error, a file truncated or
//! replaced, a missing file, a cancelled load. Each gives a typed error
//! naming the file, returns promptly, and leaves no descriptor or mapping
//! behind.
//!
//! One test function runs every case in sequence, so that counting the
//! process's open descriptors and mappings is not disturbed by other tests.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use weightlift::host;
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, Engine, EngineOptions, Error, InjectedFault, Region};
use weightlift_plan::Selection;

/// Open descriptors of this process, its regions (anonymous memory and
/// file mappings made by the engine), and its mappings of files in `dir`.
fn resources(dir: &Scratch) -> (usize, usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let dir = dir.0.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .count();
    (fds, Region::live(), maps)
}

/// Run `f` on another thread; fail if it takes longer than a minute.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: no result within a minute (hung?)"))
}

fn small_options() -> EngineOptions {
    EngineOptions {
        queue_depth: 4,
        slot_size: 16 << 10,
        ring_bytes: 64 << 10,
        threads: 2,
        ..EngineOptions::default()
    }
}

fn checkpoint(dir: &Scratch, name: &str, sizes: &[u64], seed: u64) -> (PathBuf, Arc<Checkpoint>) {
    let path = dir.0.join(name);
    write_shard(&path, "t.", sizes, seed);
    let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
    (path, ckpt)
}

const SIZES: &[u64] = &[100_000, 3, 250_000, 77_777, 0, 40_000];

fn injected_read_error(backend: Backend, dir: &Scratch) {
    let (path, ckpt) = checkpoint(dir, &format!("inject-{backend}.safetensors"), SIZES, 1);
    let opts = EngineOptions {
        fault: Some(InjectedFault {
            file: 0,
            nth: 3,
            errno: libc::EIO,
        }),
        ..only(backend, &small_options())
    };
    let staged = {
        let (ckpt, opts) = (ckpt.clone(), opts.clone());
        within_a_minute("staged", move || {
            load_staged(&ckpt, &Selection::All, &opts, 2).err()
        })
    };
    match staged {
        Some(Error::Read { file, source, .. }) => {
            assert_eq!(file, path, "{backend}");
            assert_eq!(source.raw_os_error(), Some(libc::EIO), "{backend}");
        }
        other => panic!("{backend} staged: expected a read error, got {other:?}"),
    }
    if backend == Backend::Mmap {
        return; // host loads through a mapping issue no reads to fail
    }
    let hosted = {
        let (ckpt, opts) = (ckpt.clone(), opts.clone());
        within_a_minute("host", move || {
            load_host(&ckpt, &Selection::All, &opts).err()
        })
    };
    let e = hosted.unwrap_or_else(|| panic!("{backend} host: the injected error was lost"));
    assert_eq!(e.file(), Some(path.as_path()), "{backend}: {e}");
    let tensor = e
        .tensor()
        .unwrap_or_else(|| panic!("{backend}: no tensor named in {e}"));
    assert!(
        ckpt.find(tensor).is_some(),
        "{backend}: {tensor} is not a tensor of the file"
    );
    assert!(chain(&e).contains("Input/output error"), "{}", chain(&e));
}

fn truncated_during_load(backend: Backend, dir: &Scratch) {
    let (path, ckpt) = checkpoint(dir, &format!("trunc-{backend}.safetensors"), SIZES, 2);
    let opts = only(backend, &small_options());
    let paths = vec![path.clone()];
    let engine = Engine::open(&paths, &opts, true).unwrap();
    let plan = weightlift_plan::plan(&ckpt, &Selection::All, &engine.geometry()).unwrap();
    // The header was read and the file opened: now it loses its second half.
    let half = ckpt.shards()[0].size() / 2;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(half)
        .unwrap();
    let ring = engine.ring().unwrap();
    let mut sink = Collect::new(&plan, &ckpt, 0, ring.slots());
    // The read that meets the new end, or the check of the file after an
    // earlier read, finds it first.
    match engine.run(&plan, &ring, &mut sink, None) {
        Err(Error::Truncated { file, size, .. }) => {
            assert_eq!(file, path, "{backend}");
            assert_eq!(size, ckpt.shards()[0].size(), "{backend}");
        }
        Err(Error::Changed {
            file, what: "size", ..
        }) => assert_eq!(file, path, "{backend}"),
        other => panic!("{backend}: expected a truncation error, got {other:?}"),
    }
    // A load that starts after the truncation sees it before reading.
    match load_host(&ckpt, &Selection::All, &opts) {
        Err(weightlift::Error::Changed { file, what: "size" }) => assert_eq!(file, path),
        other => panic!("{backend} host: expected a changed file, got {other:?}"),
    }
}

fn missing_file(dir: &Scratch) {
    let (path, ckpt) = checkpoint(dir, "missing.safetensors", SIZES, 3);
    std::fs::remove_file(&path).unwrap();
    for opts in [small_options(), only(Backend::Uring, &small_options())] {
        match load_host(&ckpt, &Selection::All, &opts) {
            Err(weightlift::Error::Io(Error::Open { file, source })) => {
                assert_eq!(file, path);
                assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            }
            other => panic!("expected a missing file, got {other:?}"),
        }
    }
}

fn replaced(backend: Backend, dir: &Scratch) {
    let name = format!("replaced-{backend}.safetensors");
    let (path, ckpt) = checkpoint(dir, &name, SIZES, 4);
    let original = plain_bytes(&ckpt);
    let opts = EngineOptions {
        queue_depth: 1,
        ..only(backend, &small_options())
    };
    // Replaced during the load: the opened file keeps being read.
    let mut load = host::load(ckpt.clone(), &Selection::All, &with_engine(opts.clone())).unwrap();
    let first = load.next().unwrap().unwrap();
    let other = dir.0.join(format!("other-{backend}.safetensors"));
    write_shard(&other, "t.", &[5, 6, 7], 99);
    std::fs::rename(&other, &path).unwrap();
    let mut got = vec![first];
    got.extend(load.map(Result::unwrap));
    assert_eq!(got.len(), ckpt.len(), "{backend}");
    for t in &got {
        let name = &ckpt.tensor(t.id()).name;
        assert!(t.bytes() == original[name], "{backend}: {name} changed");
    }
    // Replaced after its header was read, before the load: refused.
    match load_host(&ckpt, &Selection::All, &opts) {
        Err(weightlift::Error::Changed { file, .. }) => assert_eq!(file, path),
        other => panic!("{backend}: expected a changed file, got {other:?}"),
    }
}

fn cancelled(backend: Backend, dir: &Scratch) {
    let (_, ckpt) = checkpoint(dir, &format!("cancel-{backend}.safetensors"), SIZES, 5);
    let opts = only(backend, &small_options());
    within_a_minute("cancel", move || {
        let mut load = host::load(ckpt, &Selection::All, &with_engine(opts)).unwrap();
        let first = load.next().unwrap().unwrap();
        drop(load);
        // Tensors outlive their load.
        first.bytes().to_vec()
    });
}

#[test]
fn failures_are_typed_prompt_and_leak_nothing() {
    let dir = scratch("faults");
    let probe = dir.0.join("probe.safetensors");
    write_shard(&probe, "p.", &[10], 0);
    let backends: Vec<Backend> = engine_backends()
        .filter(|&b| usable(b, std::slice::from_ref(&probe)))
        .collect();
    // Warm up lazily made process state (thread-locals, allocator arenas).
    for &b in &backends {
        cancelled(b, &dir);
    }
    let before = resources(&dir);
    for &b in &backends {
        injected_read_error(b, &dir);
        truncated_during_load(b, &dir);
        replaced(b, &dir);
        cancelled(b, &dir);
    }
    missing_file(&dir);
    let after = resources(&dir);
    assert_eq!(before.0, after.0, "open descriptors before and after");
    assert_eq!(before.1, after.1, "regions mapped before and after");
    assert_eq!((before.2, after.2), (0, 0), "mappings of the test's files");
}
