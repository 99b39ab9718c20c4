//! Linux AIO contexts are set up once and reused, not made and destroyed
//! per read: destroying one waits for RCU grace periods (tens of
//! milliseconds), far longer than reading a small tensor. Counted with
//! weightlift-io's test hooks (`aio_contexts_set_up`,
//! `aio_contexts_destroyed`).
//!
//! One test function runs every case in sequence, so that no other test's
//! contexts are counted.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};

use common::*;
use weightlift::{Backend, LoadOptions, Selection, Session};
use weightlift_format::Checkpoint;
use weightlift_io::{Engine, EngineOptions, InPlace, aio_contexts_destroyed, aio_contexts_set_up};

fn go() -> bool {
    true
}

/// Contexts set up and destroyed so far.
fn contexts() -> (usize, usize) {
    (aio_contexts_set_up(), aio_contexts_destroyed())
}

fn aio() -> LoadOptions {
    let mut o = LoadOptions::default();
    o.engine.backends = Some(vec![Backend::Aio]);
    o
}

#[test]
fn aio_contexts_are_reused_not_made_per_read() {
    let dir = scratch("aio-contexts");
    let path = dir.0.join("a.safetensors");
    write_shard(&path, "t", &[256 << 10; 8], 1);
    let paths: Vec<PathBuf> = vec![path.clone()];
    if !usable(Backend::Aio, &paths) {
        return;
    }
    let ckpt = Arc::new(Checkpoint::open(&path).unwrap());
    let plain = plain_bytes(&ckpt);

    lone_reads(&ckpt, &plain);
    readers_at_once(&ckpt, &paths);
    in_a_forked_child(&ckpt, &plain);
}

/// Single tensors on an open handle, open/get/close rounds and threads
/// sharing a handle: once a context exists, none is set up or destroyed.
fn lone_reads(ckpt: &Arc<Checkpoint>, plain: &std::collections::HashMap<String, Vec<u8>>) {
    let mut s = Session::new(ckpt.clone(), &Selection::All, aio()).unwrap();
    // Names out of sorted order, so that every request is read alone.
    let names: Vec<String> = (0..8).rev().map(|i| format!("t{i}")).collect();
    assert_eq!(s.get(&names[0], &mut go).unwrap().bytes(), plain[&names[0]]);
    let described = s.describe().unwrap().to_owned();
    assert!(described.contains("backend AIO"), "{described}");
    let before = contexts();

    for name in names.iter().cycle().take(20) {
        assert_eq!(s.get(name, &mut go).unwrap().bytes(), plain[name], "{name}");
    }
    assert_eq!(contexts(), before, "single reads on one handle");

    for name in names.iter().cycle().take(10) {
        let mut s = Session::new(ckpt.clone(), &Selection::All, aio()).unwrap();
        assert_eq!(s.get(name, &mut go).unwrap().bytes(), plain[name], "{name}");
    }
    assert_eq!(contexts(), before, "open, get, close");

    let shared = Mutex::new(s);
    std::thread::scope(|scope| {
        for k in 0..4 {
            let (shared, names) = (&shared, &names);
            scope.spawn(move || {
                for name in names.iter().cycle().skip(k).take(5) {
                    let t = shared.lock().unwrap().get(name, &mut go).unwrap();
                    assert_eq!(t.bytes(), plain[name], "{name}");
                }
            });
        }
    });
    assert_eq!(contexts(), before, "threads sharing one handle");
}

/// Six loads reading at once need six contexts; afterwards four are kept
/// idle and the rest destroyed, and loads that follow set up none.
fn readers_at_once(ckpt: &Arc<Checkpoint>, paths: &[PathBuf]) {
    let options = EngineOptions {
        backends: Some(vec![Backend::Aio]),
        queue_depth: 4,
        slot_size: 64 << 10,
        ..EngineOptions::default()
    };
    let run = |n: usize| {
        // Opened here, one after another: each probe takes an idle context
        // and gives it back.
        let engines: Vec<Engine> = (0..n)
            .map(|_| Engine::open(paths, &options, false).unwrap())
            .collect();
        let barrier = Barrier::new(n);
        std::thread::scope(|scope| {
            for engine in &engines {
                let barrier = &barrier;
                scope.spawn(move || {
                    let plan =
                        weightlift_plan::plan(ckpt, &Selection::All, &engine.geometry()).unwrap();
                    let dst = InPlace::packed(&plan, 1).unwrap();
                    let mut first = true;
                    // Every load holds its context until all of them have
                    // read something.
                    let on_done = |_| {
                        if std::mem::take(&mut first) {
                            barrier.wait();
                        }
                        Ok(())
                    };
                    engine.run_in_place(&plan, &dst, on_done, None).unwrap();
                });
            }
        });
    };
    // One context is idle (the lone reads' own).
    let (set_up, destroyed) = contexts();
    run(6);
    let now = contexts();
    assert_eq!(now, (set_up + 5, destroyed + 2), "six at once, four kept");
    run(4);
    run(1);
    assert_eq!(contexts(), now, "four kept serve four at once");
}

/// A child made by `fork` has none of its parent's contexts: it sets up
/// its own instead of reading with contexts that do not exist there.
fn in_a_forked_child(ckpt: &Arc<Checkpoint>, plain: &std::collections::HashMap<String, Vec<u8>>) {
    let name = "t3";
    let expected = plain[name].clone();
    // SAFETY: the child only reads a tensor with this crate and exits; no
    // lock it needs is held by another thread here (this test's threads
    // have all been joined).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let result = std::panic::catch_unwind(|| {
            let before = aio_contexts_set_up();
            let mut s = Session::new(ckpt.clone(), &Selection::All, aio()).unwrap();
            let t = s.get(name, &mut go).unwrap();
            t.bytes() == expected && aio_contexts_set_up() > before
        });
        // SAFETY: ends the child without running the parent's test harness.
        unsafe { libc::_exit(if matches!(result, Ok(true)) { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waits for the child made above.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child read with AIO and failed (status {status:#x})"
    );
}
