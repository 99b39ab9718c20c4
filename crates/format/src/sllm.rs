//! The ServerlessLLM checkpoint format: `tensor_index.json` beside the data
//! partitions `tensor.data_0`, `tensor.data_1`, ...
//!
//! The index maps each tensor's name to `[offset, size, shape, stride,
//! dtype]`. `offset` is a byte offset into the partitions laid end to end
//! (partition `i` holds the offsets from the sum of the sizes of the
//! partitions before it), `size` the bytes of the tensor's record, `shape`
//! and `stride` torch's sizes and strides in elements, and `dtype` torch's
//! name for the dtype (`"torch.bfloat16"`). Partitions have no header: the
//! tensors' bytes are all they hold, each record padded to 8 bytes and each
//! partition to the block size its writer used.
//!
//! ServerlessLLM's writer starts a new partition before a record that would
//! take the current one past its limit (10 GiB), so a tensor never spans two
//! partitions; a tensor sharing its storage with another (tied weights) is
//! written once and both names point at it. What is accepted here:
//!
//! - each entry is exactly `[offset, size, shape, stride, dtype]` with
//!   non-negative integers that fit 64 bits, and a dtype torch names;
//! - a name appears once;
//! - `size` is the tensor's bytes, shape × dtype width (a record holding
//!   more than its tensor is the storage of several views, whose other
//!   views' bytes cannot be told apart: rejected);
//! - strides are those of a contiguous tensor of that shape, by torch's rule
//!   (dimensions of size 1 may have any stride; an empty tensor any strides);
//! - records do not overlap, except that two names may have the very same
//!   record (tied weights);
//! - every record lies inside one partition, and the partitions are
//!   numbered from 0 without a gap.
//!
//! [`SllmIndex::parse`] checks what the index alone says;
//! [`Checkpoint::from_sllm`] places the tensors in the partitions, with no I/O.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::checkpoint::{Checkpoint, Shard, Tensor};
use crate::header::tensor_bytes;
use crate::{ByteRange, Dtype, Error, FileId, HeaderError, SllmError, TensorId};

/// The name of a ServerlessLLM checkpoint's index file.
pub const SLLM_INDEX: &str = "tensor_index.json";

/// What the names of ServerlessLLM data partitions start with; the
/// partition's number follows (`tensor.data_0`).
pub const SLLM_PARTITION_PREFIX: &str = "tensor.data_";

/// The dtype of a torch dtype name as `str(tensor.dtype)` spells it
/// (`"torch.float16"`), or `None` for a name torch does not give or that
/// has no safetensors equivalent.
pub fn torch_dtype(name: &str) -> Option<Dtype> {
    Some(match name.strip_prefix("torch.")? {
        "bool" => Dtype::Bool,
        "uint8" => Dtype::U8,
        "int8" => Dtype::I8,
        "uint16" => Dtype::U16,
        "int16" => Dtype::I16,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "uint32" => Dtype::U32,
        "int32" => Dtype::I32,
        "float32" => Dtype::F32,
        "float64" => Dtype::F64,
        "uint64" => Dtype::U64,
        "int64" => Dtype::I64,
        "complex64" => Dtype::C64,
        "float8_e4m3fn" => Dtype::F8E4M3,
        "float8_e5m2" => Dtype::F8E5M2,
        "float8_e8m0fnu" => Dtype::F8E8M0,
        "float8_e4m3fnuz" => Dtype::F8E4M3Fnuz,
        "float8_e5m2fnuz" => Dtype::F8E5M2Fnuz,
        _ => return None,
    })
}

/// The torch name of `dtype` (`"torch.float16"`), where torch has one.
pub fn torch_name(dtype: Dtype) -> Option<&'static str> {
    Some(match dtype {
        Dtype::Bool => "torch.bool",
        Dtype::U8 => "torch.uint8",
        Dtype::I8 => "torch.int8",
        Dtype::U16 => "torch.uint16",
        Dtype::I16 => "torch.int16",
        Dtype::F16 => "torch.float16",
        Dtype::BF16 => "torch.bfloat16",
        Dtype::U32 => "torch.uint32",
        Dtype::I32 => "torch.int32",
        Dtype::F32 => "torch.float32",
        Dtype::F64 => "torch.float64",
        Dtype::U64 => "torch.uint64",
        Dtype::I64 => "torch.int64",
        Dtype::C64 => "torch.complex64",
        Dtype::F8E4M3 => "torch.float8_e4m3fn",
        Dtype::F8E5M2 => "torch.float8_e5m2",
        Dtype::F8E8M0 => "torch.float8_e8m0fnu",
        Dtype::F8E4M3Fnuz => "torch.float8_e4m3fnuz",
        Dtype::F8E5M2Fnuz => "torch.float8_e5m2fnuz",
        Dtype::F6E2M3 | Dtype::F6E3M2 | Dtype::F4 => return None,
    })
}

/// The number of a partition file name (`tensor.data_12` is 12), or `None`
/// when the name is not a partition's: the number is decimal digits without
/// a leading zero (other than `0` itself), as ServerlessLLM writes it.
pub fn partition_number(file_name: &[u8]) -> Option<u64> {
    let digits = file_name.strip_prefix(SLLM_PARTITION_PREFIX.as_bytes())?;
    let canonical = match digits {
        [] => false,
        [b'0'] => true,
        [first, ..] => *first != b'0',
    };
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One tensor of a ServerlessLLM index, checked on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SllmEntry {
    /// The tensor's name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first.
    pub shape: Vec<u64>,
    /// Strides in elements, as written (those of a contiguous tensor).
    pub stride: Vec<u64>,
    /// Its bytes, as offsets into the partitions laid end to end.
    pub range: ByteRange,
}

/// A parsed and checked `tensor_index.json`: entries in the order written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SllmIndex {
    entries: Vec<SllmEntry>,
}

impl SllmIndex {
    /// Parse and check an index: its JSON, each entry's fields, dtype,
    /// byte size and strides, and that no name repeats. Where the tensors
    /// lie relative to each other and to the partitions is checked by
    /// [`Checkpoint::from_sllm`].
    pub fn parse(bytes: &[u8]) -> Result<Self, SllmError> {
        let text = std::str::from_utf8(bytes).map_err(|e| SllmError::NotUtf8 {
            offset: e.valid_up_to() as u64,
        })?;
        let mut failed = None;
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = IndexSeed {
            failed: &mut failed,
        }
        .deserialize(&mut de)
        .and_then(|e| de.end().map(|()| e));
        let entries = match (parsed, failed) {
            (Ok(e), _) => e,
            (Err(source), Some(tensor)) => {
                // Malformed JSON elsewhere is the more basic fault; checking
                // for it skips values iteratively, so nesting cannot
                // exhaust the stack.
                if let Err(source) = serde_json::from_str::<de::IgnoredAny>(text) {
                    return Err(SllmError::Json { source });
                }
                return Err(match tensor {
                    Failed::Entry(tensor) => SllmError::InvalidEntry { tensor, source },
                    Failed::Dtype { tensor, dtype } => SllmError::UnknownDtype { tensor, dtype },
                    Failed::OutOfMemory => SllmError::OutOfMemory {
                        index_len: bytes.len() as u64,
                    },
                });
            }
            (Err(source), None) => return Err(SllmError::Json { source }),
        };
        let mut seen = HashSet::new();
        if seen.try_reserve(entries.len()).is_err() {
            return Err(SllmError::OutOfMemory {
                index_len: bytes.len() as u64,
            });
        }
        for e in &entries {
            if !seen.insert(e.name.as_str()) {
                return Err(SllmError::DuplicateTensor {
                    tensor: e.name.clone(),
                });
            }
        }
        drop(seen);
        for e in &entries {
            check_entry(e)?;
        }
        Ok(SllmIndex { entries })
    }

    /// The entries, in the order written.
    pub fn entries(&self) -> &[SllmEntry] {
        &self.entries
    }
}

/// Check one entry against itself: bytes, strides, offsets.
fn check_entry(e: &SllmEntry) -> Result<(), SllmError> {
    let bytes = tensor_bytes(&e.name, e.dtype, &e.shape).map_err(|h| match h {
        HeaderError::ShapeOverflow {
            tensor,
            shape,
            dtype,
        } => SllmError::ShapeOverflow {
            tensor,
            shape,
            dtype,
        },
        // Torch's dtypes are whole bytes, so this is the only other case.
        _ => SllmError::ShapeOverflow {
            tensor: e.name.clone(),
            shape: e.shape.clone(),
            dtype: e.dtype,
        },
    })?;
    if e.stride.len() != e.shape.len() {
        return Err(SllmError::StrideRank {
            tensor: e.name.clone(),
            shape: e.shape.clone(),
            stride: e.stride.clone(),
        });
    }
    if !contiguous(&e.shape, &e.stride) {
        return Err(SllmError::NotContiguous {
            tensor: e.name.clone(),
            shape: e.shape.clone(),
            stride: e.stride.clone(),
        });
    }
    // `range.end` was computed with checked arithmetic by the parser; a
    // record that does not fit 64 bits was reported there.
    if e.range.len() != bytes {
        return Err(SllmError::SizeMismatch {
            tensor: e.name.clone(),
            expected: bytes,
            found: e.range.len(),
        });
    }
    Ok(())
}

/// Whether `stride` is the layout of a contiguous tensor of `shape`, by
/// torch's rule (`is_contiguous`): an empty tensor is contiguous whatever
/// its strides, and a dimension of size 1 may have any stride.
fn contiguous(shape: &[u64], stride: &[u64]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = 1u64;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d == 1 {
            continue;
        }
        if s != expected {
            return false;
        }
        // The element count fits (checked before), so its factors do.
        expected = expected.saturating_mul(d);
    }
    true
}

impl Checkpoint {
    /// Assemble a ServerlessLLM checkpoint from its index and the paths and
    /// sizes of its partitions. Pure: does no I/O.
    ///
    /// `partitions` are `tensor.data_0`, `tensor.data_1`, ... in number
    /// order with their sizes; each becomes a [`Shard`] without a header
    /// ([`Shard::header_len`] is `None`) whose tensors lie at their offsets
    /// inside it. Errors name `index_path` and the tensor: records that
    /// overlap (other than two names for one record), that end past the
    /// partitions, or that span two partitions.
    ///
    /// ```
    /// use weightlift_format::{Checkpoint, Dtype, SllmIndex};
    ///
    /// let json = br#"{"w": [0, 8, [2, 2], [2, 1], "torch.float16"],
    ///                 "b": [8, 2, [], [], "torch.bfloat16"]}"#;
    /// let index = SllmIndex::parse(json)?;
    /// let ckpt = Checkpoint::from_sllm(
    ///     "m/tensor_index.json".into(),
    ///     index,
    ///     vec![("m/tensor.data_0".into(), 4096)],
    /// )?;
    /// let b = ckpt.find("b").unwrap();
    /// assert_eq!((b.dtype, b.range.start, b.len()), (Dtype::BF16, 8, 2));
    /// assert_eq!(ckpt.shards()[0].header_len(), None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_sllm(
        index_path: PathBuf,
        index: SllmIndex,
        partitions: Vec<(PathBuf, u64)>,
    ) -> Result<Self, Error> {
        let fail = |source| Error::Sllm {
            file: index_path.clone(),
            source,
        };
        let n = index.entries.len();
        if u32::try_from(n).is_err() {
            return Err(Error::TooMany {
                file: index_path,
                what: "tensors",
            });
        }
        if u32::try_from(partitions.len()).is_err() {
            return Err(Error::TooMany {
                file: index_path,
                what: "shards",
            });
        }
        // Where each partition starts in the partitions laid end to end.
        let mut starts = Vec::with_capacity(partitions.len());
        let mut total = 0u64;
        for (path, size) in &partitions {
            starts.push(total);
            total = total.checked_add(*size).ok_or_else(|| {
                fail(SllmError::PartitionsTooLarge {
                    partition: path.clone(),
                })
            })?;
        }
        let mut entries = index.entries;
        // Offset order; the sort is stable, so equal offsets keep the
        // index's order.
        entries.sort_by_key(|e| (e.range.start, e.range.end));
        // Records may not overlap, except a record given two names.
        let mut reach: Option<(ByteRange, usize)> = None;
        for (i, e) in entries.iter().enumerate() {
            if e.range.is_empty() {
                continue;
            }
            if let Some((prev, p)) = reach
                && e.range.start < prev.end
                && e.range != prev
            {
                return Err(fail(SllmError::Overlap {
                    tensor: e.name.clone(),
                    previous: entries[p].name.clone(),
                    start: e.range.start,
                    previous_end: prev.end,
                }));
            }
            if reach.is_none_or(|(prev, _)| e.range.end > prev.end) {
                reach = Some((e.range, i));
            }
        }
        // Each tensor in the partition holding its first byte (an empty
        // one: the partition its offset starts, else the last one).
        let mut files = Vec::with_capacity(n);
        for e in &entries {
            if e.range.end > total {
                return Err(fail(match partitions.last() {
                    None => SllmError::MissingPartition {
                        tensor: e.name.clone(),
                        partition: index_path
                            .parent()
                            .unwrap_or(Path::new(""))
                            .join(format!("{SLLM_PARTITION_PREFIX}0")),
                    },
                    Some(_) => SllmError::PastPartitions {
                        tensor: e.name.clone(),
                        end: e.range.end,
                        total,
                        partitions: partitions.len(),
                    },
                }));
            }
            // The last partition starting at or before the tensor.
            let Some(p) = starts
                .partition_point(|&s| s <= e.range.start)
                .checked_sub(1)
            else {
                // Only when there are no partitions, and the tensor is
                // empty at offset 0.
                return Err(fail(SllmError::MissingPartition {
                    tensor: e.name.clone(),
                    partition: index_path
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(format!("{SLLM_PARTITION_PREFIX}0")),
                }));
            };
            let end_of_partition = starts[p] + partitions[p].1;
            if e.range.end > end_of_partition {
                return Err(fail(SllmError::SpansPartitions {
                    tensor: e.name.clone(),
                    start: e.range.start,
                    end: e.range.end,
                    partition: partitions[p].0.clone(),
                    partition_end: end_of_partition,
                }));
            }
            files.push(p);
        }
        // Shard by shard, then by offset: a stable sort by partition keeps
        // offset order within each.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| files[i]);
        let mut tensors = Vec::with_capacity(n);
        let mut by_name = std::collections::HashMap::with_capacity(n);
        let mut slots: Vec<Option<SllmEntry>> = entries.into_iter().map(Some).collect();
        let mut shards: Vec<Shard> = partitions
            .into_iter()
            .map(|(path, size)| Shard::raw(path, size))
            .collect();
        let mut first = 0;
        for (k, &i) in order.iter().enumerate() {
            let p = files[i];
            let Some(e) = slots[i].take() else {
                continue;
            };
            let start = starts[p];
            by_name.insert(e.name.clone(), TensorId(k as u32));
            tensors.push(Tensor {
                name: e.name,
                dtype: e.dtype,
                shape: e.shape,
                file: FileId(p as u32),
                range: ByteRange::new(e.range.start - start, e.range.end - start),
            });
            let last_of_shard = order.get(k + 1).is_none_or(|&j| files[j] != p);
            if last_of_shard {
                shards[p].set_tensors(first..k + 1);
                first = k + 1;
            }
        }
        Ok(Checkpoint::assembled(
            shards,
            tensors,
            by_name,
            Some(index_path),
        ))
    }
}

/// Why the parse stopped at an entry.
enum Failed {
    Entry(String),
    Dtype { tensor: String, dtype: String },
    OutOfMemory,
}

struct IndexSeed<'s> {
    failed: &'s mut Option<Failed>,
}

impl<'de> DeserializeSeed<'de> for IndexSeed<'_> {
    type Value = Vec<SllmEntry>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IndexSeed<'_> {
    type Value = Vec<SllmEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of tensor entries")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<SllmEntry> = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            let raw: RawEntry = match map.next_value() {
                Ok(e) => e,
                Err(e) => {
                    *self.failed = Some(Failed::Entry(name));
                    return Err(e);
                }
            };
            let oom = |failed: &mut Option<Failed>| {
                *failed = Some(Failed::OutOfMemory);
                de::Error::custom("out of memory")
            };
            let (Some(shape), Some(stride)) = (raw.shape, raw.stride) else {
                return Err(oom(self.failed));
            };
            let dtype = match torch_dtype(&raw.dtype) {
                Some(d) => d,
                None => {
                    *self.failed = Some(Failed::Dtype {
                        tensor: name,
                        dtype: raw.dtype,
                    });
                    return Err(de::Error::custom("unknown dtype"));
                }
            };
            let Some(end) = raw.offset.checked_add(raw.size) else {
                *self.failed = Some(Failed::Entry(name));
                return Err(de::Error::custom(format_args!(
                    "offset {} plus size {} overflows 64 bits",
                    raw.offset, raw.size
                )));
            };
            if out.try_reserve(1).is_err() {
                return Err(oom(self.failed));
            }
            out.push(SllmEntry {
                name,
                dtype,
                shape,
                stride,
                range: ByteRange::new(raw.offset, end),
            });
        }
        Ok(out)
    }
}

/// `[offset, size, shape, stride, dtype]` as written; a dimension list is
/// `None` when there was no memory for it.
struct RawEntry {
    offset: u64,
    size: u64,
    shape: Option<Vec<u64>>,
    stride: Option<Vec<u64>>,
    dtype: String,
}

impl<'de> de::Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[offset, size, shape, stride, dtype]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawEntry, A::Error> {
                let missing = |i| de::Error::invalid_length(i, &self);
                let offset = seq.next_element()?.ok_or_else(|| missing(0))?;
                let size = seq.next_element()?.ok_or_else(|| missing(1))?;
                let Dims(shape) = seq.next_element()?.ok_or_else(|| missing(2))?;
                let Dims(stride) = seq.next_element()?.ok_or_else(|| missing(3))?;
                let dtype = seq.next_element()?.ok_or_else(|| missing(4))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "more than 5 fields (expected [offset, size, shape, stride, dtype])",
                    ));
                }
                Ok(RawEntry {
                    offset,
                    size,
                    shape,
                    stride,
                    dtype,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// A list of dimensions or strides, grown fallibly (`None`: no memory).
struct Dims(Option<Vec<u64>>);

impl<'de> de::Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of non-negative integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element::<u64>()? {
                    if dims.try_reserve(1).is_err() {
                        drop(dims);
                        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                        return Ok(Dims(None));
                    }
                    dims.push(d);
                }
                Ok(Dims(Some(dims)))
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_names_round_trip() {
        for d in Dtype::ALL {
            if let Some(name) = torch_name(d) {
                assert_eq!(torch_dtype(name), Some(d), "{name}");
            }
        }
        for bad in [
            "float16",
            "torch.half",
            "torch.float",
            "torch.complex128",
            "",
        ] {
            assert_eq!(torch_dtype(bad), None, "{bad}");
        }
    }

    #[test]
    fn partition_names() {
        assert_eq!(partition_number(b"tensor.data_0"), Some(0));
        assert_eq!(partition_number(b"tensor.data_17"), Some(17));
        for bad in [
            &b"tensor.data_"[..],
            b"tensor.data_01",
            b"tensor.data_-1",
            b"tensor.data_1a",
            b"tensor.data",
            b"tensor.data_99999999999999999999999",
        ] {
            assert_eq!(partition_number(bad), None);
        }
    }

    #[test]
    fn contiguity_follows_torch() {
        assert!(contiguous(&[2, 3], &[3, 1]));
        assert!(!contiguous(&[2, 3], &[1, 2]));
        assert!(contiguous(&[1, 3], &[99, 1]));
        assert!(contiguous(&[2, 1], &[1, 7]));
        assert!(contiguous(&[0, 3], &[5, 5]));
        assert!(contiguous(&[], &[]));
        assert!(!contiguous(&[4], &[2]));
    }
}
