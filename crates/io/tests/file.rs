//! `ReadFile` against plain reads, buffered and direct, on real files of
//! unaligned sizes; and its errors.

use std::path::PathBuf;

use weightlift_io::{AlignedBuf, Error, OpenMode, ReadFile};

struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn temp_file(tag: &str, len: usize) -> (Temp, Vec<u8>) {
    let path = std::env::temp_dir().join(format!("wl-io-{tag}-{}", std::process::id()));
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 9) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    (Temp(path), bytes)
}

/// Open in direct mode, or say why this machine cannot and skip; with
/// WEIGHTLIFT_REQUIRE_URING=1 (direct I/O and io_uring required) a skip fails.
fn open_direct(path: &std::path::Path) -> Option<ReadFile> {
    match ReadFile::open(path, OpenMode::Direct) {
        Ok(f) => Some(f),
        Err(e @ Error::DirectUnsupported { .. }) => {
            assert!(
                std::env::var("WEIGHTLIFT_REQUIRE_URING").as_deref() != Ok("1"),
                "direct I/O required but unsupported: {e}"
            );
            eprintln!("skipping direct reads: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn buffered_reads_match_the_file_anywhere() {
    let (t, bytes) = temp_file("buffered", 100_003);
    let f = ReadFile::open(&t.0, OpenMode::Buffered).unwrap();
    assert_eq!(f.size(), bytes.len() as u64);
    for (offset, len) in [
        (0, 10),
        (1, 4095),
        (4097, 65_536),
        (99_000, 5000),
        (100_003, 10),
        (200_000, 1),
    ] {
        let mut buf = vec![0u8; len];
        let n = f.read_at(&mut buf, offset as u64).unwrap();
        let want = &bytes[offset.min(bytes.len())..(offset + len).min(bytes.len())];
        assert_eq!(&buf[..n], want, "{offset}+{len}");
    }
}

#[test]
fn direct_reads_match_the_file_and_end_short_in_the_last_block() {
    let (t, bytes) = temp_file("direct", 3 * 1024 * 1024 + 777);
    let Some(f) = open_direct(&t.0) else { return };
    let a = f.alignment();
    assert!(a.memory.is_power_of_two() && a.offset.is_power_of_two());
    eprintln!("direct-I/O alignment: {a:?}");
    let step = (1 << 20) as u64;
    let mut buf = AlignedBuf::zeroed(step as usize, a.memory.max(4096)).unwrap();
    let mut offset = 0u64;
    let mut back = Vec::new();
    while offset < f.size() {
        let n = f.read_at(buf.as_mut_slice(), offset).unwrap();
        back.extend_from_slice(&buf.as_slice()[..n]);
        offset += step;
    }
    assert_eq!(back, bytes);
}

#[test]
fn misaligned_direct_reads_are_refused_before_reading() {
    let (t, _) = temp_file("misaligned", 10_000);
    let Some(f) = open_direct(&t.0) else { return };
    let a = f.alignment();
    let block = (a.offset as usize).max(a.memory);
    let mut buf = AlignedBuf::zeroed(4 * block, block).unwrap();
    let err = f.read_at(buf.as_mut_slice(), 1).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Misaligned {
                what: "offset",
                value: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&t.0.display().to_string()),
        "{err}"
    );
    let err = f
        .read_at(&mut buf.as_mut_slice()[..a.offset as usize + 1], 0)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Misaligned { what: "length", .. }),
        "{err}"
    );
    if a.memory > 1 {
        let err = f
            .read_at(&mut buf.as_mut_slice()[1..1 + a.offset as usize], 0)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Misaligned {
                    what: "buffer address",
                    ..
                }
            ),
            "{err}"
        );
    }
    // An empty read is no read at all, whatever its address.
    assert_eq!(f.read_at(&mut buf.as_mut_slice()[1..1], 3).unwrap(), 0);
}

#[test]
fn a_file_truncated_after_open_is_an_error_naming_it() {
    let (t, _) = temp_file("truncated", 50_000);
    let f = ReadFile::open(&t.0, OpenMode::Buffered).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(20_000)
        .unwrap();
    let mut buf = vec![0u8; 40_000];
    let err = f.read_at(&mut buf, 0).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Truncated {
                at: 20_000,
                size: 50_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&t.0.display().to_string()),
        "{err}"
    );
}

#[test]
fn missing_files_and_directories_are_open_errors_naming_them() {
    let path = std::env::temp_dir().join(format!("wl-io-absent-{}", std::process::id()));
    let err = ReadFile::open(&path, OpenMode::Buffered).unwrap_err();
    assert!(
        matches!(&err, Error::Open { file, .. } if file == &path),
        "{err}"
    );
    let err = ReadFile::open(std::env::temp_dir(), OpenMode::Buffered).unwrap_err();
    assert!(matches!(&err, Error::Open { .. }), "{err}");
}

#[test]
fn direct_reads_of_aligned_sizes_past_the_end_and_truncation() {
    let (t, bytes) = temp_file("direct-edges", 64 * 1024);
    let Some(f) = open_direct(&t.0) else { return };
    let block = (f.alignment().offset as usize).max(f.alignment().memory);
    let mut buf = AlignedBuf::zeroed(128 * 1024, block).unwrap();
    // A size that is a multiple of the alignment ends with a zero-length read.
    assert_eq!(f.read_at(buf.as_mut_slice(), 0).unwrap(), bytes.len());
    assert_eq!(&buf.as_slice()[..bytes.len()], &bytes[..]);
    // Past the end: nothing, and no error.
    assert_eq!(
        f.read_at(&mut buf.as_mut_slice()[..block], 1 << 20)
            .unwrap(),
        0
    );
    // Shrunk after open: an error naming the file, in direct mode too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(10_000)
        .unwrap();
    let err = f.read_at(buf.as_mut_slice(), 0).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Truncated {
                at: 10_000,
                size: 65_536,
                ..
            }
        ),
        "{err}"
    );
}

/// The file-system type of the mount holding `path`, from /proc/mounts
/// (the longest mount point that contains it).
fn mount_type(path: &std::path::Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(at).then(|| (at.len(), kind.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

#[test]
fn files_on_tmpfs_are_in_memory_and_refuse_direct_io() {
    let dirs = [
        std::env::temp_dir(),
        PathBuf::from("/dev/shm"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    let mut checked_tmpfs = false;
    for dir in dirs {
        let probe = dir.join(format!("wl-io-fs-probe-{}", std::process::id()));
        if std::fs::write(&probe, vec![1u8; 8192]).is_err() {
            continue;
        }
        let t = Temp(probe);
        let Some(kind) = mount_type(&t.0) else {
            continue;
        };
        let memory = kind == "tmpfs" || kind == "ramfs";
        assert_eq!(
            weightlift_io::cache::in_memory(&t.0).unwrap(),
            memory,
            "{} on {kind}",
            t.0.display()
        );
        assert_eq!(
            ReadFile::open(&t.0, OpenMode::Buffered)
                .unwrap()
                .in_memory(),
            memory
        );
        if memory {
            checked_tmpfs = true;
            let err = ReadFile::open(&t.0, OpenMode::Direct).unwrap_err();
            assert!(
                matches!(&err, Error::DirectUnsupported { source: None, .. }),
                "{err}"
            );
            assert!(
                err.to_string().contains(&t.0.display().to_string()),
                "{err}"
            );
        }
    }
    if !checked_tmpfs {
        eprintln!("no writable tmpfs here: the refusal of direct I/O on tmpfs was not exercised");
    }
}
