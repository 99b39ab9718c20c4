//! The hostile-header corpus: whole safetensors files that a loader must
//! reject with a precise [`HeaderError`], and a few unusual but valid ones it
//! must accept.
//!
//! [`entries`] builds every file deterministically from code; the committed
//! copies in `tests/corpus/` are written by [`write_all`] (run as
//! `cargo xtask corpus`) and checked byte for byte by the corpus tests, so the
//! two cannot drift. Each [`Entry`] says why the file is hostile and, as an
//! [`Expect`], exactly which error [`Header::parse_file`] must give.
//!
//! ```
//! use weightlift_format::Header;
//! use weightlift_tests::corpus::entries;
//!
//! for e in entries() {
//!     assert!(e.expect.matches(&Header::parse_file(&e.bytes)), "{}", e.name);
//! }
//! ```
//!
//! [`Header::parse_file`]: weightlift_format::Header::parse_file

use std::fmt::Write as _;
use std::path::Path;

use weightlift_format::{Dtype, Header, HeaderError};

/// One file of the corpus.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file's name without the `.safetensors` extension.
    pub name: &'static str,
    /// The whole file: 8-byte little-endian header length, header, data.
    pub bytes: Vec<u8>,
    /// What [`Header::parse_file`](weightlift_format::Header::parse_file) must return.
    pub expect: Expect,
    /// What is hostile (or unusual) about the file, in one line.
    pub why: &'static str,
}

impl Entry {
    /// The file's name on disk: `<name>.safetensors`.
    pub fn file_name(&self) -> String {
        format!("{}.safetensors", self.name)
    }
}

/// The result a corpus file must give: a valid header, or one
/// [`HeaderError`] variant with the fields that identify the fault.
///
/// Fields that hold a parser's message (the `serde_json::Error` of
/// [`HeaderError::Json`] and [`HeaderError::InvalidEntry`]) are not compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The header is valid and has this many tensors.
    Valid {
        /// Number of tensors (`__metadata__` excluded).
        tensors: usize,
    },
    /// [`HeaderError::TooShort`].
    TooShort {
        /// The file's size.
        file_size: u64,
    },
    /// [`HeaderError::TooLarge`].
    TooLarge {
        /// The announced header length.
        header_len: u64,
    },
    /// [`HeaderError::BeyondFile`].
    BeyondFile {
        /// The announced header length.
        header_len: u64,
        /// The file's size.
        file_size: u64,
    },
    /// [`HeaderError::NotUtf8`].
    NotUtf8 {
        /// Absolute offset of the first invalid byte.
        offset: u64,
    },
    /// [`HeaderError::NotAnObject`].
    NotAnObject {
        /// The header's first byte, if any.
        found: Option<u8>,
    },
    /// [`HeaderError::Json`].
    Json,
    /// [`HeaderError::DuplicateMetadata`].
    DuplicateMetadata,
    /// [`HeaderError::DataTooLarge`].
    DataTooLarge {
        /// The data section's length as laid out.
        data_len: u64,
    },
    /// [`HeaderError::DuplicateTensor`].
    DuplicateTensor {
        /// The repeated name.
        tensor: &'static str,
    },
    /// [`HeaderError::InvalidEntry`].
    InvalidEntry {
        /// The tensor whose entry is malformed.
        tensor: &'static str,
    },
    /// [`HeaderError::UnknownDtype`].
    UnknownDtype {
        /// The tensor.
        tensor: &'static str,
        /// The dtype as written.
        dtype: &'static str,
    },
    /// [`HeaderError::MetadataNotMap`].
    MetadataNotMap {
        /// The JSON type found.
        found: &'static str,
    },
    /// [`HeaderError::MetadataNotString`].
    MetadataNotString {
        /// The key.
        key: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
    /// [`HeaderError::ShapeOverflow`].
    ShapeOverflow {
        /// The tensor.
        tensor: &'static str,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// [`HeaderError::PartialByte`].
    PartialByte {
        /// The tensor.
        tensor: &'static str,
        /// Its element count.
        elements: u64,
        /// Its dtype.
        dtype: Dtype,
    },
    /// [`HeaderError::OffsetsReversed`].
    OffsetsReversed {
        /// The tensor.
        tensor: &'static str,
        /// `data_offsets[0]`.
        start: u64,
        /// `data_offsets[1]`.
        end: u64,
    },
    /// [`HeaderError::SizeMismatch`].
    SizeMismatch {
        /// The tensor.
        tensor: &'static str,
        /// Bytes its shape and dtype need.
        expected: u64,
        /// Bytes its offsets span.
        found: u64,
    },
    /// [`HeaderError::Gap`].
    Gap {
        /// The tensor after the gap.
        tensor: &'static str,
        /// Where it should start.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// [`HeaderError::Overlap`].
    Overlap {
        /// The later tensor.
        tensor: &'static str,
        /// The tensor it overlaps.
        previous: &'static str,
        /// Where it should start.
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// [`HeaderError::DataSizeMismatch`].
    DataSizeMismatch {
        /// Where the header says the file ends.
        expected_size: u64,
        /// The file's size.
        file_size: u64,
    },
}

impl Expect {
    /// Whether the file must be rejected.
    pub fn is_error(&self) -> bool {
        !matches!(self, Expect::Valid { .. })
    }

    /// The tensor the expected error is about, as [`HeaderError::tensor`] gives it.
    pub fn tensor(&self) -> Option<&'static str> {
        use Expect::*;
        match self {
            DuplicateTensor { tensor }
            | InvalidEntry { tensor }
            | UnknownDtype { tensor, .. }
            | ShapeOverflow { tensor, .. }
            | PartialByte { tensor, .. }
            | OffsetsReversed { tensor, .. }
            | SizeMismatch { tensor, .. }
            | Gap { tensor, .. }
            | Overlap { tensor, .. } => Some(tensor),
            _ => None,
        }
    }

    /// Whether `result` is exactly what this expectation names.
    pub fn matches(&self, result: &Result<Header, HeaderError>) -> bool {
        match result {
            Ok(h) => matches!(self, Expect::Valid { tensors } if *tensors == h.tensors().len()),
            Err(e) => self.matches_error(e),
        }
    }

    /// Whether `err` is the error this expectation names, with the same fields.
    pub fn matches_error(&self, err: &HeaderError) -> bool {
        use HeaderError as H;
        match (self, err) {
            (Expect::TooShort { file_size: a }, H::TooShort { file_size: b }) => a == b,
            (Expect::TooLarge { header_len: a }, H::TooLarge { header_len: b, .. }) => a == b,
            (
                Expect::BeyondFile {
                    header_len,
                    file_size,
                },
                H::BeyondFile {
                    header_len: h,
                    file_size: f,
                },
            ) => (header_len, file_size) == (h, f),
            (Expect::NotUtf8 { offset: a }, H::NotUtf8 { offset: b }) => a == b,
            (Expect::NotAnObject { found: a }, H::NotAnObject { found: b }) => a == b,
            (Expect::Json, H::Json { .. }) => true,
            (Expect::DuplicateMetadata, H::DuplicateMetadata) => true,
            (Expect::DataTooLarge { data_len: a }, H::DataTooLarge { data_len: b }) => a == b,
            (Expect::DuplicateTensor { tensor: a }, H::DuplicateTensor { tensor: b })
            | (Expect::InvalidEntry { tensor: a }, H::InvalidEntry { tensor: b, .. }) => a == b,
            (
                Expect::UnknownDtype { tensor, dtype },
                H::UnknownDtype {
                    tensor: t,
                    dtype: d,
                },
            ) => tensor == t && dtype == d,
            (Expect::MetadataNotMap { found: a }, H::MetadataNotMap { found: b }) => a == b,
            (
                Expect::MetadataNotString { key, found },
                H::MetadataNotString { key: k, found: f },
            ) => key == k && found == f,
            (
                Expect::ShapeOverflow {
                    tensor,
                    shape,
                    dtype,
                },
                H::ShapeOverflow {
                    tensor: t,
                    shape: s,
                    dtype: d,
                },
            ) => tensor == t && shape == s && dtype == d,
            (
                Expect::PartialByte {
                    tensor,
                    elements,
                    dtype,
                },
                H::PartialByte {
                    tensor: t,
                    elements: n,
                    dtype: d,
                },
            ) => tensor == t && elements == n && dtype == d,
            (
                Expect::OffsetsReversed { tensor, start, end },
                H::OffsetsReversed {
                    tensor: t,
                    start: s,
                    end: e,
                },
            ) => tensor == t && (start, end) == (s, e),
            (
                Expect::SizeMismatch {
                    tensor,
                    expected,
                    found,
                },
                H::SizeMismatch {
                    tensor: t,
                    expected: x,
                    found: f,
                },
            )
            | (
                Expect::Gap {
                    tensor,
                    expected,
                    found,
                },
                H::Gap {
                    tensor: t,
                    expected: x,
                    found: f,
                },
            ) => tensor == t && (expected, found) == (x, f),
            (
                Expect::Overlap {
                    tensor,
                    previous,
                    expected,
                    found,
                },
                H::Overlap {
                    tensor: t,
                    previous: p,
                    expected: x,
                    found: f,
                },
            ) => tensor == t && previous == p && (expected, found) == (x, f),
            (
                Expect::DataSizeMismatch {
                    expected_size,
                    file_size,
                },
                H::DataSizeMismatch {
                    expected_size: x,
                    file_size: f,
                },
            ) => (expected_size, file_size) == (x, f),
            _ => false,
        }
    }
}

/// Depth of the deeply nested JSON files: far beyond any recursion limit,
/// enough to overflow the stack of a naive recursive parser.
pub const DEEP: usize = 100_000;

/// Depth of the deeply nested objects: less than [`DEEP`] to keep the file
/// small (6 bytes a level), still far beyond any recursion limit.
pub const DEEP_OBJECTS: usize = 30_000;

/// A file whose length prefix is `header_len`, followed by `rest`.
fn raw(header_len: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = header_len.to_le_bytes().to_vec();
    out.extend_from_slice(rest);
    out
}

/// A file with header `json` (length prefix exact) and `data_len` zero bytes of data.
fn file(json: &[u8], data_len: usize) -> Vec<u8> {
    let mut out = raw(json.len() as u64, json);
    out.resize(out.len() + data_len, 0);
    out
}

/// The size of [`file`]`(json, data_len)`.
fn size(json: &str, data_len: usize) -> u64 {
    (8 + json.len() + data_len) as u64
}

/// A tensor entry `"name":{...}` as the reference writer spells it.
fn tensor(name: &str, dtype: &str, shape: &str, start: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":[{shape}],"data_offsets":[{start},{end}]}}"#)
}

/// Every file of the corpus, in a fixed order; names are unique.
pub fn entries() -> Vec<Entry> {
    let mut v = Vec::new();
    let mut add = |name, bytes, expect, why| {
        v.push(Entry {
            name,
            bytes,
            expect,
            why,
        })
    };

    // --- The length prefix and the file's size. ---
    add(
        "empty",
        Vec::new(),
        Expect::TooShort { file_size: 0 },
        "0 bytes: no room for the 8-byte header length",
    );
    add(
        "five-bytes",
        vec![2, 0, 0, 0, 0],
        Expect::TooShort { file_size: 5 },
        "5 bytes: a truncated header length",
    );
    add(
        "zero-header-len",
        raw(0, b""),
        Expect::NotAnObject { found: None },
        "header length 0: an empty header",
    );
    add(
        "header-beyond-file",
        raw(1000, b"{}"),
        Expect::BeyondFile {
            header_len: 1000,
            file_size: 10,
        },
        "header length 1000 in a 10-byte file",
    );
    add(
        "header-len-one-past-file",
        raw(3, b"{}"),
        Expect::BeyondFile {
            header_len: 3,
            file_size: 10,
        },
        "header length one byte more than the file holds",
    );
    add(
        "header-too-large",
        raw(100_000_001, b"{}"),
        Expect::TooLarge {
            header_len: 100_000_001,
        },
        "header length 100,000,001: one over the format's limit",
    );
    add(
        "header-len-u64-max",
        raw(u64::MAX, b"{}"),
        Expect::TooLarge {
            header_len: u64::MAX,
        },
        "header length u64::MAX: overflows any offset arithmetic",
    );
    add(
        "header-len-2-pow-63",
        raw(1 << 63, b"{}"),
        Expect::TooLarge {
            header_len: 1 << 63,
        },
        "header length 2^63: negative as a signed 64-bit integer",
    );

    // --- The data section's size. ---
    let one = format!("{{{}}}", tensor("w", "F32", "4", 0, 16));
    add(
        "truncated-data",
        file(one.as_bytes(), 8),
        Expect::DataSizeMismatch {
            expected_size: size(&one, 16),
            file_size: size(&one, 8),
        },
        "the header describes 16 bytes of data, the file holds 8",
    );
    add(
        "no-data",
        file(one.as_bytes(), 0),
        Expect::DataSizeMismatch {
            expected_size: size(&one, 16),
            file_size: size(&one, 0),
        },
        "the header describes 16 bytes of data, the file ends after the header",
    );
    add(
        "trailing-bytes",
        file(one.as_bytes(), 20),
        Expect::DataSizeMismatch {
            expected_size: size(&one, 16),
            file_size: size(&one, 20),
        },
        "4 bytes after the last tensor's data",
    );

    // --- The header's encoding and JSON. ---
    let mut bad = br#"{"w"#.to_vec();
    bad.push(0xff);
    bad.extend_from_slice(br#"":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#);
    add(
        "not-utf8",
        file(&bad, 1),
        Expect::NotUtf8 { offset: 8 + 3 },
        "byte 0xff inside a tensor name",
    );
    let mut bad = br#"{"w"#.to_vec();
    bad.extend_from_slice(&[0xed, 0xa0, 0x80]);
    bad.extend_from_slice(br#"":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}"#);
    add(
        "utf8-surrogate",
        file(&bad, 1),
        Expect::NotUtf8 { offset: 8 + 3 },
        "a UTF-16 surrogate (U+D800) encoded as UTF-8, which UTF-8 forbids",
    );
    add(
        "json-array",
        file(b"[]", 0),
        Expect::NotAnObject { found: Some(b'[') },
        "the header is a JSON array",
    );
    add(
        "json-string",
        file(br#""{}""#, 0),
        Expect::NotAnObject { found: Some(b'"') },
        "the header is a JSON string",
    );
    add(
        "leading-whitespace",
        file(b" {}", 0),
        Expect::NotAnObject { found: Some(b' ') },
        "a space before the opening brace (the format requires '{' first)",
    );
    add(
        "invalid-json",
        file(br#"{"w":}"#, 0),
        Expect::Json,
        "a key without a value",
    );
    add(
        "unterminated-json",
        file(
            br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]"#,
            4,
        ),
        Expect::Json,
        "the object is never closed",
    );
    add(
        "trailing-garbage",
        file(b"{}x", 0),
        Expect::Json,
        "a byte after the closing brace that is not whitespace",
    );
    add(
        "nul-padding",
        file(b"{}\0\0\0\0\0\0", 0),
        Expect::Json,
        "the header padded with NUL bytes instead of spaces",
    );
    let deep = format!(r#"{{"a":{}{}}}"#, "[".repeat(DEEP), "]".repeat(DEEP));
    add(
        "deep-array",
        file(deep.as_bytes(), 0),
        Expect::InvalidEntry { tensor: "a" },
        "a tensor entry of arrays nested 100,000 deep: must not overflow the stack (skipped without recursion, then rejected as an entry)",
    );
    let deep = format!(
        r#"{{"a":{}1{}}}"#,
        r#"{"a":"#.repeat(DEEP_OBJECTS),
        "}".repeat(DEEP_OBJECTS)
    );
    add(
        "deep-object",
        file(deep.as_bytes(), 0),
        Expect::InvalidEntry { tensor: "a" },
        "a tensor entry of objects nested 30,000 deep: must not overflow the stack (skipped without recursion, then rejected as an entry)",
    );
    let deep = format!(
        r#"{{"__metadata__":{}{}}}"#,
        "[".repeat(DEEP),
        "]".repeat(DEEP)
    );
    add(
        "deep-metadata",
        file(deep.as_bytes(), 0),
        Expect::MetadataNotMap { found: "an array" },
        "__metadata__ of arrays nested 100,000 deep: must not overflow the stack (rejected as an array without descending into it)",
    );
    let deep = format!(r#"{{"a":{}"#, "[".repeat(DEEP));
    add(
        "deep-unterminated",
        file(deep.as_bytes(), 0),
        Expect::Json,
        "100,000 opening brackets that are never closed",
    );

    // --- Tensor layout. ---
    let j = format!(
        "{{{},{}}}",
        tensor("a", "F32", "2", 0, 8),
        tensor("b", "F32", "2", 4, 12)
    );
    add(
        "overlap",
        file(j.as_bytes(), 12),
        Expect::Overlap {
            tensor: "b",
            previous: "a",
            expected: 8,
            found: 4,
        },
        "tensor b starts inside tensor a",
    );
    let j = format!(
        "{{{},{}}}",
        tensor("a", "F32", "1", 0, 4),
        tensor("b", "F32", "1", 0, 4)
    );
    add(
        "same-offsets",
        file(j.as_bytes(), 4),
        Expect::Overlap {
            tensor: "b",
            previous: "a",
            expected: 4,
            found: 0,
        },
        "two tensors share the same bytes",
    );
    let j = format!(
        "{{{},{}}}",
        tensor("a", "F32", "1", 0, 4),
        tensor("b", "F32", "1", 8, 12)
    );
    add(
        "gap",
        file(j.as_bytes(), 12),
        Expect::Gap {
            tensor: "b",
            expected: 4,
            found: 8,
        },
        "4 unused bytes between tensors a and b",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "1", 4, 8));
    add(
        "not-from-zero",
        file(j.as_bytes(), 8),
        Expect::Gap {
            tensor: "a",
            expected: 0,
            found: 4,
        },
        "the first tensor starts at offset 4, not 0",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "1", 8, 4));
    add(
        "offsets-reversed",
        file(j.as_bytes(), 8),
        Expect::OffsetsReversed {
            tensor: "a",
            start: 8,
            end: 4,
        },
        "data_offsets [8, 4]: the end is before the start",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "1", u64::MAX, u64::MAX - 4));
    add(
        "offsets-reversed-huge",
        file(j.as_bytes(), 0),
        Expect::OffsetsReversed {
            tensor: "a",
            start: u64::MAX,
            end: u64::MAX - 4,
        },
        "data_offsets near u64::MAX, reversed: their length underflows",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "2", 0, 4));
    add(
        "size-mismatch",
        file(j.as_bytes(), 4),
        Expect::SizeMismatch {
            tensor: "a",
            expected: 8,
            found: 4,
        },
        "2 F32 elements need 8 bytes, data_offsets span 4",
    );
    // Sixteen valid tensors whose data ends at byte 2^64 - 1 of the data
    // section: each is fine, but no file can hold them after a header.
    let big = 1u64 << 60;
    let mut parts: Vec<String> = (0..15u64)
        .map(|i| {
            tensor(
                &format!("t{i}"),
                "U8",
                &big.to_string(),
                i * big,
                (i + 1) * big,
            )
        })
        .collect();
    let last = u64::MAX - 15 * big;
    parts.push(tensor("t15", "U8", &last.to_string(), 15 * big, u64::MAX));
    let j = format!("{{{}}}", parts.join(","));
    add(
        "data-beyond-u64",
        file(j.as_bytes(), 0),
        Expect::DataTooLarge { data_len: u64::MAX },
        "valid tensors laying out 2^64 - 1 bytes of data: the file's end overflows 64 bits",
    );
    let j = format!("{{{}}}", tensor("a", "U8", "1", 0, u64::MAX));
    add(
        "offset-end-u64-max",
        file(j.as_bytes(), 1),
        Expect::SizeMismatch {
            tensor: "a",
            expected: 1,
            found: u64::MAX,
        },
        "data_offsets end at u64::MAX: the data section's end overflows any file offset",
    );
    let shape = vec![u64::MAX, 2];
    let j = format!(
        "{{{}}}",
        tensor("a", "F32", &format!("{},2", u64::MAX), 0, 0)
    );
    add(
        "shape-overflow",
        file(j.as_bytes(), 0),
        Expect::ShapeOverflow {
            tensor: "a",
            shape,
            dtype: Dtype::F32,
        },
        "shape [u64::MAX, 2]: the element count overflows 64 bits",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "4294967296,4294967296", 0, 0));
    add(
        "shape-overflow-wraps-to-zero",
        file(j.as_bytes(), 0),
        Expect::ShapeOverflow {
            tensor: "a",
            shape: vec![1 << 32, 1 << 32],
            dtype: Dtype::F32,
        },
        "shape [2^32, 2^32]: an unchecked product wraps to 0, matching data_offsets [0, 0]",
    );
    let half = u64::MAX / 2;
    let j = format!("{{{}}}", tensor("a", "F64", &half.to_string(), 0, 0));
    add(
        "bits-overflow",
        file(j.as_bytes(), 0),
        Expect::ShapeOverflow {
            tensor: "a",
            shape: vec![half],
            dtype: Dtype::F64,
        },
        "F64 of u64::MAX/2 elements: the count fits, its size in bits does not",
    );
    let j = format!(
        "{{{}}}",
        tensor("a", "F4", &(1u64 << 62).to_string(), 0, 1 << 61)
    );
    add(
        "f4-bits-overflow",
        file(j.as_bytes(), 0),
        Expect::ShapeOverflow {
            tensor: "a",
            shape: vec![1 << 62],
            dtype: Dtype::F4,
        },
        "F4 of 2^62 elements: 2^61 bytes, but 2^64 bits overflow",
    );
    let j = format!("{{{}}}", tensor("a", "F4", "3", 0, 2));
    add(
        "f4-odd",
        file(j.as_bytes(), 2),
        Expect::PartialByte {
            tensor: "a",
            elements: 3,
            dtype: Dtype::F4,
        },
        "3 F4 elements are 12 bits: not a whole number of bytes",
    );
    let j = format!("{{{}}}", tensor("a", "F6_E2M3", "2", 0, 2));
    add(
        "f6-partial",
        file(j.as_bytes(), 2),
        Expect::PartialByte {
            tensor: "a",
            elements: 2,
            dtype: Dtype::F6E2M3,
        },
        "2 F6_E2M3 elements are 12 bits: not a whole number of bytes",
    );

    // --- Tensor entries. ---
    let j = format!("{{{}}}", tensor("a", "F128", "1", 0, 16));
    add(
        "dtype-f128",
        file(j.as_bytes(), 16),
        Expect::UnknownDtype {
            tensor: "a",
            dtype: "F128",
        },
        "dtype F128, which the format does not define",
    );
    let j = format!("{{{}}}", tensor("a", "f32", "1", 0, 4));
    add(
        "dtype-lowercase",
        file(j.as_bytes(), 4),
        Expect::UnknownDtype {
            tensor: "a",
            dtype: "f32",
        },
        "dtype f32: names are case-sensitive",
    );
    let j = r#"{"a":{"dtype":5,"shape":[1],"data_offsets":[0,1]}}"#;
    add(
        "dtype-not-string",
        file(j.as_bytes(), 1),
        Expect::InvalidEntry { tensor: "a" },
        "dtype is a number",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "-1", 0, 4));
    add(
        "negative-dim",
        file(j.as_bytes(), 4),
        Expect::InvalidEntry { tensor: "a" },
        "shape [-1]",
    );
    let j = format!("{{{}}}", tensor("a", "F32", "1.5", 0, 4));
    add(
        "fractional-dim",
        file(j.as_bytes(), 4),
        Expect::InvalidEntry { tensor: "a" },
        "shape [1.5]",
    );
    let j = format!("{{{}}}", tensor("a", "U8", "18446744073709551616", 0, 0));
    add(
        "dim-beyond-u64",
        file(j.as_bytes(), 0),
        Expect::InvalidEntry { tensor: "a" },
        "shape [2^64]: a dimension that does not fit 64 bits",
    );
    let j = r#"{"a":{"dtype":"F32","shape":[1]}}"#;
    add(
        "missing-offsets",
        file(j.as_bytes(), 4),
        Expect::InvalidEntry { tensor: "a" },
        "no data_offsets",
    );
    let j = r#"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#;
    add(
        "missing-shape",
        file(j.as_bytes(), 4),
        Expect::InvalidEntry { tensor: "a" },
        "no shape",
    );
    let j = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#;
    add(
        "three-offsets",
        file(j.as_bytes(), 8),
        Expect::InvalidEntry { tensor: "a" },
        "data_offsets with 3 elements",
    );
    let j = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#;
    add(
        "negative-offset",
        file(j.as_bytes(), 4),
        Expect::InvalidEntry { tensor: "a" },
        "data_offsets [-4, 0]",
    );
    let j = r#"{"a":1}"#;
    add(
        "entry-not-object",
        file(j.as_bytes(), 0),
        Expect::InvalidEntry { tensor: "a" },
        "a tensor entry that is a number",
    );
    let j = format!(
        "{{{},{}}}",
        tensor("a", "F32", "1", 0, 4),
        tensor("a", "I32", "1", 0, 4)
    );
    add(
        "duplicate-names",
        file(j.as_bytes(), 4),
        Expect::DuplicateTensor { tensor: "a" },
        "tensor a is given twice, with different dtypes (the reference library keeps the last)",
    );
    let j = r#"{"__metadata__":{},"__metadata__":{}}"#;
    add(
        "duplicate-metadata",
        file(j.as_bytes(), 0),
        Expect::DuplicateMetadata,
        "__metadata__ is given twice",
    );

    // --- __metadata__. ---
    add(
        "metadata-number-value",
        file(br#"{"__metadata__":{"k":1}}"#, 0),
        Expect::MetadataNotString {
            key: "k",
            found: "a number",
        },
        "a __metadata__ value that is a number",
    );
    add(
        "metadata-object-value",
        file(br#"{"__metadata__":{"k":{"x":"y"}}}"#, 0),
        Expect::MetadataNotString {
            key: "k",
            found: "an object",
        },
        "a __metadata__ value that is an object",
    );
    add(
        "metadata-array",
        file(br#"{"__metadata__":["k","v"]}"#, 0),
        Expect::MetadataNotMap { found: "an array" },
        "__metadata__ is an array",
    );
    add(
        "metadata-string",
        file(br#"{"__metadata__":"k=v"}"#, 0),
        Expect::MetadataNotMap { found: "a string" },
        "__metadata__ is a string",
    );

    // --- Unusual but valid files. ---
    add(
        "valid-empty",
        file(b"{}", 0),
        Expect::Valid { tensors: 0 },
        "valid: no tensors, no data",
    );
    add(
        "valid-space-padded",
        file(b"{}      ", 0),
        Expect::Valid { tensors: 0 },
        "valid: the header padded with spaces to 8 bytes, as the reference writer does",
    );
    let j = format!("{{{}}}", tensor("s", "F32", "", 0, 4));
    add(
        "valid-scalar",
        file(j.as_bytes(), 4),
        Expect::Valid { tensors: 1 },
        "valid: a scalar (shape []) holds one element",
    );
    let j = format!(
        "{{{},{},{}}}",
        tensor("z", "F32", "0,4", 0, 0),
        tensor("a", "BF16", "2", 0, 4),
        tensor("e", "F4", "0", 4, 4)
    );
    add(
        "valid-zero-elements",
        file(j.as_bytes(), 4),
        Expect::Valid { tensors: 3 },
        "valid: tensors with a 0 dimension take no bytes and may share an offset",
    );
    let j = format!(
        r#"{{"__metadata__":null,{}}}"#,
        tensor("a", "U8", "1", 0, 1)
    );
    add(
        "valid-metadata-null",
        file(j.as_bytes(), 1),
        Expect::Valid { tensors: 1 },
        "valid: __metadata__ is null",
    );
    let j = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"layout":{"x":[1,2]}}}"#;
    add(
        "valid-extra-field",
        file(j.as_bytes(), 4),
        Expect::Valid { tensors: 1 },
        "valid: an unknown field in a tensor entry, which the reference library ignores",
    );
    let j = format!(
        r#"{{{},"__metadata__":{{"format":"pt"}},{}}}"#,
        tensor("b", "F16", "2,2", 8, 16),
        tensor("a", "I64", "1", 0, 8)
    );
    add(
        "valid-unsorted",
        file(j.as_bytes(), 16),
        Expect::Valid { tensors: 2 },
        "valid: tensors listed out of offset order, __metadata__ between them",
    );
    let mut j = String::from("{");
    let mut offset = 0;
    for (i, d) in Dtype::ALL.iter().enumerate() {
        // 8 elements fill whole bytes for every width.
        let len = u64::from(d.bits());
        if i > 0 {
            j.push(',');
        }
        j.push_str(&tensor(d.as_str(), d.as_str(), "2,4", offset, offset + len));
        offset += len;
    }
    j.push('}');
    add(
        "valid-all-dtypes",
        file(j.as_bytes(), offset as usize),
        Expect::Valid {
            tensors: Dtype::ALL.len(),
        },
        "valid: one tensor of every dtype, sub-byte ones included",
    );
    let j = format!(
        r#"{{"__metadata__":{{"long":"{}"}},{}}}"#,
        "x".repeat(70_000),
        tensor("a", "U8", "3", 0, 3)
    );
    add(
        "valid-long-header",
        file(j.as_bytes(), 3),
        Expect::Valid { tensors: 1 },
        "valid: a 70 KB header, longer than a loader's first read",
    );
    v
}

/// The text of `tests/corpus/README.md`: a table of every file.
pub fn readme(entries: &[Entry]) -> String {
    let mut s = String::from(
        "# Hostile-header corpus\n\
         \n\
         Whole safetensors files (8-byte little-endian header length, JSON header,\n\
         data) that `Header::parse` must reject with exactly the error named here, and a\n\
         few unusual files it must accept. They are generated by\n\
         `weightlift_tests::corpus::entries()` (tests/src/corpus.rs); regenerate them\n\
         and this README with `cargo xtask corpus`. The tests in tests/tests/corpus.rs\n\
         check that these files match the generator byte for byte, that each gives its\n\
         error (from memory and through `Checkpoint::open`), and that the reference\n\
         `safetensors` crate rejects them too, except where noted in that test. The\n\
         fuzz target `fuzz/fuzz_targets/header.rs` is seeded from this directory.\n\
         \n\
         Do not edit these files by hand.\n\
         \n\
         | File | What is hostile about it | Must give |\n\
         |---|---|---|\n",
    );
    for e in entries {
        let expect = match &e.expect {
            Expect::Valid { tensors } => format!("Ok ({tensors} tensors)"),
            other => format!("`{other:?}`"),
        };
        // Writing to a String cannot fail.
        let _ = writeln!(s, "| `{}` | {} | {} |", e.file_name(), e.why, expect);
    }
    s
}

/// Write every entry to `dir` as `<name>.safetensors`, and `README.md`;
/// remove any other `.safetensors` file there, so that `dir` holds exactly
/// the corpus. Creates `dir` if needed.
pub fn write_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let entries = entries();
    for item in std::fs::read_dir(dir)? {
        let path = item?.path();
        let stale = path.extension().is_some_and(|e| e == "safetensors")
            && !entries
                .iter()
                .any(|e| path.file_name().is_some_and(|n| *n == *e.file_name()));
        if stale {
            std::fs::remove_file(&path)?;
        }
    }
    for e in &entries {
        std::fs::write(dir.join(e.file_name()), &e.bytes)?;
    }
    std::fs::write(dir.join("README.md"), readme(&entries))
}
