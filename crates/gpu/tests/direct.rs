//! Reads straight into device memory: the executor over the host-memory
//! stand-in reader (every byte lands, each tensor comes back once, errors
//! name file and offset, dropping mid-flight waits), and cuFile found at
//! run time or said to be missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use weightlift_gpu::{CuFile, DirectJob, DirectLoad, Error, HostFileReader};

fn file(tag: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weightlift-direct-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Run `jobs` (offset, len) into fresh buffers; the buffers, or the error.
fn run(
    path: &PathBuf,
    size: u64,
    ranges: &[(u64, usize)],
    threads: usize,
    chunk: usize,
) -> Result<Vec<Vec<u8>>, (usize, Error)> {
    let reader = HostFileReader::open(std::slice::from_ref(path), &[size]).map_err(|e| (0, e))?;
    let mut dests: Vec<Vec<u8>> = ranges.iter().map(|&(_, n)| vec![0xEE; n]).collect();
    {
        let mut load = DirectLoad::new(Arc::new(reader), threads, chunk).map_err(|e| (0, e))?;
        for (id, (&(offset, len), d)) in ranges.iter().zip(dests.iter_mut()).enumerate() {
            let job = DirectJob {
                id,
                file: 0,
                offset,
                len,
                dst: d.as_mut_ptr() as u64,
            };
            // SAFETY: `dests` outlives the load and is not touched meanwhile.
            unsafe { load.submit(job) }.map_err(|e| (id, e))?;
        }
        let mut seen = vec![false; ranges.len()];
        while load.in_flight() > 0 {
            for id in load.next_done(Duration::from_millis(50))? {
                assert!(!seen[id], "tensor {id} handed back twice");
                seen[id] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(load.in_flight_bytes(), 0);
    }
    Ok(dests)
}

#[test]
fn every_byte_lands_in_chunks_on_several_threads() {
    let data = pattern(300_000);
    let path = file("bytes", &data);
    let ranges = [
        (0, 0),
        (0, 1),
        (3, 100_000),
        (100_003, 7),
        (100_010, 199_990),
        (299_999, 1),
    ];
    for (threads, chunk) in [(1, 1 << 20), (3, 4096), (4, 1000)] {
        let got = run(&path, data.len() as u64, &ranges, threads, chunk).unwrap();
        for (d, &(o, n)) in got.iter().zip(&ranges) {
            assert!(
                d[..] == data[o as usize..o as usize + n],
                "{threads} threads, chunk {chunk}, at {o}"
            );
        }
    }
}

#[test]
fn a_file_that_changed_is_refused_naming_it() {
    let path = file("changed", &pattern(1000));
    match run(&path, 999, &[(0, 10)], 2, 4096) {
        Err((
            _,
            e @ Error::Changed {
                size: 1000,
                expected: 999,
                ..
            },
        )) => {
            assert_eq!(e.path(), Some(path.as_path()));
            assert!(e.to_string().contains("changed"), "{e}");
        }
        other => panic!("expected a read error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_short_file_is_an_error_naming_file_and_offset() {
    let path = file("short", &pattern(1000));
    // The header (size 1000) promises bytes past the end of the file.
    match run(&path, 1000, &[(0, 10), (900, 200)], 2, 64) {
        Err((
            id,
            ref e @ Error::Truncated {
                path: ref p,
                offset,
                missing,
            },
        )) => {
            assert_eq!((id, p), (1, &path));
            assert!(offset >= 900, "{offset}");
            // The file ends at 1000: 100 of the tensor's 200 bytes are not there.
            assert_eq!(missing, 100);
            assert!(e.to_string().contains("ended"), "{e}");
        }
        other => panic!("expected a read error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn dropping_mid_flight_waits_for_the_reads() {
    let data = pattern(4 << 20);
    let path = file("drop", &data);
    let reader = HostFileReader::open(std::slice::from_ref(&path), &[data.len() as u64]).unwrap();
    let mut dests: Vec<Vec<u8>> = (0..64).map(|_| vec![0; 64 << 10]).collect();
    let mut load = DirectLoad::new(Arc::new(reader), 4, 4096).unwrap();
    for (id, d) in dests.iter_mut().enumerate() {
        let job = DirectJob {
            id,
            file: 0,
            offset: (id * 65_536) as u64,
            len: 65_536,
            dst: d.as_mut_ptr() as u64,
        };
        // SAFETY: `dests` outlives `load`, dropped below before they are read.
        unsafe { load.submit(job) }.unwrap();
    }
    drop(load);
    // Whatever landed is the file's; nothing writes any more.
    let snapshot = dests.clone();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(snapshot, dests);
}

#[test]
fn cufile_loads_or_says_what_is_missing() {
    match CuFile::open() {
        Ok(_) => {}
        Err(Error::Unavailable { api, reason }) => {
            assert_eq!(api, "cuFile");
            assert!(
                reason.contains("libcufile") || reason.contains("cuFile"),
                "{reason}"
            );
        }
        // Found, but its driver would not open.
        Err(Error::CuFile { path: None, source }) => {
            assert_eq!(source.call, "cuFileDriverOpen");
        }
        Err(e) => panic!("expected cuFile or Error::Unavailable, got {e:?}"),
    }
}
