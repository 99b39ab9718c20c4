//! Splitting a plan into balanced shares for workers or ranks.

use std::collections::BTreeSet;

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
    /// listed in share 0.
    ///
    /// **Bound.** With `T` the plan's [`read_bytes`](ReadPlan::read_bytes)
    /// and `E` its largest extent (at most the geometry's maximum extent),
    /// every share reads more than `T/count − E` and less than `T/count + E`
    /// bytes (or exactly `T/count` when `E` is 0). Share `k` begins at the
    /// first extent whose end, counted from the start of the plan, reaches
    /// `k·T/count`; so each cut lies less than `E` past its ideal point.
    ///
    /// Fails when `count` is 0.
    pub fn split(&self, count: u32) -> Result<Vec<ReadPlan>, Error> {
        if count == 0 {
            return Err(Error::Share { index: 0, count });
        }
        let total = u128::from(self.read_bytes());
        let n = u128::from(count);
        // cuts[k] = index of the first extent of share k.
        let mut cuts = Vec::with_capacity(count as usize + 1);
        cuts.push(0usize);
        let mut done: u128 = 0;
        let mut i = 0;
        for k in 1..n {
            // Smallest i with prefix(i + 1) * n >= k * total, i.e. the first
            // extent whose end reaches the ideal cut, goes to the earlier share.
            while i < self.extents.len() && done * n < k * total {
                done += u128::from(self.extents[i].len);
                i += 1;
            }
            cuts.push(i);
        }
        cuts.push(self.extents.len());
        Ok(cuts
            .windows(2)
            .enumerate()
            .map(|(k, w)| self.sub_plan(w[0]..w[1], k == 0))
            .collect())
    }

    /// One share of the plan: `self.split(share.count)[share.index]`.
    /// Fails unless `share.index < share.count`.
    pub fn share(&self, share: Share) -> Result<ReadPlan, Error> {
        let mut shares = self.split(share.count)?;
        if share.index >= share.count {
            return Err(Error::Share {
                index: share.index,
                count: share.count,
            });
        }
        Ok(shares.swap_remove(share.index as usize))
    }

    /// The plan restricted to a range of its extents.
    fn sub_plan(&self, extents: std::ops::Range<usize>, with_empty: bool) -> ReadPlan {
        let mut out_extents = Vec::with_capacity(extents.len());
        let mut out_pieces: Vec<Piece> = Vec::new();
        let mut tensors = BTreeSet::new();
        for e in &self.extents[extents] {
            let pieces = self.pieces(e);
            let first = out_pieces.len();
            out_pieces.extend_from_slice(pieces);
            tensors.extend(pieces.iter().map(|p| p.tensor));
            out_extents.push(Extent {
                pieces: first..out_pieces.len(),
                ..e.clone()
            });
        }
        if with_empty {
            let with_pieces: BTreeSet<_> = self.pieces.iter().map(|p| p.tensor).collect();
            tensors.extend(self.tensors.iter().filter(|t| !with_pieces.contains(t)));
        }
        ReadPlan {
            geometry: self.geometry,
            extents: out_extents,
            pieces: out_pieces,
            tensors: tensors.into_iter().collect(),
        }
    }
}
