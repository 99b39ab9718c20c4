//! A file is read as one version: a file written during a run fails the
//! run naming it, and only regular files are opened, without blocking.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use weightlift_format::Checkpoint;
use weightlift_io::{Backend, Engine, EngineOptions, Error, InPlace, OpenMode, ReadFile};
use weightlift_plan::{Selection, plan};

/// Every backend that reads (not maps) and opens here.
const READERS: [Backend; 5] = [
    Backend::PreadBuffered,
    Backend::Pread,
    Backend::UringBuffered,
    Backend::Uring,
    Backend::Aio,
];

#[test]
fn a_file_written_during_a_run_fails_it_naming_the_file() {
    let dir = scratch("changes");
    let path = dir.0.join("a.safetensors");
    // Extents of one slot each: the run reads them one after another.
    write_shard(&path, "t.", &[64 << 10; 8], 7);
    let ckpt = Checkpoint::open(&path).unwrap();
    let paths: Vec<PathBuf> = vec![path.clone()];
    let mut ran = 0;
    for backend in READERS {
        let options = EngineOptions {
            backends: Some(vec![backend]),
            queue_depth: 1,
            slot_size: 64 << 10,
            threads: 1,
            ..EngineOptions::default()
        };
        let Ok(engine) = Engine::open(&paths, &options, false) else {
            continue; // not available here (no io_uring, or no O_DIRECT)
        };
        let p = plan(&ckpt, &Selection::All, &engine.geometry()).unwrap();
        assert!(
            p.extents().len() > 2,
            "{backend:?}: {} extents",
            p.extents().len()
        );
        let dst = InPlace::packed(&p, 1).unwrap();
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let end = std::fs::metadata(&path).unwrap().len();
        let mut landed = 0;
        // After the first extent lands, write the file's last byte back
        // unchanged: a write, though the bytes stay the same.
        let result = engine.run_in_place(
            &p,
            &dst,
            |_| {
                landed += 1;
                if landed == 1 {
                    // Past one clock tick of file systems without
                    // fine-grained timestamps.
                    std::thread::sleep(Duration::from_millis(20));
                    let mut last = [0u8];
                    writer.read_at(&mut last, end - 1).unwrap();
                    writer.write_at(&last, end - 1).unwrap();
                }
                Ok(())
            },
            None,
        );
        match result {
            Err(e @ Error::Changed { .. }) => {
                assert_eq!(e.file(), Some(path.as_path()), "{backend:?}");
                let message = e.to_string();
                assert!(
                    message.contains("a.safetensors") && message.contains("changed"),
                    "{message}"
                );
            }
            other => panic!("{backend:?}: expected the change found, got {other:?}"),
        }
        assert!(
            landed < p.extents().len(),
            "{backend:?}: every extent was handed out"
        );
        ran += 1;
    }
    assert!(ran >= 2, "fewer than two read backends open here");
}

#[test]
fn a_file_unchanged_since_open_checks_clean_and_a_replaced_one_does_not() {
    let dir = scratch("replaced");
    let path = dir.0.join("a.safetensors");
    write_shard(&path, "t.", &[4096], 1);
    let file = ReadFile::open(&path, OpenMode::Buffered).unwrap();
    file.check_unchanged(0).unwrap();
    // Replaced by another file under the same name: the open one is still
    // the version opened.
    let other = dir.0.join("b.safetensors");
    write_shard(&other, "t.", &[4096], 2);
    std::fs::rename(&other, &path).unwrap();
    file.check_unchanged(0).unwrap();
    let again = ReadFile::open(&path, OpenMode::Buffered).unwrap();
    assert_ne!(again.stamp(), file.stamp());
    // Resized in place.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    match again.check_unchanged(0) {
        Err(Error::Changed { what: "size", .. }) => {}
        other => panic!("expected a size change, got {other:?}"),
    }
}

#[test]
fn a_fifo_is_refused_at_once() {
    let dir = scratch("fifo");
    let path = dir.0.join("pipe.safetensors");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // On a thread, so that a blocking open fails the test instead of
    // hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let opened = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(ReadFile::open(&opened, OpenMode::Buffered).map(|_| ()));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Err(e @ Error::Open { .. })) => {
            let message = weightlift_io::chain(&e);
            assert!(
                message.contains("pipe.safetensors") && message.contains("FIFO"),
                "{message}"
            );
        }
        Ok(other) => panic!("expected the FIFO refused, got {other:?}"),
        Err(_) => panic!("opening a FIFO blocked"),
    }
}
