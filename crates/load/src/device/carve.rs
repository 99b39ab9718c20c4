//! Where tensors go in one reused device buffer (InstantTensor's
//! `copy=False`): regions carved first in first out, each given back once
//! the caller has moved past its tensor.

use std::collections::VecDeque;

/// Where a tensor of some length goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this offset of the buffer.
    At(u64),
    /// Not in the buffer: the tensor is empty or larger than the whole
    /// buffer, so it gets memory of its own.
    Own,
    /// No room until regions before it are given back.
    Full,
}

/// A region handed out and not yet given back, or given back while an
/// older one is still out.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    given_back: bool,
}

/// The placement of tensors in a buffer of `size` bytes, first in first
/// out, each region aligned to [`Carve::ALIGN`]. A region is reused only
/// once every region placed before it was given back, and placement goes
/// on from where the last region ended even when all were given back, so
/// that a buffer large enough for every tensor of a pass never reuses one.
#[derive(Debug, Clone)]
pub struct Carve {
    size: u64,
    live: VecDeque<Region>,
    head: u64,
}

impl Carve {
    /// The alignment of every region, as device allocators give.
    pub const ALIGN: u64 = 256;

    /// Placement in a buffer of `size` bytes.
    pub fn new(size: u64) -> Self {
        Carve {
            size,
            live: VecDeque::new(),
            head: 0,
        }
    }

    /// The buffer's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Place `len` bytes. [`Place::At`] marks the region as handed out
    /// until [`Carve::give_back`] is called with its offset.
    pub fn place(&mut self, len: u64) -> Place {
        if len == 0 || len > self.size {
            return Place::Own;
        }
        let Some(start) = self.fit(len) else {
            return Place::Full;
        };
        self.live.push_back(Region {
            start,
            given_back: false,
        });
        self.head = (start + len).div_ceil(Self::ALIGN) * Self::ALIGN;
        Place::At(start)
    }

    /// Give back the region placed at `start`; the regions at the front that
    /// were all given back become free.
    pub fn give_back(&mut self, start: u64) {
        if let Some(r) = self
            .live
            .iter_mut()
            .find(|r| r.start == start && !r.given_back)
        {
            r.given_back = true;
        }
        while self.live.front().is_some_and(|r| r.given_back) {
            self.live.pop_front();
        }
    }

    /// Bytes a buffer of `size` would need to hold every tensor of `lens`
    /// at once (each aligned; tensors of memory of their own left out).
    pub fn needed(size: u64, lens: impl IntoIterator<Item = u64>) -> u64 {
        lens.into_iter()
            .filter(|&n| n > 0 && n <= size)
            .map(|n| n.div_ceil(Self::ALIGN) * Self::ALIGN)
            .sum()
    }

    /// Where `len` bytes fit now.
    fn fit(&self, len: u64) -> Option<u64> {
        let tail = self.size.saturating_sub(self.head);
        let Some(oldest) = self.live.front().map(|r| r.start) else {
            return Some(if tail >= len { self.head } else { 0 });
        };
        if self.head > oldest {
            // Free: head..size, then 0..oldest.
            if tail >= len {
                return Some(self.head);
            }
            return (oldest >= len).then_some(0);
        }
        // Free: head..oldest (nothing when the regions out wrapped round).
        (oldest - self.head >= len).then_some(self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_reused_only_after_everything_before_them_was_given_back() {
        let mut c = Carve::new(1024);
        assert_eq!(c.place(300), Place::At(0));
        assert_eq!(c.place(300), Place::At(512));
        // 768..1024 holds 256 at most, and 0..0 nothing: full.
        assert_eq!(c.place(300), Place::Full);
        c.give_back(512); // the newer one: nothing frees yet
        assert_eq!(c.place(300), Place::Full);
        c.give_back(0);
        // Everything given back: go on from the head (812 aligned up to
        // 1024, the end), so wrap to 0; then on from there.
        assert_eq!(c.place(200), Place::At(0));
        assert_eq!(c.place(300), Place::At(256));
        // Free now: 768..1024 (the head on from 556, aligned) and nothing
        // before the oldest at 0.
        assert_eq!(c.place(300), Place::Full);
        assert_eq!(c.place(200), Place::At(768));
        assert_eq!(c.place(0), Place::Own);
        assert_eq!(c.place(2000), Place::Own);
    }

    #[test]
    fn first_in_first_out_from_where_the_last_region_ended() {
        let mut c = Carve::new(1024);
        assert_eq!(c.place(400), Place::At(0));
        assert_eq!(c.place(400), Place::At(512));
        assert_eq!(
            c.place(400),
            Place::Full,
            "no room before the first is back"
        );
        c.give_back(512);
        assert_eq!(
            c.place(400),
            Place::Full,
            "the second is back, not the first"
        );
        c.give_back(0);
        assert_eq!(
            c.place(400),
            Place::At(0),
            "all back, no room after the last"
        );
        c.give_back(0);
        assert_eq!(
            c.place(100),
            Place::At(512),
            "all back, room after the last"
        );
        assert_eq!(c.place(4096), Place::Own, "larger than the buffer");
    }

    #[test]
    fn a_buffer_holding_every_tensor_never_reuses_a_region() {
        let lens = [10u64, 300, 1, 4096, 77];
        let size = Carve::needed(1 << 20, lens);
        let mut c = Carve::new(size);
        let mut starts = Vec::new();
        for _ in 0..2 {
            for &n in &lens {
                match c.place(n) {
                    Place::At(s) => {
                        assert!(!starts.contains(&s) || starts.len() >= lens.len());
                        starts.push(s);
                        c.give_back(s);
                    }
                    other => panic!("{n}: {other:?}"),
                }
            }
        }
        // The first pass's regions are all distinct.
        let first: std::collections::HashSet<_> = starts[..lens.len()].iter().collect();
        assert_eq!(first.len(), lens.len());
    }

    #[test]
    fn a_region_is_never_placed_over_one_still_out() {
        // A small random walk: regions out never overlap.
        let mut c = Carve::new(4096);
        let mut out: VecDeque<(u64, u64)> = VecDeque::new();
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(3) {
                if let Some((s, _)) = out.pop_front() {
                    c.give_back(s);
                }
                continue;
            }
            let n = 1 + x % 1500;
            if let Place::At(s) = c.place(n) {
                assert!(s + n <= 4096);
                for &(a, b) in &out {
                    assert!(s + n <= a || b <= s, "{s}+{n} overlaps {a}..{b}");
                }
                out.push_back((s, s + n));
            }
        }
    }
}
