//! Splitting a plan into balanced shares for workers or ranks.

use weightlift_format::TensorId;

use crate::{Error, Extent, Piece, ReadPlan};

/// Share `index` of `count` equal shares of a plan (for worker or rank
/// `index` of `count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Share {
    /// Which share, from 0.
    pub index: u32,
    /// How many shares.
    pub count: u32,
}

impl Share {
    /// Share `index` of `count`; fails unless `index < count`.
    pub fn new(index: u32, count: u32) -> Result<Self, Error> {
        if index >= count {
            return Err(Error::Share { index, count });
        }
        Ok(Self { index, count })
    }
}

impl ReadPlan {
    /// Cut the plan into `count` shares that read about equal numbers of bytes.
    ///
    /// Extents are not cut: each goes whole to one share, and each share is a
    /// contiguous run of the plan's extents (so a worker reads sequentially).
    /// Every piece is in exactly one share. Empty tensors (no pieces) are
    /// listed in share 0. Memory is proportional to `count` plus the plan.
    ///
    /// **Rule and bound.** With `T` the plan's
    /// [`read_bytes`](ReadPlan::read_bytes) and `E` its largest extent (at
    /// most the geometry's maximum extent), share `k` begins at the extent
    /// boundary nearest to byte `k·T/count` of the plan (the earlier one on a
    /// tie). Each cut is thus within `E/2` of its ideal point, and every share
    /// reads more than `T/count − E` and less than `T/count + E` bytes
    /// (exactly `T/count` when `E` is 0).
    ///
    /// Fails when `count` is 0.
    pub fn split(&self, count: u32) -> Result<Vec<ReadPlan>, Error> {
        if count == 0 {
            return Err(Error::Share { index: 0, count });
        }
        let prefix = self.prefix_bytes();
        let cuts: Vec<usize> = (0..=count).map(|k| cut(&prefix, k, count)).collect();
        Ok(cuts
            .windows(2)
            .enumerate()
            .map(|(k, w)| self.sub_plan(w[0]..w[1], k == 0))
            .collect())
    }

    /// One share of the plan: `self.split(share.count)[share.index]`, in
    /// time and memory proportional to the plan alone.
    /// Fails unless `share.index < share.count`.
    pub fn share(&self, share: Share) -> Result<ReadPlan, Error> {
        if share.index >= share.count {
            return Err(Error::Share {
                index: share.index,
                count: share.count,
            });
        }
        let prefix = self.prefix_bytes();
        let from = cut(&prefix, share.index, share.count);
        let to = cut(&prefix, share.index + 1, share.count);
        Ok(self.sub_plan(from..to, share.index == 0))
    }

    /// The plan of only the extents at `indices` (strictly increasing),
    /// with their pieces: what one rank reads of a plan its group shares.
    /// Tensors with no piece among them are not listed. Fails with
    /// [`Error::Extents`] when an index is out of range or out of order.
    pub fn only_extents(&self, indices: &[usize]) -> Result<ReadPlan, Error> {
        let bad = Error::Extents {
            extents: self.extents.len(),
        };
        if indices.windows(2).any(|w| w[0] >= w[1])
            || indices.last().is_some_and(|&i| i >= self.extents.len())
        {
            return Err(bad);
        }
        let mut out_extents = Vec::with_capacity(indices.len());
        let mut out_pieces: Vec<Piece> = Vec::new();
        let mut tensors: Vec<TensorId> = Vec::new();
        for &i in indices {
            let e = &self.extents[i];
            let pieces = self.pieces(e);
            let first = out_pieces.len();
            out_pieces.extend_from_slice(pieces);
            tensors.extend(pieces.iter().map(|p| p.tensor));
            out_extents.push(Extent {
                pieces: first..out_pieces.len(),
                ..e.clone()
            });
        }
        tensors.sort_unstable();
        tensors.dedup();
        Ok(ReadPlan {
            geometry: self.geometry,
            extents: out_extents,
            pieces: out_pieces,
            tensors,
        })
    }

    /// Bytes read before each extent, and in all (`extents + 1` values).
    fn prefix_bytes(&self) -> Vec<u128> {
        let mut prefix = Vec::with_capacity(self.extents.len() + 1);
        let mut done = 0u128;
        prefix.push(0);
        for e in &self.extents {
            done += u128::from(e.len);
            prefix.push(done);
        }
        prefix
    }

    /// The plan restricted to a range of its extents.
    ///
    /// Pieces are in file order, so their tensor ids never decrease: the
    /// share's tensors are its pieces' ids without repeats, and the plan's
    /// empty tensors are found by one merge walk.
    fn sub_plan(&self, extents: std::ops::Range<usize>, with_empty: bool) -> ReadPlan {
        let mut out_extents = Vec::with_capacity(extents.len());
        let mut out_pieces: Vec<Piece> = Vec::new();
        let mut tensors: Vec<TensorId> = Vec::new();
        for e in &self.extents[extents] {
            let pieces = self.pieces(e);
            let first = out_pieces.len();
            out_pieces.extend_from_slice(pieces);
            for p in pieces {
                if tensors.last() != Some(&p.tensor) {
                    tensors.push(p.tensor);
                }
            }
            out_extents.push(Extent {
                pieces: first..out_pieces.len(),
                ..e.clone()
            });
        }
        if with_empty {
            let mut with_pieces = self.pieces.iter().map(|p| p.tensor).peekable();
            let mut empty = Vec::new();
            for &t in &self.tensors {
                while with_pieces.next_if(|&p| p < t).is_some() {}
                if with_pieces.peek() != Some(&t) {
                    empty.push(t);
                }
            }
            if !empty.is_empty() {
                tensors.extend(empty);
                tensors.sort_unstable();
            }
        }
        ReadPlan {
            geometry: self.geometry,
            extents: out_extents,
            pieces: out_pieces,
            tensors,
        }
    }
}

/// The extent boundary nearest to byte `k·T/n` (`T` the last prefix value),
/// the earlier one on a tie. Nondecreasing in `k`; 0 for `k = 0` and the
/// number of extents for `k = n`.
fn cut(prefix: &[u128], k: u32, n: u32) -> usize {
    let (k, n) = (u128::from(k), u128::from(n));
    let ideal = k * prefix[prefix.len() - 1]; // compared with prefix[i] * n
    let later = prefix.partition_point(|&p| p * n < ideal);
    if later == 0 {
        return 0;
    }
    let before = ideal - prefix[later - 1] * n;
    match prefix.get(later) {
        Some(&p) if p * n - ideal < before => later,
        Some(_) => later - 1,
        None => prefix.len() - 1,
    }
}
