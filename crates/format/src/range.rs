//! Newtypes for the numbers that must not be mixed up.

use std::fmt;

/// A half-open range of bytes `[start, end)`.
///
/// Inside a [`Header`](crate::Header) the range is relative to the start of
/// the data section (the header's `data_offsets`); inside a
/// [`Checkpoint`](crate::Checkpoint) it is an absolute offset in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// The range `[start, end)`. `end` must not be below `start`.
    pub const fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end);
        Self { start, end }
    }

    /// Number of bytes in the range (0 if `end` is below `start`).
    pub const fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// Whether the range holds no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same range moved `by` bytes towards the end, or `None` on overflow.
    pub const fn checked_shift(self, by: u64) -> Option<Self> {
        match (self.start.checked_add(by), self.end.checked_add(by)) {
            (Some(start), Some(end)) => Some(Self { start, end }),
            _ => None,
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Index of a shard (file) within a [`Checkpoint`](crate::Checkpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub u32);

impl FileId {
    /// The index as a `usize`, for indexing slices.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// Index of a tensor within a [`Checkpoint`](crate::Checkpoint), in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u32);

impl TensorId {
    /// The index as a `usize`, for indexing slices.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}
