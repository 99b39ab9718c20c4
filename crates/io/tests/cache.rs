//! Page-cache residency and eviction on a real file.

use std::io::Read;
use std::path::PathBuf;

use weightlift_io::Error;
use weightlift_io::cache::{evict, in_memory, residency, resident_fraction};

struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp(tag: &str, bytes: &[u8]) -> Temp {
    let path = std::env::temp_dir().join(format!("wl-io-cache-{tag}-{}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    Temp(path)
}

#[test]
fn a_read_file_is_resident_and_evicting_drops_it() {
    let len = 8 << 20;
    let t = temp("evict", &vec![0x5au8; len]);
    if in_memory(&t.0).unwrap() {
        // tmpfs and ramfs keep files in memory: nothing to evict.
        eprintln!("skipping: {} is on an in-memory file system", t.0.display());
        return;
    }
    evict(&t.0).unwrap();
    let cold = residency(&t.0).unwrap();
    assert_eq!(cold.total_pages, (len as u64).div_ceil(cold.page_size));
    assert!(cold.is_cold(), "after eviction: {cold:?}");

    let mut sink = Vec::new();
    std::fs::File::open(&t.0)
        .unwrap()
        .read_to_end(&mut sink)
        .unwrap();
    let warm = residency(&t.0).unwrap();
    // Every page was just read; allow for reclaim under memory pressure.
    assert!(
        warm.resident_pages * 10 >= warm.total_pages * 9,
        "after reading: {warm:?}"
    );
    // The sampled estimate agrees with the full count.
    let sampled = resident_fraction(&t.0, 64).unwrap();
    let counted = warm.resident_pages as f64 / warm.total_pages as f64;
    assert!(
        (sampled - counted).abs() < 0.1,
        "sampled {sampled}, counted {counted}"
    );

    evict(&t.0).unwrap();
    assert!(residency(&t.0).unwrap().is_cold());
    assert_eq!(resident_fraction(&t.0, 64).unwrap(), 0.0);
}

/// Drop `offset..offset + len` of the file at `path` from the page cache
/// (written back first: dirty pages stay).
fn evict_range(path: &std::path::Path, offset: i64, len: i64) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_data().unwrap();
    // SAFETY: a valid descriptor; the advice only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
}

#[test]
fn the_sampled_estimate_follows_a_partly_evicted_file() {
    // 16,384 pages of 4 KiB: 1,024 samples are 64 runs of 16 pages.
    let len: i64 = 64 << 20;
    let t = temp("partial", &vec![0xa5u8; len as usize]);
    if in_memory(&t.0).unwrap() {
        eprintln!("skipping: {} is on an in-memory file system", t.0.display());
        return;
    }
    std::fs::read(&t.0).unwrap();
    evict_range(&t.0, len / 2, len / 2);
    let r = residency(&t.0).unwrap();
    if r.resident_pages == 0 || r.is_warm() {
        eprintln!("skipping: this file system does not drop part of a file ({r:?})");
        return;
    }
    let counted = r.resident_pages as f64 / r.total_pages as f64;
    let sampled = resident_fraction(&t.0, 1024).unwrap();
    // Half the runs lie in each half of the file.
    assert!(
        (sampled - counted).abs() < 0.05,
        "sampled {sampled}, counted {counted}"
    );

    // A file of no more pages than samples is counted exactly.
    let small = temp("small", &vec![0x3cu8; 100 << 12]);
    std::fs::read(&small.0).unwrap();
    evict_range(&small.0, 37 << 12, 0);
    let r = residency(&small.0).unwrap();
    let counted = r.resident_pages as f64 / r.total_pages as f64;
    assert_eq!(resident_fraction(&small.0, 1024).unwrap(), counted);
    assert_eq!(resident_fraction(&small.0, 100).unwrap(), counted);
}

#[test]
fn files_on_tmpfs_are_in_memory() {
    let shm = std::path::Path::new("/dev/shm");
    let on_tmpfs = shm.is_dir() && {
        let probe = shm.join(format!("wl-io-probe-{}", std::process::id()));
        std::fs::write(&probe, b"x").is_ok() && {
            let r = in_memory(&probe);
            let _ = std::fs::remove_file(&probe);
            r.unwrap()
        }
    };
    if !on_tmpfs {
        eprintln!("skipping: /dev/shm is not a writable tmpfs here");
    }
    let t = temp("regular", b"abc");
    // The temporary directory may itself be tmpfs; either answer is fine,
    // but it must be an answer, and a missing file an error naming it.
    let _ = in_memory(&t.0).unwrap();
    let missing = t.0.with_extension("absent");
    assert!(matches!(in_memory(&missing), Err(Error::Open { file, .. }) if file == missing));
}

#[test]
fn empty_and_missing_files() {
    let t = temp("empty", b"");
    let r = residency(&t.0).unwrap();
    assert_eq!((r.resident_pages, r.total_pages), (0, 0));
    evict(&t.0).unwrap();
    let path = t.0.clone();
    drop(t);
    let err = residency(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Open { file, .. } if file == &path),
        "{err}"
    );
    let err = evict(&path).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
