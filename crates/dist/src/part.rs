//! The bytes of one part of a tensor split as `torch.tensor_split` splits it.

use std::fmt;

/// Where the bytes of a part of a tensor lie inside the tensor: `count` runs
/// of `run` bytes, the `i`-th at byte `start + i * stride` of the tensor.
///
/// A part is laid out in row-major order, so concatenating its runs gives
/// the part as a contiguous tensor of its own.
///
/// Blocks are normalised: an empty part is all zeros; a part whose bytes are
/// contiguous in the tensor (a split along the first dimension that is not
/// 1, a split into one part, or a whole tensor) is one run, with `count` 1
/// and `stride == run`. Otherwise `0 < run < stride` and `count > 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Block {
    /// Offset of the first run inside the tensor.
    pub start: u64,
    /// Bytes in each run.
    pub run: u64,
    /// Number of runs.
    pub count: u64,
    /// Distance in bytes from the start of one run to the next.
    pub stride: u64,
}

impl Block {
    /// The empty block.
    pub const EMPTY: Block = Block {
        start: 0,
        run: 0,
        count: 0,
        stride: 0,
    };

    /// The block of a whole tensor of `len` bytes.
    pub fn whole(len: u64) -> Block {
        if len == 0 {
            Block::EMPTY
        } else {
            Block {
                start: 0,
                run: len,
                count: 1,
                stride: len,
            }
        }
    }

    /// Bytes in the block (`run * count`, saturating).
    pub fn len(&self) -> u64 {
        self.run.saturating_mul(self.count)
    }

    /// Whether the block holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.run == 0 || self.count == 0
    }

    /// Bytes of the block that lie below tensor offset `x`.
    fn below(&self, x: u64) -> u64 {
        if self.is_empty() || x <= self.start {
            return 0;
        }
        let rel = x - self.start;
        let i = rel / self.stride;
        if i >= self.count {
            self.len()
        } else {
            i * self.run + (rel - i * self.stride).min(self.run)
        }
    }

    /// Bytes of the block inside tensor bytes `lo..hi`.
    pub fn overlap(&self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return 0;
        }
        self.below(hi) - self.below(lo)
    }

    /// The block's bytes inside tensor bytes `lo..hi`, as at most three
    /// strided segments (a cut first run, the whole runs between, a cut last
    /// run), in order.
    pub(crate) fn clip(&self, lo: u64, hi: u64) -> impl Iterator<Item = Segment> + use<> {
        let mut out = [None; 3];
        if !self.is_empty() && lo < hi && hi > self.start {
            let (s, run, stride) = (self.start, self.run, self.stride);
            // The first run that ends after `lo`, and one past the last that
            // starts before `hi`.
            let mut first = lo.saturating_sub(s) / stride;
            if lo > s && lo - s - first * stride >= run {
                first += 1;
            }
            let last = self.count.min((hi - s - 1) / stride + 1);
            if first < last {
                let seg = |i: u64, a: u64, b: u64, count: u64| Segment {
                    at: a,
                    run: b - a,
                    count,
                    dst_at: i * run + (a - (s + i * stride)),
                };
                let run_start = |i: u64| s + i * stride;
                if last - first == 1 {
                    let a = lo.max(run_start(first));
                    let b = hi.min(run_start(first) + run);
                    out[0] = Some(seg(first, a, b, 1));
                } else {
                    let (mut whole_from, mut whole_to) = (first, last);
                    if lo > run_start(first) {
                        out[0] = Some(seg(first, lo, run_start(first) + run, 1));
                        whole_from += 1;
                    }
                    let last_run = run_start(last - 1);
                    if hi < last_run + run {
                        out[2] = Some(seg(last - 1, last_run, hi, 1));
                        whole_to -= 1;
                    }
                    if whole_from < whole_to {
                        let a = run_start(whole_from);
                        out[1] = Some(seg(whole_from, a, a + run, whole_to - whole_from));
                    }
                }
            }
        }
        out.into_iter().flatten()
    }
}

/// Part of a [`Block`] inside a byte range of its tensor: `count` runs of
/// `run` bytes, the `i`-th at tensor offset `at + i * stride` (the block's
/// stride) and at offset `dst_at + i * block.run` of the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) at: u64,
    pub(crate) run: u64,
    pub(crate) count: u64,
    pub(crate) dst_at: u64,
}

/// Why a part of a tensor cannot be described as a [`Block`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PartError {
    /// A split into 0 parts.
    NoParts,
    /// A part index not below the number of parts.
    NoSuchPart {
        /// The index asked for.
        index: u32,
        /// The number of parts.
        parts: u32,
    },
    /// The dimension to split along is not one of the tensor's.
    NoSuchDim {
        /// The dimension asked for.
        dim: usize,
        /// The tensor's number of dimensions.
        dims: usize,
    },
    /// The part's runs do not start and end on whole bytes (elements
    /// narrower than a byte, such as `F4`, cut inside a byte).
    NotWholeBytes {
        /// The dimension split along.
        dim: usize,
        /// Bits per element.
        bits: u32,
    },
    /// The tensor's size in bits does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for PartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartError::NoParts => write!(f, "cannot split into 0 parts"),
            PartError::NoSuchPart { index, parts } => {
                write!(f, "there is no part {index} of {parts}")
            }
            PartError::NoSuchDim { dim, dims } => {
                write!(
                    f,
                    "cannot split along dimension {dim} of a tensor with {dims}"
                )
            }
            PartError::NotWholeBytes { dim, bits } => write!(
                f,
                "a split along dimension {dim} cuts {bits}-bit elements inside a byte"
            ),
            PartError::Overflow => write!(f, "the tensor's size overflows 64 bits"),
        }
    }
}

impl std::error::Error for PartError {}

/// Part `index` of `n` of a tensor of `shape` (elements of `bits` bits)
/// split along `dim` as `torch.tensor_split(tensor, n, dim)` splits it: with
/// `len = shape[dim]`, the first `len % n` parts have `len / n + 1` rows
/// along `dim` and the others `len / n`.
///
/// Returns where the part's bytes lie in the tensor, and the part's shape.
/// Fails when `n` is 0, `index >= n`, `dim` is not a dimension of `shape`
/// (a scalar cannot be split), the part's runs would begin or end inside a
/// byte, or the tensor's size in bits overflows 64 bits.
///
/// ```
/// use weightlift_dist::{part, Block};
///
/// // A 5×4 tensor of 2-byte elements, split in 2 along the columns.
/// let (block, shape) = part(&[5, 4], 16, 1, 2, 1)?;
/// assert_eq!(shape, [5, 2]);
/// assert_eq!(block, Block { start: 4, run: 4, count: 5, stride: 8 });
/// // Along the rows, the first part takes the extra row, and is contiguous.
/// let (block, shape) = part(&[5, 4], 16, 0, 2, 0)?;
/// assert_eq!((block, shape), (Block { start: 0, run: 24, count: 1, stride: 24 }, vec![3, 4]));
/// # Ok::<(), weightlift_dist::PartError>(())
/// ```
pub fn part(
    shape: &[u64],
    bits: u32,
    dim: usize,
    n: u32,
    index: u32,
) -> Result<(Block, Vec<u64>), PartError> {
    if n == 0 {
        return Err(PartError::NoParts);
    }
    if index >= n {
        return Err(PartError::NoSuchPart { index, parts: n });
    }
    let Some(&len) = shape.get(dim) else {
        return Err(PartError::NoSuchDim {
            dim,
            dims: shape.len(),
        });
    };
    let (q, r) = (len / u64::from(n), len % u64::from(n));
    let index = u64::from(index);
    let rows = q + u64::from(index < r);
    let first_row = index * q + index.min(r);
    let mut part_shape = shape.to_vec();
    part_shape[dim] = rows;
    if shape.contains(&0) || rows == 0 || bits == 0 {
        return Ok((Block::EMPTY, part_shape));
    }
    // Sizes in bits: the element count of a valid tensor fits in 64 bits,
    // and so does its size in bits.
    let product = |dims: &[u64]| {
        dims.iter()
            .try_fold(u64::from(bits), |acc, &d| acc.checked_mul(d))
            .ok_or(PartError::Overflow)
    };
    let row_bits = product(&shape[dim + 1..])?;
    let outer = product(&shape[..dim])? / u64::from(bits);
    let stride_bits = row_bits.checked_mul(len).ok_or(PartError::Overflow)?;
    stride_bits.checked_mul(outer).ok_or(PartError::Overflow)?;
    // Each factor is at most the tensor's size, which fits.
    let start_bits = row_bits * first_row;
    let run_bits = row_bits * rows;
    let whole_bytes = |b: u64| {
        if b.is_multiple_of(8) {
            Ok(b / 8)
        } else {
            Err(PartError::NotWholeBytes { dim, bits })
        }
    };
    let block = if outer == 1 || rows == len {
        let run = whole_bytes(run_bits * outer)?;
        Block {
            start: whole_bytes(start_bits)?,
            run,
            count: 1,
            stride: run,
        }
    } else {
        Block {
            start: whole_bytes(start_bits)?,
            run: whole_bytes(run_bits)?,
            count: outer,
            stride: whole_bytes(stride_bits)?,
        }
    };
    Ok((block, part_shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_as_torch_does() {
        // torch.tensor_split(torch.arange(7), 3) has parts of 3, 2, 2.
        let parts: Vec<_> = (0..3).map(|i| part(&[7], 8, 0, 3, i).unwrap()).collect();
        assert_eq!(
            parts
                .iter()
                .map(|(b, s)| (b.start, b.run, s[0]))
                .collect::<Vec<_>>(),
            [(0, 3, 3), (3, 2, 2), (5, 2, 2)]
        );
        // More parts than rows: the last are empty.
        let (b, s) = part(&[2, 3], 32, 0, 4, 3).unwrap();
        assert_eq!((b, s), (Block::EMPTY, vec![0, 3]));
    }

    #[test]
    fn inner_dimensions_are_strided() {
        // [2, 3, 4] of bytes along dim 1 in 2: rows 0..2 of each of 2 blocks.
        let (b, s) = part(&[2, 3, 4], 8, 1, 2, 0).unwrap();
        assert_eq!(s, [2, 2, 4]);
        assert_eq!(
            b,
            Block {
                start: 0,
                run: 8,
                count: 2,
                stride: 12
            }
        );
        // The last dimension: runs of one element.
        let (b, _) = part(&[3, 2], 64, 1, 2, 1).unwrap();
        assert_eq!(
            b,
            Block {
                start: 8,
                run: 8,
                count: 3,
                stride: 16
            }
        );
        // One part is the whole tensor, in one run.
        let (b, _) = part(&[3, 2], 64, 1, 1, 0).unwrap();
        assert_eq!(b, Block::whole(48));
    }

    #[test]
    fn rejects_bad_splits() {
        assert_eq!(part(&[4], 8, 0, 0, 0), Err(PartError::NoParts));
        assert_eq!(
            part(&[4], 8, 0, 2, 2),
            Err(PartError::NoSuchPart { index: 2, parts: 2 })
        );
        assert_eq!(
            part(&[], 8, 0, 2, 0),
            Err(PartError::NoSuchDim { dim: 0, dims: 0 })
        );
        // Three 4-bit elements in two parts: the second starts mid-byte.
        assert_eq!(
            part(&[3], 4, 0, 2, 1),
            Err(PartError::NotWholeBytes { dim: 0, bits: 4 })
        );
        // Four split in two is whole bytes, and so are byte-wide columns.
        assert!(part(&[4], 4, 0, 2, 1).is_ok());
        assert_eq!(
            part(&[3, 4], 4, 1, 2, 1).unwrap().0,
            Block {
                start: 1,
                run: 1,
                count: 3,
                stride: 2
            }
        );
        assert_eq!(part(&[u64::MAX, 4], 8, 1, 2, 0), Err(PartError::Overflow));
        // An empty tensor splits into empty parts whatever its other sizes.
        assert_eq!(
            part(&[u64::MAX, 0, u64::MAX], 4, 2, 3, 1).unwrap().0,
            Block::EMPTY
        );
    }

    #[test]
    fn overlap_and_clip_agree() {
        let b = Block {
            start: 3,
            run: 4,
            count: 5,
            stride: 10,
        };
        for lo in 0..50 {
            for hi in lo..50 {
                let bytes: Vec<u64> = (lo..hi)
                    .filter(|&x| x >= 3 && (x - 3) / 10 < 5 && (x - 3) % 10 < 4)
                    .collect();
                assert_eq!(b.overlap(lo, hi), bytes.len() as u64, "{lo}..{hi}");
                let mut got = Vec::new();
                for seg in b.clip(lo, hi) {
                    for i in 0..seg.count {
                        for j in 0..seg.run {
                            let at = seg.at + i * b.stride + j;
                            let dst = seg.dst_at + i * b.run + j;
                            assert_eq!(dst, (at - 3) / 10 * 4 + (at - 3) % 10);
                            got.push(at);
                        }
                    }
                }
                assert_eq!(got, bytes, "{lo}..{hi}");
            }
        }
    }
}
