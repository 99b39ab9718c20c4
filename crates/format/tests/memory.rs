//! The memory estimate bounds what parsing and assembling a header take.
//!
//! A counting allocator measures the peak of the blocks a thread holds while a
//! header is parsed and its checkpoint assembled, with each block rounded
//! as glibc's allocator rounds it (8 bytes of bookkeeping, multiples of 16,
//! at least 32). A reallocation is counted as growing in place: the lists
//! that grow by reallocation while parsing (entries, dimensions) ask for
//! each growth fallibly, so the moment both blocks are held may fail
//! cleanly; the only other one is serde_json's scratch for a string with
//! escapes, no longer than the string. The peak, less the estimate's own
//! probe, must stay within
//! [`memory_estimate`] (plus [`MEMORY_PER_METADATA_BYTE`] per byte of
//! metadata) for the headers that cost the most per byte: the densest
//! entries, long shapes, long names and tiny metadata entries.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;

use weightlift_format::{
    Checkpoint, Dtype, Header, MEMORY_FIXED, MEMORY_PER_HEADER_BYTE, MEMORY_PER_METADATA_BYTE,
    Metadata, PREFIX_LEN, TensorSpec, encode_header, memory_estimate,
};

struct Counting;

// Counted per thread: tests run side by side, and a parse runs on the
// thread that calls it.
thread_local! {
    // Signed: a thread may free blocks that another allocated.
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    /// Allocations of these sizes are the estimate's probes: not counted.
    static PROBES: Cell<[u64; 2]> = const { Cell::new([u64::MAX; 2]) };
}

fn block(size: usize) -> i64 {
    ((size as u64 + 8).div_ceil(16) * 16).max(32) as i64
}

fn is_probe(size: usize) -> bool {
    PROBES
        .try_with(|p| p.get().contains(&(size as u64)))
        .unwrap_or(false)
}

fn grow(size: usize) {
    if is_probe(size) {
        return;
    }
    let _ = LIVE.try_with(|live| {
        live.set(live.get().wrapping_add(block(size)));
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

fn shrink(size: usize) {
    if !is_probe(size) {
        let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(block(size))));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are only read by the tests.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrink(layout.size());
        // SAFETY: the caller's block and layout, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's block, layout and size, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as growing in place (see the module's docs).
            shrink(layout.size());
            grow(new_size);
        }
        p
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// A file (header and data) from tensors and metadata.
fn file(specs: &[TensorSpec], metadata: Option<&Metadata>) -> Vec<u8> {
    let enc = encode_header(specs, metadata).expect("valid");
    let mut file = enc.bytes;
    file.resize(file.len() + enc.data_len as usize, 0);
    file
}

/// The peak of the memory that parsing `file` and assembling it takes,
/// beyond the file itself, and the lengths of its header and metadata.
fn measure(file: &[u8]) -> (u64, u64, u64) {
    let header_len = u64::from_le_bytes(file[..PREFIX_LEN].try_into().unwrap());
    let json: serde_json::Value =
        serde_json::from_slice(&file[PREFIX_LEN..PREFIX_LEN + header_len as usize]).unwrap();
    let metadata_len = json
        .get("__metadata__")
        .map_or(0, |m| serde_json::to_string(m).unwrap().len() as u64);
    drop(json);
    PROBES.set([
        memory_estimate(header_len),
        metadata_len * MEMORY_PER_METADATA_BYTE + MEMORY_FIXED,
    ]);
    let path = PathBuf::from("m.safetensors");
    let base = LIVE.get();
    PEAK.set(base);
    let header = Header::parse_file(file).expect("valid");
    let ckpt = Checkpoint::from_headers(vec![(path, file.len() as u64, header)]).expect("valid");
    let peak = (PEAK.get() - base) as u64;
    drop(ckpt);
    PROBES.set([u64::MAX; 2]);
    (peak, header_len, metadata_len)
}

fn check(what: &str, file: &[u8]) {
    let (peak, header_len, metadata_len) = measure(file);
    let bound =
        memory_estimate(header_len) + metadata_len * MEMORY_PER_METADATA_BYTE + MEMORY_FIXED;
    println!(
        "{what}: header of {header_len} bytes ({metadata_len} of metadata) took {peak} bytes at the peak, {:.2} per byte; estimate {bound}",
        peak as f64 / header_len as f64
    );
    assert!(
        peak <= bound,
        "{what}: {peak} bytes at the peak, more than the estimate of {bound}"
    );
}

/// The shortest distinct names: "", "a", "b", ..., "aa", ...
fn short_name(mut i: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut name = Vec::new();
    while i > 0 {
        i -= 1;
        name.push(ALPHABET[i % ALPHABET.len()]);
        i /= ALPHABET.len();
    }
    String::from_utf8(name).unwrap()
}

#[test]
fn the_factors_are_what_the_docs_say() {
    // On 64-bit targets, which the documentation quotes.
    assert_eq!(MEMORY_PER_HEADER_BYTE, 9);
    assert_eq!(MEMORY_PER_METADATA_BYTE, 59);
}

#[test]
fn dense_entries_stay_within_the_estimate() {
    // Empty tensors: no offsets to grow, so every entry is as short as an
    // entry can be, with the shortest distinct names.
    for n in [1_000, 100_000, 300_000] {
        let specs: Vec<_> = (0..n)
            .map(|i| TensorSpec::new(short_name(i), Dtype::U8, [0]))
            .collect();
        check(&format!("{n} empty tensors"), &file(&specs, None));
        let specs: Vec<_> = (0..n)
            .map(|i| TensorSpec::new(short_name(i), Dtype::U8, []))
            .collect();
        check(&format!("{n} one-byte scalars"), &file(&specs, None));
    }
}

#[test]
fn long_shapes_stay_within_the_estimate() {
    for dims in [5, 9, 1 << 16, (1 << 20) + 1] {
        let specs = [TensorSpec::new("a", Dtype::U8, vec![1; dims])];
        check(
            &format!("a shape of {dims} dimensions"),
            &file(&specs, None),
        );
    }
}

#[test]
fn long_names_stay_within_the_estimate() {
    for len in [25, 100, 10_000] {
        let specs: Vec<_> = (0..1000)
            .map(|i| TensorSpec::new(format!("{i:0len$}"), Dtype::U8, [0]))
            .collect();
        check(&format!("names of {len} bytes"), &file(&specs, None));
    }
}

#[test]
fn tiny_metadata_entries_stay_within_the_estimate() {
    for n in [100, 10_000, 200_000] {
        let metadata: Metadata = (0..n).map(|i| (short_name(i), String::new())).collect();
        let specs = [TensorSpec::new("a", Dtype::U8, [1])];
        check(
            &format!("{n} metadata entries"),
            &file(&specs, Some(&metadata)),
        );
    }
}
