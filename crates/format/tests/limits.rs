//! Opening a header under an address-space limit (`RLIMIT_AS`) that leaves
//! too little room for it is an error naming the file, never an abort.
//!
//! The limit is the process's, so this test runs without the test harness,
//! on the main thread: its allocations come from glibc's main arena, which
//! grows by `brk` or `mmap`, both of which the limit sees (a thread's arena
//! grows inside 64 MiB it reserved beforehand, which the limit does not).

use std::io::Write;

use weightlift_format::{
    Checkpoint, Dtype, Error, HeaderError, TensorSpec, encode_header, memory_estimate,
};

/// Bytes of address space the process maps now.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number");
    kib * 1024
}

fn set_limit(bytes: libc::rlim_t) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit to write into.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut old) }, 0);
    let new = libc::rlimit {
        rlim_cur: bytes.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit; only the soft limit changes.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &new) }, 0);
}

/// Open `path` with at most `extra` bytes of address space more than the
/// process maps now.
fn open_within(path: &std::path::Path, extra: u64) -> Result<Checkpoint, Error> {
    set_limit(vm_size() + extra);
    let opened = Checkpoint::open(path);
    set_limit(libc::RLIM_INFINITY);
    opened
}

fn main() {
    a_header_without_room_is_an_error_naming_the_file();
    println!("test a_header_without_room_is_an_error_naming_the_file ... ok");
}

fn a_header_without_room_is_an_error_naming_the_file() {
    // A fixed threshold: glibc otherwise raises it after a large block is
    // freed and then serves blocks that large from address space it
    // already holds, which the limit does not see.
    // SAFETY: a setting of the allocator, made before any block this test
    // measures.
    let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    assert_eq!(set, 1);
    let specs: Vec<_> = (0..200_000)
        .map(|i| TensorSpec::new(format!("t{i:06}"), Dtype::U8, [1]))
        .collect();
    let enc = encode_header(&specs, None).expect("valid");
    let header_len = (enc.bytes.len() - 8) as u64;
    let dir = std::env::temp_dir().join(format!("wl-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&enc.bytes).unwrap();
    f.write_all(&vec![0; enc.data_len as usize]).unwrap();
    drop(f);

    // No room for the text; then room for the text (and a little more),
    // not for what parsing builds.
    for (extra, needed) in [
        (header_len / 2, header_len + memory_estimate(header_len)),
        (3 * header_len, memory_estimate(header_len)),
    ] {
        match open_within(&path, extra) {
            Err(e @ Error::Header { .. }) => {
                assert_eq!(e.file(), path);
                let Error::Header { source, .. } = &e else {
                    unreachable!()
                };
                match source {
                    HeaderError::OutOfMemory {
                        header_len: len,
                        needed: n,
                    } => assert_eq!((*len, *n), (header_len, needed), "{e}"),
                    other => panic!("expected OutOfMemory, got {other:?}"),
                }
                assert!(e.to_string().starts_with(&path.display().to_string()));
            }
            other => panic!("expected an error naming the file, got {other:?}"),
        }
    }
    // With room, the same file opens.
    let ckpt = open_within(&path, 2 * memory_estimate(header_len)).expect("room enough");
    assert_eq!(ckpt.len(), 200_000);
    drop(ckpt);
    std::fs::remove_dir_all(&dir).unwrap();
}
