//! Fuzz `Header::parse_file` and `Header::parse` on a prefix of the file.
//!
//! Checks, besides not panicking:
//! - `Header::parse` on a prefix never asks for more than the file holds,
//!   and following its requests gives the same result as `parse_file`;
//! - a header that parses re-encodes with `encode_header` (same names,
//!   dtypes and shapes in offset order, same metadata) into a file that
//!   parses to the same tensors and metadata.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weightlift_format::{
    Header, HeaderError, MAX_HEADER_LEN, PREFIX_LEN, Parsed, TensorSpec, encode_header,
};

/// A comparable rendering of a result: errors by their message (which holds
/// every field), headers as themselves.
fn same(a: &Result<Header, HeaderError>, b: &Result<Header, HeaderError>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// Parse from the first `k` bytes, then from what the parser asks for.
fn parse_piecemeal(data: &[u8], mut k: usize) -> Result<Header, HeaderError> {
    let size = data.len() as u64;
    // The length prefix, then the header: two requests at most.
    for _ in 0..3 {
        match Header::parse(&data[..k], size)? {
            Parsed::Complete(h) => return Ok(h),
            Parsed::NeedMore { total } => {
                assert!(
                    total <= data.len(),
                    "asked for {total} of a {}-byte file",
                    data.len()
                );
                assert!(total > k, "asked for {total} having {k}");
                assert!(total as u64 <= PREFIX_LEN as u64 + MAX_HEADER_LEN);
                k = total;
            }
        }
    }
    panic!("still asking for more after {k} bytes");
}

fuzz_target!(|data: &[u8]| {
    let whole = Header::parse_file(data);

    // A prefix length derived from the data: its last two bytes, so that
    // the fuzzer can steer it, reduced to the file's length.
    let k = match data {
        [.., a, b] => usize::from(u16::from_le_bytes([*a, *b])) % (data.len() + 1),
        _ => data.len(),
    };
    for k in [k, 0, PREFIX_LEN.min(data.len())] {
        let piecemeal = parse_piecemeal(data, k);
        assert!(
            same(&whole, &piecemeal),
            "from {k} bytes: {piecemeal:?}, whole file: {whole:?}"
        );
    }

    let Ok(header) = whole else { return };
    // Validated headers are sorted by offset, contiguous from 0.
    let specs: Vec<TensorSpec> = header
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let enc = encode_header(&specs, header.metadata())
        .unwrap_or_else(|e| panic!("a parsed header does not re-encode: {e}"));
    assert_eq!(enc.data_len, header.data_len());
    let mut file = enc.bytes;
    file.resize(file.len() + enc.data_len as usize, 0);
    let again = Header::parse_file(&file)
        .unwrap_or_else(|e| panic!("a re-encoded header does not parse: {e}"));
    assert_eq!(again.tensors(), header.tensors());
    assert_eq!(again.metadata(), header.metadata());
});
