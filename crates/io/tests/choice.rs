//! Choosing a backend: names and policies, the default order by where the
//! files are, and an error that lists every rejected candidate.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use weightlift_io::{Backend, BackendPolicy, Error, Residence, choose};

#[test]
fn names_and_policies_parse_as_instanttensor_spells_them() {
    assert_eq!(
        Backend::parse_list("URING,AIO").unwrap(),
        [Backend::Uring, Backend::Aio]
    );
    assert_eq!(
        Backend::parse_list(" uring_buffered , mmap,URING_BUFFERED").unwrap(),
        [Backend::UringBuffered, Backend::Mmap]
    );
    assert_eq!(
        Backend::parse_list("BUFFERED").unwrap(),
        BackendPolicy::Buffered.backends()
    );
    assert_eq!(
        Backend::parse_list("direct").unwrap(),
        [Backend::Uring, Backend::Aio, Backend::Pread]
    );
    for b in Backend::ALL {
        assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        assert_eq!(b.to_string(), b.name());
    }
    for bad in ["", " , ", "URING,FAST", "io_uring"] {
        match Backend::parse_list(bad) {
            Err(e @ Error::UnknownBackend { .. }) => {
                assert!(
                    e.to_string().contains("URING_BUFFERED"),
                    "lists the known names: {e}"
                )
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn every_rejected_candidate_is_listed_with_its_reason() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() || !weightlift_io::cache::in_memory(shm).unwrap_or(false) {
        eprintln!("skipping: no tmpfs at /dev/shm to refuse direct I/O");
        return;
    }
    let path = shm.join(format!("wl-choice-{}.safetensors", std::process::id()));
    write_shard(&path, "t.", &[10, 20], 1);
    let paths = vec![path.clone()];
    let result = choose(
        &paths,
        Some(&[Backend::Cufile, Backend::Uring, Backend::Pread]),
        false,
        true,
    );
    match &result {
        Err(Error::NoBackend { rejected }) => {
            let names: Vec<Backend> = rejected.iter().map(|r| r.backend).collect();
            assert_eq!(names, [Backend::Cufile, Backend::Uring, Backend::Pread]);
            assert!(rejected[0].reason.contains("GPU"), "{}", rejected[0].reason);
            assert!(
                rejected[1].reason.contains(&*path.to_string_lossy()),
                "{}",
                rejected[1].reason
            );
            let message = result.as_ref().unwrap_err().to_string();
            for r in rejected {
                assert!(message.contains(&r.to_string()), "{message}");
            }
        }
        other => panic!("expected every candidate rejected, got {other:?}"),
    }
    // On tmpfs the default is to map, with nothing rejected.
    assert_eq!(Residence::of(&paths).unwrap(), Residence::InMemory);
    let chosen = choose(
        &paths,
        Some(&Residence::InMemory.default_candidates()),
        false,
        true,
    )
    .unwrap();
    assert_eq!(chosen.backend, Backend::Mmap);
    // With mapping turned off, the next candidate serves, and the reason
    // MMAP did not is listed.
    let chosen = choose(
        &paths,
        Some(&Residence::InMemory.default_candidates()),
        false,
        false,
    )
    .unwrap();
    assert_ne!(chosen.backend, Backend::Mmap);
    assert_eq!(chosen.rejected[0].backend, Backend::Mmap);
    assert!(chosen.rejected[0].reason.contains("own their memory"));
    match choose(&paths, Some(&[Backend::Mmap]), false, false) {
        Err(Error::NoBackend { rejected }) => assert_eq!(rejected[0].backend, Backend::Mmap),
        other => panic!("expected MMAP refused, got {other:?}"),
    }
    // Asking for buffered reads skips the unusable direct ones.
    let chosen = choose(
        &paths,
        Some(&[Backend::Aio, Backend::PreadBuffered]),
        false,
        true,
    )
    .unwrap();
    assert_eq!(chosen.backend, Backend::PreadBuffered);
    assert_eq!(chosen.rejected.len(), 1);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn cached_files_are_mapped_and_cold_ones_read_directly() {
    let dir = scratch("choice");
    let path = dir.0.join("m.safetensors");
    write_shard(&path, "t.", &[100_000, 5], 2);
    let paths: Vec<PathBuf> = vec![path.clone()];
    weightlift_io::cache::evict(&path).unwrap();
    if !weightlift_io::cache::residency(&path).unwrap().is_cold() {
        eprintln!("skipping: this file system keeps the file cached after eviction");
        return;
    }
    assert_eq!(Residence::of(&paths).unwrap(), Residence::Storage);
    assert_eq!(Residence::Storage.default_candidates()[0], Backend::Uring);
    std::fs::read(&path).unwrap();
    assert_eq!(Residence::of(&paths).unwrap(), Residence::Cached);
    assert_eq!(Residence::Cached.default_candidates()[0], Backend::Mmap);
    // Copied into staging whatever the backend: read out of the page cache
    // rather than map the files.
    assert_eq!(
        Residence::Cached.staged_candidates()[0],
        Backend::PreadBuffered
    );
    assert_eq!(Residence::Storage.staged_candidates()[0], Backend::Uring);
    assert_eq!(
        choose(&paths, None, true, true).unwrap().backend,
        Backend::PreadBuffered
    );
}
