//! The consumer of staged reads, and what it does with each slot.

use crate::Error;

/// What a consumer does with a staging slot it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Done with it: the engine may reuse it.
    Now,
    /// Still using it (an asynchronous copy is reading it); it comes back
    /// through [`Sink::reclaim`].
    Later,
}

/// The consumer of staged reads.
pub trait Sink {
    /// Extent `index` of the plan has landed in staging slot `slot`: `data`
    /// holds its bytes (shorter than the extent only at the end of its
    /// file). Copy the pieces out, then say whether the slot is free.
    fn deliver(&mut self, index: usize, data: &[u8], slot: usize) -> Result<Release, Error>;

    /// Add to `freed` the slots kept with [`Release::Later`] that are free
    /// now; when `block`, wait until there is at least one.
    fn reclaim(&mut self, block: bool, freed: &mut Vec<usize>) -> Result<(), Error> {
        let _ = (block, freed);
        Ok(())
    }

    /// Wait until no kept slot is in use any more. Called when the run ends,
    /// on success and on error, before the ring may be reused or freed.
    fn settle(&mut self) -> Result<(), Error> {
        Ok(())
    }
}
