//! Errors of header parsing and checkpoint assembly.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::Dtype;

/// Why the bytes of one safetensors header were rejected.
///
/// Offsets in `data_offsets`-related variants are relative to the start of
/// the data section, as written in the header; other offsets are absolute
/// positions in the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum HeaderError {
    /// The file is shorter than the 8-byte length prefix.
    TooShort {
        /// Size of the file in bytes.
        file_size: u64,
    },
    /// The length prefix announces a header above the format's limit.
    TooLarge {
        /// The announced header length.
        header_len: u64,
        /// The largest header accepted.
        max: u64,
    },
    /// The length prefix announces a header that runs past the end of the file.
    BeyondFile {
        /// The announced header length.
        header_len: u64,
        /// Size of the file in bytes.
        file_size: u64,
    },
    /// The header is not valid UTF-8.
    NotUtf8 {
        /// Absolute file offset of the first invalid byte.
        offset: u64,
    },
    /// The header does not begin with `{`.
    NotAnObject {
        /// The first byte of the header, if there is one.
        found: Option<u8>,
    },
    /// The header is not well-formed JSON, or not a JSON object.
    Json {
        /// The parser's error, with line and column inside the header.
        source: serde_json::Error,
    },
    /// Two entries of the header have the same name. (The reference library
    /// silently keeps the last one.)
    DuplicateTensor {
        /// The repeated name.
        tensor: String,
    },
    /// `__metadata__` appears twice in the header.
    DuplicateMetadata,
    /// A tensor's entry lacks `dtype`, `shape` or `data_offsets`, or one of
    /// them has the wrong JSON type (a negative or fractional dimension, say).
    InvalidEntry {
        /// The tensor.
        tensor: String,
        /// What the entry parser found.
        source: serde_json::Error,
    },
    /// A tensor's dtype is not one the format defines.
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The dtype as written.
        dtype: String,
    },
    /// `__metadata__` is neither a JSON object nor `null`.
    MetadataNotMap {
        /// The JSON type found instead.
        found: &'static str,
    },
    /// A `__metadata__` value is not a string.
    MetadataNotString {
        /// The key whose value is not a string.
        key: String,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// The product of a tensor's shape, or its size in bits, overflows 64 bits.
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A sub-byte tensor whose elements do not fill a whole number of bytes.
    PartialByte {
        /// The tensor.
        tensor: String,
        /// Number of elements.
        elements: u64,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A tensor's `data_offsets` end before they start.
    OffsetsReversed {
        /// The tensor.
        tensor: String,
        /// `data_offsets[0]`.
        start: u64,
        /// `data_offsets[1]`.
        end: u64,
    },
    /// A tensor's byte length differs from shape × dtype width.
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes that its shape and dtype need.
        expected: u64,
        /// Bytes that its `data_offsets` span.
        found: u64,
    },
    /// Tensors sorted by offset leave unused bytes between them (or before the first).
    Gap {
        /// The tensor after the gap.
        tensor: String,
        /// Where it should start (the previous tensor's end).
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// A tensor starts before the previous one (in offset order) ends.
    Overlap {
        /// The later tensor.
        tensor: String,
        /// The tensor it overlaps.
        previous: String,
        /// Where it should start (the previous tensor's end).
        expected: u64,
        /// Where it starts.
        found: u64,
    },
    /// The data section, as the header lays it out, does not end exactly at
    /// the end of the file: the file is truncated, or has trailing bytes.
    DataSizeMismatch {
        /// Where the header says the file ends.
        expected_size: u64,
        /// Its size.
        file_size: u64,
    },
    /// The data section the header lays out is longer than any file can be
    /// (its end does not fit in 64 bits).
    DataTooLarge {
        /// Length of the data section as the header lays it out.
        data_len: u64,
    },
    /// A tensor name (when writing a header) is the reserved `__metadata__`.
    ReservedName,
    /// The memory that reading or parsing the header needs could not be
    /// allocated: the process may not have that much more (an address-space
    /// limit, strict overcommit). Not a fault of the file.
    OutOfMemory {
        /// The header's length.
        header_len: u64,
        /// The bytes asked for, about what the header needs (see
        /// [`memory_estimate`](crate::memory_estimate)).
        needed: u64,
    },
}

impl HeaderError {
    /// The tensor this error is about, if it is about one.
    pub fn tensor(&self) -> Option<&str> {
        use HeaderError::*;
        match self {
            DuplicateTensor { tensor }
            | InvalidEntry { tensor, .. }
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
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HeaderError::*;
        match self {
            TooShort { file_size } => write!(
                f,
                "file of {file_size} bytes is too short for the 8-byte header length"
            ),
            TooLarge { header_len, max } => {
                write!(
                    f,
                    "header length {header_len} exceeds the limit of {max} bytes"
                )
            }
            BeyondFile {
                header_len,
                file_size,
            } => write!(
                f,
                "header length {header_len} runs past the end of the file ({file_size} bytes)"
            ),
            NotUtf8 { offset } => {
                write!(f, "header is not UTF-8 (invalid byte at offset {offset})")
            }
            NotAnObject { found: Some(b) } => {
                write!(f, "header does not start with '{{' (found byte 0x{b:02x})")
            }
            NotAnObject { found: None } => write!(f, "header is empty"),
            Json { source } => write!(f, "header is not a valid JSON object: {source}"),
            DuplicateTensor { tensor } => {
                write!(f, "tensor {tensor:?} appears twice in the header")
            }
            DuplicateMetadata => write!(f, "__metadata__ appears twice in the header"),
            InvalidEntry { tensor, source } => {
                write!(f, "tensor {tensor:?}: invalid entry: {source}")
            }
            UnknownDtype { tensor, dtype } => {
                write!(f, "tensor {tensor:?}: unknown dtype {dtype:?}")
            }
            MetadataNotMap { found } => {
                write!(
                    f,
                    "__metadata__ must be an object of strings, found {found}"
                )
            }
            MetadataNotString { key, found } => {
                write!(f, "__metadata__[{key:?}] must be a string, found {found}")
            }
            ShapeOverflow {
                tensor,
                shape,
                dtype,
            } => write!(
                f,
                "tensor {tensor:?}: shape {shape:?} of {dtype} overflows 64 bits"
            ),
            PartialByte {
                tensor,
                elements,
                dtype,
            } => write!(
                f,
                "tensor {tensor:?}: {elements} elements of {dtype} do not fill a whole number of bytes"
            ),
            OffsetsReversed { tensor, start, end } => {
                write!(
                    f,
                    "tensor {tensor:?}: data_offsets [{start}, {end}] end before they start"
                )
            }
            SizeMismatch {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?}: data_offsets span {found} bytes but shape and dtype need {expected}"
            ),
            Gap {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?}: data starts at {found}, leaving a gap after offset {expected}"
            ),
            Overlap {
                tensor,
                previous,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?}: data starts at {found}, overlapping {previous:?} which ends at {expected}"
            ),
            DataSizeMismatch {
                expected_size,
                file_size,
            } if file_size < expected_size => write!(
                f,
                "file is truncated: the header describes {expected_size} bytes, the file has {file_size}"
            ),
            DataSizeMismatch {
                expected_size,
                file_size,
            } => write!(
                f,
                "file has {} trailing bytes: the header describes {expected_size} bytes, the file has {file_size}",
                file_size - expected_size
            ),
            DataTooLarge { data_len } => write!(
                f,
                "the header lays out {data_len} bytes of data, more than a file can hold"
            ),
            ReservedName => write!(f, "\"__metadata__\" cannot name a tensor"),
            OutOfMemory { header_len, needed } => write!(
                f,
                "header of {header_len} bytes needs about {needed} bytes of memory, which could not be allocated"
            ),
        }
    }
}

impl std::error::Error for HeaderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HeaderError::Json { source } | HeaderError::InvalidEntry { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why a ServerlessLLM checkpoint (`tensor_index.json` and its
/// `tensor.data_*` partitions) was rejected. Offsets are into the
/// partitions laid end to end, as the index writes them.
#[derive(Debug)]
#[non_exhaustive]
pub enum SllmError {
    /// The index is not UTF-8.
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: u64,
    },
    /// The index is not well-formed JSON, or not a JSON object.
    Json {
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// A tensor's entry is not `[offset, size, shape, stride, dtype]` of
    /// non-negative integers that fit 64 bits, lists of them, and a string
    /// (or its offset plus size overflows 64 bits).
    InvalidEntry {
        /// The tensor.
        tensor: String,
        /// What the entry parser found.
        source: serde_json::Error,
    },
    /// A name appears twice in the index.
    DuplicateTensor {
        /// The repeated name.
        tensor: String,
    },
    /// A dtype that is not a torch dtype name with a safetensors equivalent.
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// The dtype as written.
        dtype: String,
    },
    /// The product of the shape, or its size in bytes, overflows 64 bits.
    ShapeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// The stride has not one entry per dimension.
    StrideRank {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its stride.
        stride: Vec<u64>,
    },
    /// The stride is not that of a contiguous tensor of the shape.
    NotContiguous {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its stride.
        stride: Vec<u64>,
    },
    /// The record's size differs from shape × dtype width.
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Bytes that its shape and dtype need.
        expected: u64,
        /// The size the index gives.
        found: u64,
    },
    /// A record overlaps another (two names for the very same record are
    /// allowed: tied weights).
    Overlap {
        /// The later tensor, in offset order.
        tensor: String,
        /// The tensor it overlaps.
        previous: String,
        /// Where the later one starts.
        start: u64,
        /// Where the earlier one ends.
        previous_end: u64,
    },
    /// A record ends past the end of the last partition.
    PastPartitions {
        /// The tensor.
        tensor: String,
        /// Where its record ends.
        end: u64,
        /// The partitions' sizes added up.
        total: u64,
        /// How many partitions there are.
        partitions: usize,
    },
    /// A record starts in one partition and ends in the next (the format's
    /// writer never does this).
    SpansPartitions {
        /// The tensor.
        tensor: String,
        /// Where its record starts.
        start: u64,
        /// Where its record ends.
        end: u64,
        /// The partition it starts in.
        partition: PathBuf,
        /// Where that partition ends.
        partition_end: u64,
    },
    /// The index lists tensors but the first partition does not exist.
    MissingPartition {
        /// The first tensor (in offset order).
        tensor: String,
        /// The partition that is missing.
        partition: PathBuf,
    },
    /// A partition is missing from the numbering while a later one exists.
    PartitionGap {
        /// The missing partition.
        missing: PathBuf,
        /// A later partition that exists.
        found: PathBuf,
    },
    /// Where the directory cannot be listed, more partitions answered
    /// than are looked for.
    TooManyPartitions {
        /// How many are looked for.
        limit: u64,
    },
    /// The partitions' sizes add up to more than 64 bits.
    PartitionsTooLarge {
        /// The partition at which the sum overflowed.
        partition: PathBuf,
    },
    /// Memory for the index's entries could not be allocated.
    OutOfMemory {
        /// The index's length in bytes.
        index_len: u64,
    },
}

impl SllmError {
    /// The tensor this error is about, if it is about one.
    pub fn tensor(&self) -> Option<&str> {
        use SllmError::*;
        match self {
            InvalidEntry { tensor, .. }
            | DuplicateTensor { tensor }
            | UnknownDtype { tensor, .. }
            | ShapeOverflow { tensor, .. }
            | StrideRank { tensor, .. }
            | NotContiguous { tensor, .. }
            | SizeMismatch { tensor, .. }
            | Overlap { tensor, .. }
            | PastPartitions { tensor, .. }
            | SpansPartitions { tensor, .. }
            | MissingPartition { tensor, .. } => Some(tensor),
            _ => None,
        }
    }
}

impl fmt::Display for SllmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use SllmError::*;
        match self {
            NotUtf8 { offset } => write!(f, "index is not UTF-8 (invalid byte at offset {offset})"),
            Json { source } => write!(f, "index is not a valid JSON object: {source}"),
            InvalidEntry { tensor, source } => write!(
                f,
                "tensor {tensor:?}: invalid entry (expected [offset, size, shape, stride, dtype]): {source}"
            ),
            DuplicateTensor { tensor } => write!(f, "tensor {tensor:?} appears twice in the index"),
            UnknownDtype { tensor, dtype } => {
                write!(f, "tensor {tensor:?}: unknown dtype {dtype:?}")
            }
            ShapeOverflow {
                tensor,
                shape,
                dtype,
            } => write!(
                f,
                "tensor {tensor:?}: shape {shape:?} of {dtype} overflows 64 bits"
            ),
            StrideRank {
                tensor,
                shape,
                stride,
            } => write!(
                f,
                "tensor {tensor:?}: stride {stride:?} does not have one entry per dimension of shape {shape:?}"
            ),
            NotContiguous {
                tensor,
                shape,
                stride,
            } => write!(
                f,
                "tensor {tensor:?}: stride {stride:?} is not contiguous for shape {shape:?} (only contiguous tensors are supported)"
            ),
            SizeMismatch {
                tensor,
                expected,
                found,
            } => write!(
                f,
                "tensor {tensor:?}: size {found} but shape and dtype need {expected} bytes"
            ),
            Overlap {
                tensor,
                previous,
                start,
                previous_end,
            } => write!(
                f,
                "tensor {tensor:?}: data starts at {start}, overlapping {previous:?} which ends at {previous_end}"
            ),
            PastPartitions {
                tensor,
                end,
                total,
                partitions,
            } => write!(
                f,
                "tensor {tensor:?}: data ends at {end}, past the end of the {partitions} partition(s) ({total} bytes): a partition is missing or truncated"
            ),
            SpansPartitions {
                tensor,
                start,
                end,
                partition,
                partition_end,
            } => write!(
                f,
                "tensor {tensor:?}: data [{start}, {end}) runs past the end of {} at {partition_end} into the next partition",
                partition.display()
            ),
            MissingPartition { tensor, partition } => write!(
                f,
                "tensor {tensor:?}: partition {} does not exist",
                partition.display()
            ),
            PartitionGap { missing, found } => write!(
                f,
                "partition {} is missing, but {} exists",
                missing.display(),
                found.display()
            ),
            TooManyPartitions { limit } => write!(
                f,
                "more than {limit} partitions answer, found by opening them in turn (the directory cannot be listed)"
            ),
            PartitionsTooLarge { partition } => write!(
                f,
                "the partitions' sizes overflow 64 bits at {}",
                partition.display()
            ),
            OutOfMemory { index_len } => write!(
                f,
                "no memory for the entries of an index of {index_len} bytes"
            ),
        }
    }
}

impl std::error::Error for SllmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SllmError::Json { source } | SllmError::InvalidEntry { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An error opening a checkpoint: a bad header, an unreadable file, or
/// shards and an index that do not agree. Every variant names the file.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A shard's header was rejected.
    Header {
        /// The shard.
        file: PathBuf,
        /// Why.
        source: HeaderError,
    },
    /// A file could not be opened, read or listed.
    Io {
        /// The file or directory.
        file: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file changed size while its header was being read.
    Changed {
        /// The file.
        file: PathBuf,
    },
    /// A directory holds no `.safetensors` file.
    NoShards {
        /// The directory.
        dir: PathBuf,
    },
    /// A directory holds several `*.safetensors.index.json` files, so which
    /// shards form the checkpoint is ambiguous.
    AmbiguousIndex {
        /// The directory.
        dir: PathBuf,
        /// The index files found.
        found: Vec<PathBuf>,
    },
    /// The same file was given twice.
    DuplicateFile {
        /// The file.
        file: PathBuf,
    },
    /// Two shards both contain a tensor of this name.
    DuplicateTensor {
        /// The tensor.
        tensor: String,
        /// The shard where it appeared first.
        first: PathBuf,
        /// The shard where it appeared again.
        second: PathBuf,
    },
    /// An index file is not valid `model.safetensors.index.json` JSON.
    Index {
        /// The index file.
        file: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// An index file is larger than any plausible index.
    IndexTooLarge {
        /// The index file.
        file: PathBuf,
        /// Its size.
        size: u64,
        /// The largest accepted.
        max: u64,
    },
    /// An index's `weight_map` names a shard outside the index's directory
    /// (an absolute path, or one with `..`).
    IndexPath {
        /// The index file.
        file: PathBuf,
        /// The tensor whose entry is bad.
        tensor: String,
        /// The shard path as written.
        shard: String,
    },
    /// An index's `weight_map` lists a tensor twice.
    IndexDuplicate {
        /// The index file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
    },
    /// An index's `weight_map` lists no tensor.
    IndexEmpty {
        /// The index file.
        file: PathBuf,
    },
    /// An index's `weight_map` and the shards' headers disagree about a tensor.
    IndexMismatch {
        /// The index file.
        file: PathBuf,
        /// The tensor.
        tensor: String,
        /// The shard the index names, if it names one.
        listed: Option<PathBuf>,
        /// The shard whose header holds the tensor, if any does.
        found: Option<PathBuf>,
    },
    /// A ServerlessLLM checkpoint was rejected.
    Sllm {
        /// Its `tensor_index.json`.
        file: PathBuf,
        /// Why.
        source: SllmError,
    },
    /// More shards or tensors than a 32-bit id can number.
    TooMany {
        /// The file where the limit was reached.
        file: PathBuf,
        /// `"shards"` or `"tensors"`.
        what: &'static str,
    },
}

impl Error {
    /// The file or directory this error is about.
    pub fn file(&self) -> &std::path::Path {
        use Error::*;
        match self {
            Header { file, .. }
            | Io { file, .. }
            | Changed { file }
            | DuplicateFile { file }
            | Index { file, .. }
            | IndexTooLarge { file, .. }
            | IndexPath { file, .. }
            | IndexDuplicate { file, .. }
            | IndexEmpty { file }
            | IndexMismatch { file, .. }
            | Sllm { file, .. }
            | TooMany { file, .. } => file,
            NoShards { dir } | AmbiguousIndex { dir, .. } => dir,
            DuplicateTensor { second, .. } => second,
        }
    }

    /// The tensor this error is about, if it is about one.
    pub fn tensor(&self) -> Option<&str> {
        match self {
            Error::Header { source, .. } => source.tensor(),
            Error::Sllm { source, .. } => source.tensor(),
            Error::DuplicateTensor { tensor, .. }
            | Error::IndexDuplicate { tensor, .. }
            | Error::IndexPath { tensor, .. }
            | Error::IndexMismatch { tensor, .. } => Some(tensor),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            Header { file, source } => write!(f, "{}: {source}", file.display()),
            Io { file, source } => write!(f, "{}: {source}", file.display()),
            Changed { file } => write!(
                f,
                "{}: file changed while its header was read",
                file.display()
            ),
            NoShards { dir } => write!(f, "{}: no .safetensors files in directory", dir.display()),
            AmbiguousIndex { dir, found } => write!(
                f,
                "{}: {} index files ({}); name the one to load",
                dir.display(),
                found.len(),
                found
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            DuplicateFile { file } => write!(f, "{}: file given twice", file.display()),
            DuplicateTensor {
                tensor,
                first,
                second,
            } => write!(
                f,
                "{}: tensor {tensor:?} is also in {}",
                second.display(),
                first.display()
            ),
            Index { file, source } => write!(f, "{}: invalid index: {source}", file.display()),
            IndexTooLarge { file, size, max } => write!(
                f,
                "{}: index of {size} bytes exceeds the limit of {max}",
                file.display()
            ),
            IndexPath {
                file,
                tensor,
                shard,
            } => write!(
                f,
                "{}: tensor {tensor:?} maps to {shard:?}, which is outside the index's directory",
                file.display()
            ),
            IndexDuplicate { file, tensor } => {
                write!(
                    f,
                    "{}: tensor {tensor:?} is listed twice in the weight_map",
                    file.display()
                )
            }
            IndexEmpty { file } => write!(f, "{}: the weight_map lists no tensor", file.display()),
            IndexMismatch {
                file,
                tensor,
                listed,
                found,
            } => {
                write!(f, "{}: tensor {tensor:?} ", file.display())?;
                match (listed, found) {
                    (Some(l), Some(s)) => write!(
                        f,
                        "is listed in {} but found in {}",
                        l.display(),
                        s.display()
                    ),
                    (Some(l), None) => {
                        write!(f, "is listed in {} but no shard has it", l.display())
                    }
                    (None, Some(s)) => write!(f, "is in {} but not in the weight_map", s.display()),
                    (None, None) => write!(f, "is inconsistent"),
                }
            }
            Sllm { file, source } => write!(f, "{}: {source}", file.display()),
            TooMany { file, what } => {
                write!(
                    f,
                    "{}: more {what} than a checkpoint can number",
                    file.display()
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Header { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::Index { source, .. } => Some(source),
            Error::Sllm { source, .. } => Some(source),
            _ => None,
        }
    }
}
