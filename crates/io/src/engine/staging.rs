//! Where reads land: a ring of staging slots, or each extent's place in
//! one region per file.

use std::sync::Arc;

use weightlift_plan::ReadPlan;

use crate::region::Region;
use crate::{Error, PlanMismatch};

/// Staging memory: `slots` slots of `slot_size` bytes, page aligned.
#[derive(Debug)]
pub struct Ring {
    pub(super) region: Arc<Region>,
    pub(super) slot_size: usize,
    pub(super) slots: usize,
}

impl Ring {
    /// Allocate `slots` slots of `slot_size` bytes each.
    pub fn new(slot_size: usize, slots: usize) -> Result<Self, Error> {
        let len = slot_size.checked_mul(slots).ok_or(Error::Setting {
            name: "ring_bytes",
            value: u64::MAX,
            reason: "overflows",
        })?;
        if slot_size == 0 || slots == 0 {
            return Err(Error::Setting {
                name: "ring_bytes",
                value: len as u64,
                reason: "needs at least one slot of at least one byte",
            });
        }
        let region = Region::anonymous(len).map_err(|source| Error::Map {
            file: None,
            len,
            source,
        })?;
        // Slots are reused over and over: fault them in once, cheaply.
        region.advise_huge();
        Ok(Self {
            region: Arc::new(region),
            slot_size,
            slots,
        })
    }

    /// The memory of every slot, one after another (to pin or register).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub(super) fn slot_ptr(&self, slot: usize) -> *mut u8 {
        self.region.as_ptr().wrapping_add(slot * self.slot_size)
    }
}

/// Destinations for reading a plan in place: each file's extents packed one
/// after another into one region per file, so that the tensors read can
/// be viewed where they landed.
#[derive(Debug)]
pub struct InPlace {
    pub(super) regions: Vec<Arc<Region>>,
    /// Per extent of the plan: (region, offset in it).
    pub(super) at: Vec<(u32, usize)>,
}

impl InPlace {
    /// Lay out `plan` for `files` files: one region per file, holding that
    /// file's extents back to back (so neighbouring extents stay contiguous
    /// and each extent starts at a multiple of the plan's alignment).
    /// Regions are mapped lazily: pages cost only when a read lands.
    pub fn packed(plan: &ReadPlan, files: usize) -> Result<Self, Error> {
        let mut sizes = vec![0usize; files];
        let mut at = Vec::with_capacity(plan.extents().len());
        for e in plan.extents() {
            let f = e.file.index();
            let size = sizes
                .get_mut(f)
                .ok_or(Error::Plan(PlanMismatch::UnknownFile { index: f, files }))?;
            let too_long = |len| Error::Plan(PlanMismatch::TooLong { len });
            let len = usize::try_from(e.len).map_err(|_| too_long(e.len))?;
            at.push((f as u32, *size));
            *size = size
                .checked_add(len)
                .ok_or_else(|| too_long((*size as u64).saturating_add(e.len)))?;
        }
        let regions = sizes
            .into_iter()
            .map(|len| {
                Region::anonymous(len)
                    .map(Arc::new)
                    .map_err(|source| Error::Map {
                        file: None,
                        len,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { regions, at })
    }

    /// Lay out `plan` in one region: its extents back to back in plan
    /// order (each at the sum of the lengths before it), as a buffer that
    /// is handed on whole wants them. Mapped lazily, as `packed`'s.
    pub fn contiguous(plan: &ReadPlan) -> Result<Self, Error> {
        let too_long = |len| Error::Plan(PlanMismatch::TooLong { len });
        let mut at = Vec::with_capacity(plan.extents().len());
        let mut size = 0usize;
        for e in plan.extents() {
            let len = usize::try_from(e.len).map_err(|_| too_long(e.len))?;
            at.push((0u32, size));
            size = size
                .checked_add(len)
                .ok_or_else(|| too_long((size as u64).saturating_add(e.len)))?;
        }
        let region = Region::anonymous(size).map_err(|source| Error::Map {
            file: None,
            len: size,
            source,
        })?;
        Ok(Self {
            regions: vec![Arc::new(region)],
            at,
        })
    }

    /// The region of each file.
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }

    /// Where extent `index` lands: its file's region and the offset in it.
    pub fn position(&self, index: usize) -> (&Arc<Region>, usize) {
        let (r, off) = self.at[index];
        (&self.regions[r as usize], off)
    }
}
