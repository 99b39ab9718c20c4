//! Page-cache residency and eviction on a real file.

use std::io::Read;

use weightlift_io::Error;
use weightlift_io::cache::{evict, residency};

#[test]
fn a_read_file_is_resident_and_evicting_drops_it() {
    let path = std::env::temp_dir().join(format!("wl-io-cache-{}", std::process::id()));
    let len = 8 << 20;
    std::fs::write(&path, vec![0x5au8; len]).unwrap();
    evict(&path).unwrap();
    let cold = residency(&path).unwrap();
    assert_eq!(cold.total_pages, (len as u64).div_ceil(cold.page_size));
    assert!(cold.is_cold(), "after eviction: {cold:?}");

    let mut sink = Vec::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_end(&mut sink)
        .unwrap();
    let warm = residency(&path).unwrap();
    // Every page was just read; allow for reclaim under memory pressure.
    assert!(
        warm.resident_pages * 10 >= warm.total_pages * 9,
        "after reading: {warm:?}"
    );

    evict(&path).unwrap();
    assert!(residency(&path).unwrap().is_cold());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn empty_and_missing_files() {
    let path = std::env::temp_dir().join(format!("wl-io-cache-empty-{}", std::process::id()));
    std::fs::write(&path, b"").unwrap();
    let r = residency(&path).unwrap();
    assert_eq!((r.resident_pages, r.total_pages), (0, 0));
    evict(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
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
