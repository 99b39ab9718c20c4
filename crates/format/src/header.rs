//! Parsing and validating one safetensors header from bytes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::mem::size_of;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::checkpoint::Tensor;
use crate::{ByteRange, Dtype, HeaderError, TensorId, UnknownDtype};

/// Bytes of the little-endian `u64` header length that starts every file.
pub const PREFIX_LEN: usize = 8;

/// The largest header accepted, in bytes (the reference library's limit).
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// How many bytes to read first when the header length is not yet known:
/// enough for the headers of all but the largest checkpoints, so that one
/// read usually suffices.
pub const FIRST_READ_LEN: usize = 64 * 1024;

/// The key under which a header keeps its free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// A header's `__metadata__`: string keys to string values.
pub type Metadata = BTreeMap<String, String>;

/// The fewest header bytes a tensor entry takes:
/// `"":{"dtype":"U8","shape":[],"data_offsets":[0,0]},` is 50.
const MIN_ENTRY_LEN: u64 = 50;

/// The smallest block the system allocator hands out, its bookkeeping
/// included (glibc's, on 64-bit targets).
const MIN_BLOCK: u64 = 32;

/// The block holding a shape of up to four dimensions (a vector's first
/// allocation holds four 8-byte elements; 8 bytes of bookkeeping, rounded
/// up to 16).
const SHAPE_BLOCK: u64 = 48;

/// What one tensor entry holds at the peak, which is checkpoint assembly:
/// its parsed entry twice over (the list of entries grows by doubling), its
/// checkpoint tensor, its share of the name map (a hash table has at most
/// 16/7 slots per entry, each a key, a value and a control byte), its name
/// twice (the map keeps a copy) and its shape's block.
const ENTRY_COST: u64 = 2 * size_of::<TensorInfo>() as u64
    + size_of::<Tensor>() as u64
    + ((size_of::<(String, TensorId)>() as u64 + 1) * 16).div_ceil(7)
    + 2 * MIN_BLOCK
    + SHAPE_BLOCK;

/// Memory that parsing a header and assembling it into a
/// [`Checkpoint`](crate::Checkpoint) may take, per byte of header text,
/// beyond the text itself: an entry's cost over the fewest bytes it can be
/// written in (9 on 64-bit targets). The header's other bytes cost less
/// each: a name byte is kept twice, a dimension of two bytes (`1,`) takes 8
/// in a vector at most half empty, whitespace and ignored fields nothing.
/// The tables that later stages build per tensor (the session's lists,
/// the read plan, the names handed to Python) are smaller than the parsed
/// entries freed after assembly, so they fit in the same room.
pub const MEMORY_PER_HEADER_BYTE: u64 = ENTRY_COST.div_ceil(MIN_ENTRY_LEN);

/// The fewest bytes a `__metadata__` entry takes: `"":"",` is 6.
const MIN_METADATA_ENTRY_LEN: u64 = 6;

/// What one `__metadata__` entry holds at the peak: its slot in the map's
/// nodes (B-tree nodes of eleven entries are at least five full, and the
/// inner nodes above them add less than a fifth: three entries' room in
/// all) and its key's block, twice over (a checkpoint merges its shards'
/// metadata into a copy).
const METADATA_ENTRY_COST: u64 = 2 * (3 * size_of::<(String, String)>() as u64 + MIN_BLOCK);

/// Memory that a header's `__metadata__` may take, per byte of its text,
/// beyond the text (59 on 64-bit targets): many tiny entries cost far more
/// than their text. Long values cost about twice their length.
pub const MEMORY_PER_METADATA_BYTE: u64 = METADATA_ENTRY_COST.div_ceil(MIN_METADATA_ENTRY_LEN);

/// Memory that any header may take whatever its length (the first blocks
/// of each table), beyond the per-byte factors.
pub const MEMORY_FIXED: u64 = 64 << 10;

/// About the most memory, in bytes, that parsing a header of `header_len`
/// bytes and assembling its tensors into a [`Checkpoint`](crate::Checkpoint)
/// takes beyond the text: [`MEMORY_PER_HEADER_BYTE`] per byte, plus
/// [`MEMORY_FIXED`]. Metadata is estimated on its own, once its length is
/// known ([`MEMORY_PER_METADATA_BYTE`] per byte).
///
/// [`Header::parse`] asks for this much (and gives it back) before it
/// builds anything, so that a header the process has no room for is an
/// error ([`HeaderError::OutOfMemory`]) rather than an abort part way.
///
/// ```
/// use weightlift_format::{memory_estimate, MEMORY_FIXED, MEMORY_PER_HEADER_BYTE};
/// assert_eq!(memory_estimate(1000), 1000 * MEMORY_PER_HEADER_BYTE + MEMORY_FIXED);
/// ```
pub fn memory_estimate(header_len: u64) -> u64 {
    header_len
        .saturating_mul(MEMORY_PER_HEADER_BYTE)
        .saturating_add(MEMORY_FIXED)
}

/// Ask the allocator for `bytes` and give them back: whether the process
/// can have that much more memory now. Under an address-space limit
/// (`RLIMIT_AS`) or strict overcommit the allocator refuses what the
/// process cannot have; the pages are never touched, so this costs no
/// resident memory. (Another thread may take the room before it is used.)
fn room_for(bytes: u64) -> bool {
    let Ok(bytes) = usize::try_from(bytes) else {
        return false;
    };
    Vec::<u8>::new().try_reserve_exact(bytes).is_ok()
}

/// One tensor as a header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first (row-major). Empty for a scalar.
    pub shape: Vec<u64>,
    /// The tensor's bytes, relative to the start of the data section.
    pub data: ByteRange,
}

impl TensorInfo {
    /// Number of elements (the product of the shape; 1 for a scalar).
    /// Validated headers guarantee it fits; it saturates otherwise.
    pub fn elements(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }
}

/// A parsed, validated safetensors header.
///
/// Holds every rule of the reference library: a header of at most
/// [`MAX_HEADER_LEN`] bytes, UTF-8 JSON beginning with `{`, tensors whose
/// offsets are sorted, contiguous from 0, without gaps or overlaps, byte
/// lengths equal to shape × dtype width (checked arithmetic; sub-byte totals
/// whole bytes), a data section ending exactly at the end of the file, and
/// `__metadata__` a map of strings. Unlike the reference it also rejects a
/// tensor name given twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    tensors: Vec<TensorInfo>,
    metadata: Option<Metadata>,
    header_len: u64,
}

/// The outcome of [`Header::parse`] on a prefix of a file.
#[derive(Debug)]
pub enum Parsed {
    /// The header is complete and valid.
    Complete(Header),
    /// The header is longer than the bytes given: call again with at least
    /// `total` bytes from the start of the file.
    NeedMore {
        /// The number of bytes from the start of the file that the header spans.
        total: usize,
    },
}

impl Header {
    /// Parse and validate the header at the start of a file of `file_size`
    /// bytes, from `bytes`, a prefix of that file.
    ///
    /// When `bytes` is shorter than the header, returns
    /// [`Parsed::NeedMore`] with the length to read; no more is ever asked
    /// for than `PREFIX_LEN + MAX_HEADER_LEN`, nor more than the file holds.
    ///
    /// ```
    /// use weightlift_format::{Header, Parsed, Dtype};
    ///
    /// let json = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    /// let mut file = (json.len() as u64).to_le_bytes().to_vec();
    /// file.extend_from_slice(json);
    /// file.extend_from_slice(&[0; 8]);
    ///
    /// // Too few bytes: the parser says how many it needs.
    /// let Parsed::NeedMore { total } = Header::parse(&file[..8], file.len() as u64)? else { panic!() };
    /// assert_eq!(total, 8 + json.len());
    ///
    /// let Parsed::Complete(header) = Header::parse(&file, file.len() as u64)? else { panic!() };
    /// assert_eq!(header.tensors()[0].dtype, Dtype::F32);
    /// # Ok::<(), weightlift_format::HeaderError>(())
    /// ```
    pub fn parse(bytes: &[u8], file_size: u64) -> Result<Parsed, HeaderError> {
        let Some(total) = header_span(bytes, file_size)? else {
            return Ok(Parsed::NeedMore { total: PREFIX_LEN });
        };
        let Some(json) = bytes.get(PREFIX_LEN..total) else {
            return Ok(Parsed::NeedMore { total });
        };
        let header = parse_json(json)?;
        let expected_size =
            (total as u64)
                .checked_add(header.data_len())
                .ok_or(HeaderError::DataTooLarge {
                    data_len: header.data_len(),
                })?;
        if expected_size != file_size {
            return Err(HeaderError::DataSizeMismatch {
                expected_size,
                file_size,
            });
        }
        Ok(Parsed::Complete(header))
    }

    /// Parse the header of a file held entirely in memory.
    pub fn parse_file(file: &[u8]) -> Result<Header, HeaderError> {
        match Header::parse(file, file.len() as u64)? {
            Parsed::Complete(h) => Ok(h),
            // `header_span` checked the header fits in the file, so all of
            // it is in `file`.
            Parsed::NeedMore { .. } => unreachable!("a whole file holds its header"),
        }
    }

    /// The tensors, sorted by their offset in the data section.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The header's `__metadata__`, if it has one.
    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.as_ref()
    }

    /// Length of the JSON header in bytes (the value of the length prefix).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Absolute file offset where the data section starts.
    pub fn data_start(&self) -> u64 {
        PREFIX_LEN as u64 + self.header_len
    }

    /// Length of the data section in bytes.
    pub fn data_len(&self) -> u64 {
        self.tensors.last().map_or(0, |t| t.data.end)
    }

    /// Take the tensors and metadata out of the header.
    pub fn into_parts(self) -> (Vec<TensorInfo>, Option<Metadata>) {
        (self.tensors, self.metadata)
    }
}

/// From the first bytes of a file, the number of bytes its header spans
/// (prefix included), or `None` when fewer than [`PREFIX_LEN`] bytes were given.
///
/// Checks the announced length against [`MAX_HEADER_LEN`] and the file's size.
pub fn header_span(bytes: &[u8], file_size: u64) -> Result<Option<usize>, HeaderError> {
    if file_size < PREFIX_LEN as u64 {
        return Err(HeaderError::TooShort { file_size });
    }
    let Some(prefix) = bytes.first_chunk::<PREFIX_LEN>() else {
        return Ok(None);
    };
    let header_len = u64::from_le_bytes(*prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(HeaderError::TooLarge {
            header_len,
            max: MAX_HEADER_LEN,
        });
    }
    // At most MAX_HEADER_LEN + 8, so neither the sum nor the cast can overflow.
    let total = PREFIX_LEN as u64 + header_len;
    if total > file_size {
        return Err(HeaderError::BeyondFile {
            header_len,
            file_size,
        });
    }
    Ok(Some(total as usize))
}

/// Parse and validate the JSON text of a header (the bytes after the prefix).
fn parse_json(json: &[u8]) -> Result<Header, HeaderError> {
    parse_json_with(json, &room_for)
}

/// [`parse_json`], asking `room` whether the process can have a number of
/// bytes more.
fn parse_json_with(json: &[u8], room: &dyn Fn(u64) -> bool) -> Result<Header, HeaderError> {
    let text = std::str::from_utf8(json).map_err(|e| HeaderError::NotUtf8 {
        offset: (PREFIX_LEN + e.valid_up_to()) as u64,
    })?;
    match json.first() {
        Some(b'{') => {}
        found => {
            return Err(HeaderError::NotAnObject {
                found: found.copied(),
            });
        }
    }
    // Before building anything, make sure there is room for all of it: an
    // allocation that fails part way would abort the process.
    let header_len = json.len() as u64;
    let out_of_memory = |needed| HeaderError::OutOfMemory { header_len, needed };
    if !room(memory_estimate(header_len)) {
        return Err(out_of_memory(memory_estimate(header_len)));
    }
    // One pass over the JSON; when an entry fails, `failed` names it.
    let mut failed = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let entries = EntriesSeed {
        failed: &mut failed,
    }
    .deserialize(&mut de)
    .and_then(|e| de.end().map(|()| e));
    if entries.is_err() && failed.is_some() {
        // An entry failed before the parser reached the end. If the text
        // is not JSON at all, that is the more basic fault: report it. (Only
        // on this error path; skipping values is iterative, so deep
        // nesting cannot exhaust the stack.)
        if let Err(source) = serde_json::from_str::<de::IgnoredAny>(text) {
            return Err(HeaderError::Json { source });
        }
    }
    let Entries {
        mut tensors,
        metadata,
    } = match (entries, failed) {
        (Ok(e), _) => e,
        (Err(_), Some(Failed::DuplicateMetadata)) => return Err(HeaderError::DuplicateMetadata),
        (Err(_), Some(Failed::OutOfMemory)) => {
            return Err(out_of_memory(memory_estimate(header_len)));
        }
        (Err(_), Some(Failed::Dtype { tensor, dtype })) => {
            return Err(HeaderError::UnknownDtype { tensor, dtype });
        }
        // The text is JSON (checked above): the entry has the wrong shape.
        (Err(source), Some(Failed::Entry(tensor))) => {
            return Err(HeaderError::InvalidEntry { tensor, source });
        }
        (Err(source), _) => return Err(HeaderError::Json { source }),
    };
    let metadata = match metadata {
        Some(raw) => {
            let needed = (raw.get().len() as u64)
                .saturating_mul(MEMORY_PER_METADATA_BYTE)
                .saturating_add(MEMORY_FIXED);
            if !room(needed) {
                return Err(out_of_memory(needed));
            }
            parse_metadata(raw)?
        }
        None => None,
    };
    let mut seen = HashSet::new();
    if seen.try_reserve(tensors.len()).is_err() {
        return Err(out_of_memory(memory_estimate(header_len)));
    }
    for t in &tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(HeaderError::DuplicateTensor {
                tensor: t.name.clone(),
            });
        }
    }
    drop(seen);
    for t in &tensors {
        if t.data.end < t.data.start {
            return Err(HeaderError::OffsetsReversed {
                tensor: t.name.clone(),
                start: t.data.start,
                end: t.data.end,
            });
        }
    }
    // Files written by other tools may list tensors in any order; the
    // reference sorts by offsets before checking them, and so do we. The sort
    // is stable, so equal offsets (empty tensors) keep the header's order.
    tensors.sort_by_key(|t| (t.data.start, t.data.end));
    validate_layout(&tensors)?;
    Ok(Header {
        tensors,
        metadata,
        header_len,
    })
}

/// Bytes that a tensor of `dtype` and `shape` occupies, with checked
/// arithmetic: its element count and bit count must fit in 64 bits and the
/// bits must fill whole bytes.
pub(crate) fn tensor_bytes(name: &str, dtype: Dtype, shape: &[u64]) -> Result<u64, HeaderError> {
    let overflow = || HeaderError::ShapeOverflow {
        tensor: name.to_owned(),
        shape: shape.to_vec(),
        dtype,
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    if elements.checked_mul(u64::from(dtype.bits())).is_none() {
        return Err(overflow());
    }
    dtype
        .bytes_for(elements)
        .ok_or_else(|| HeaderError::PartialByte {
            tensor: name.to_owned(),
            elements,
            dtype,
        })
}

/// Check that tensors sorted by offset tile the data section exactly and
/// that each one's byte length is what its shape and dtype need.
fn validate_layout(tensors: &[TensorInfo]) -> Result<(), HeaderError> {
    let mut expected = 0u64;
    let mut previous: Option<&TensorInfo> = None;
    for t in tensors {
        if t.data.start > expected {
            return Err(HeaderError::Gap {
                tensor: t.name.clone(),
                expected,
                found: t.data.start,
            });
        }
        if t.data.start < expected {
            return Err(HeaderError::Overlap {
                tensor: t.name.clone(),
                // `expected` > 0 only after a tensor was seen.
                previous: previous.map(|p| p.name.clone()).unwrap_or_default(),
                expected,
                found: t.data.start,
            });
        }
        let bytes = tensor_bytes(&t.name, t.dtype, &t.shape)?;
        if bytes != t.data.len() {
            return Err(HeaderError::SizeMismatch {
                tensor: t.name.clone(),
                expected: bytes,
                found: t.data.len(),
            });
        }
        expected = t.data.end;
        previous = Some(t);
    }
    Ok(())
}

fn parse_metadata(raw: &RawValue) -> Result<Option<Metadata>, HeaderError> {
    // Straight into the map, skipping non-string values without building
    // them, so memory stays proportional to the strings kept.
    match serde_json::from_str(raw.get()) {
        Ok(MetaObject::Null) => Ok(None),
        Ok(MetaObject::Map(m)) => Ok(Some(m)),
        Ok(MetaObject::NotString { key, found }) => {
            Err(HeaderError::MetadataNotString { key, found })
        }
        Err(_) => {
            let found = match raw.get().trim_start().as_bytes().first() {
                Some(b'[') => "an array",
                Some(b'"') => "a string",
                Some(b't' | b'f') => "a boolean",
                _ => "a number",
            };
            Err(HeaderError::MetadataNotMap { found })
        }
    }
}

/// `__metadata__`: `null`, an object of strings (a key given twice keeps
/// its last value), or the first entry, in order, whose value is not a
/// string.
enum MetaObject {
    Null,
    Map(Metadata),
    NotString { key: String, found: &'static str },
}

impl<'de> Deserialize<'de> for MetaObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings, or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<MetaObject, E> {
                Ok(MetaObject::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaObject, A::Error> {
                // Entries go straight into the map, so a key given many
                // times holds one entry, not one per time.
                let mut out = Metadata::new();
                while let Some((key, value)) = map.next_entry::<String, MetaValue>()? {
                    match value {
                        MetaValue::Str(s) => {
                            out.insert(key, s);
                        }
                        MetaValue::Other(found) => {
                            drop(out);
                            while map
                                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                                .is_some()
                            {}
                            return Ok(MetaObject::NotString { key, found });
                        }
                    }
                }
                Ok(MetaObject::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A metadata value: a string, or the JSON type found instead (its
/// contents skipped, iteratively, without being built).
enum MetaValue {
    Str(String),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for MetaValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetaValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<MetaValue, E> {
                Ok(MetaValue::Str(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<MetaValue, E> {
                Ok(MetaValue::Str(s))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MetaValue, E> {
                Ok(MetaValue::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MetaValue, E> {
                Ok(MetaValue::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MetaValue, E> {
                Ok(MetaValue::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MetaValue, E> {
                Ok(MetaValue::Other("a number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<MetaValue, E> {
                Ok(MetaValue::Other("null"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<MetaValue, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(MetaValue::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetaValue, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(MetaValue::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Which entry made the single-pass parse fail.
enum Failed {
    /// This tensor's entry is malformed.
    Entry(String),
    /// This tensor's dtype is not one the format defines.
    Dtype { tensor: String, dtype: String },
    /// `__metadata__` appears twice.
    DuplicateMetadata,
    /// Memory for the entries could not be allocated.
    OutOfMemory,
}

/// The header's entries: tensors in the order written (not yet validated,
/// so that a name given twice is seen) and the raw `__metadata__`.
struct Entries<'a> {
    tensors: Vec<TensorInfo>,
    metadata: Option<&'a RawValue>,
}

struct EntriesSeed<'s> {
    failed: &'s mut Option<Failed>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Entries<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // The list grows as entries come, each growth asked for fallibly.
        let mut out = Entries {
            tensors: Vec::new(),
            metadata: None,
        };
        while let Some(name) = map.next_key::<String>()? {
            if name == METADATA_KEY {
                // Its value is checked after the parse, with precise errors.
                let raw: &'de RawValue = map.next_value()?;
                if out.metadata.replace(raw).is_some() {
                    *self.failed = Some(Failed::DuplicateMetadata);
                    return Err(de::Error::custom("__metadata__ appears twice"));
                }
                continue;
            }
            let entry: RawTensor = match map.next_value() {
                Ok(e) => e,
                Err(e) => {
                    *self.failed = Some(Failed::Entry(name));
                    return Err(e);
                }
            };
            let dtype = match entry.dtype {
                DtypeName::Known(d) => d,
                DtypeName::Unknown(dtype) => {
                    *self.failed = Some(Failed::Dtype {
                        tensor: name,
                        dtype,
                    });
                    return Err(de::Error::custom("unknown dtype"));
                }
            };
            let Dims::Parsed(shape) = entry.shape else {
                *self.failed = Some(Failed::OutOfMemory);
                return Err(de::Error::custom("out of memory"));
            };
            if out.tensors.try_reserve(1).is_err() {
                *self.failed = Some(Failed::OutOfMemory);
                return Err(de::Error::custom("out of memory"));
            }
            let [start, end] = entry.data_offsets;
            out.tensors.push(TensorInfo {
                name,
                dtype,
                shape,
                // Reversed offsets are reported after the parse, by tensor.
                data: ByteRange { start, end },
            });
        }
        Ok(out)
    }
}

/// One tensor entry before validation. Unknown fields are ignored, as the
/// reference library ignores them.
#[derive(Deserialize)]
struct RawTensor {
    dtype: DtypeName,
    shape: Dims,
    data_offsets: [u64; 2],
}

/// A shape as written: its dimensions, or the note that there was no
/// memory for them (an error would be taken for a malformed entry).
enum Dims {
    Parsed(Vec<u64>),
    OutOfMemory,
}

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    // Asked for fallibly: a shape may be most of the header.
                    if dims.try_reserve(1).is_err() {
                        drop(dims);
                        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                        return Ok(Dims::OutOfMemory);
                    }
                    dims.push(d);
                }
                Ok(Dims::Parsed(dims))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A dtype as written: known, or kept verbatim for the error.
enum DtypeName {
    Known(Dtype),
    Unknown(String),
}

impl<'de> Deserialize<'de> for DtypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DtypeName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dtype name")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DtypeName, E> {
                Ok(match s.parse() {
                    Ok(d) => DtypeName::Known(d),
                    Err(UnknownDtype(s)) => DtypeName::Unknown(s),
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &[u8] =
        br#"{"__metadata__":{"k":"v"},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;

    #[test]
    fn the_estimate_grows_with_the_header() {
        assert_eq!(memory_estimate(0), MEMORY_FIXED);
        assert_eq!(
            memory_estimate(MAX_HEADER_LEN),
            MAX_HEADER_LEN * MEMORY_PER_HEADER_BYTE + MEMORY_FIXED
        );
        assert_eq!(memory_estimate(u64::MAX), u64::MAX);
    }

    #[test]
    fn room_for_what_no_process_can_have_is_refused() {
        assert!(room_for(1 << 20));
        assert!(!room_for(u64::MAX));
        assert!(!room_for(isize::MAX as u64 + 1));
    }

    #[test]
    fn no_room_for_the_header_is_an_error_before_anything_is_built() {
        let asked = std::cell::Cell::new(Vec::new());
        let refuse = |n| {
            let mut a = asked.take();
            a.push(n);
            asked.set(a);
            false
        };
        match parse_json_with(JSON, &refuse) {
            Err(HeaderError::OutOfMemory { header_len, needed }) => {
                assert_eq!(header_len, JSON.len() as u64);
                assert_eq!(needed, memory_estimate(header_len));
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        // Asked once, before the entries were parsed.
        assert_eq!(asked.take(), [memory_estimate(JSON.len() as u64)]);
    }

    #[test]
    fn no_room_for_the_metadata_is_an_error() {
        let metadata_len = br#"{"k":"v"}"#.len() as u64;
        let metadata_need = metadata_len * MEMORY_PER_METADATA_BYTE + MEMORY_FIXED;
        let header_need = memory_estimate(JSON.len() as u64);
        assert_ne!(metadata_need, header_need);
        let refuse_metadata = |n| n != metadata_need;
        match parse_json_with(JSON, &refuse_metadata) {
            Err(e @ HeaderError::OutOfMemory { .. }) => {
                let HeaderError::OutOfMemory { header_len, needed } = e else {
                    unreachable!()
                };
                assert_eq!((header_len, needed), (JSON.len() as u64, metadata_need));
                assert_eq!(
                    e.to_string(),
                    format!(
                        "header of {} bytes needs about {metadata_need} bytes of memory, which could not be allocated",
                        JSON.len()
                    )
                );
                assert_eq!(e.tensor(), None);
            }
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        assert!(parse_json_with(JSON, &|_| true).is_ok());
    }

    #[test]
    fn metadata_keeps_the_last_value_of_a_key_and_reports_the_first_non_string() {
        let h = parse_json(br#"{"__metadata__":{"a":"1","b":"2","a":"3"}}"#).unwrap();
        let m = h.metadata().unwrap();
        assert_eq!((m["a"].as_str(), m["b"].as_str(), m.len()), ("3", "2", 2));
        match parse_json(br#"{"__metadata__":{"a":"1","b":2,"c":[],"d":"4"}}"#) {
            Err(HeaderError::MetadataNotString { key, found }) => {
                assert_eq!((key.as_str(), found), ("b", "a number"));
            }
            other => panic!("expected MetadataNotString, got {other:?}"),
        }
    }
}
